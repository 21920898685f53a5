"""The full check (metrics_worker/check.py): every segment recomputed from the orders and
compared with what the fold keeps; a drift is repaired, figures and stored parts alike."""

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.check import DRIFT, check_every_segment
from metrics_worker.jobs import SOURCE, fold_once
from metrics_worker.kpis import compute_segment_kpis
from segments_shared.jobs.runner import Lease
from segments_shared.jobs.store import Claim
from segments_shared.kpis import SUMS
from tests.metrics.store import add_customer, add_order, add_segment, fold_due, stored_kpis
from tests.metrics.test_kpis import at


def drift_count() -> float:
    return float(DRIFT._value.get())


async def run_check(engine: AsyncEngine) -> int:
    lease = Lease(Claim(queue="kpi_check", key="all", generation=1, attempts=1))
    return await check_every_segment(engine, lease, fold_once, SOURCE)


@pytest.mark.asyncio
async def test_a_check_finds_nothing_to_repair_after_folds(clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        a = await add_customer(conn, "a", "a@example.com", "subscribed")
        await add_order(conn, a, "10.00", at("2026-01-01"))
        segment_id = await add_segment(conn, "Checked", [a])
    await fold_due(clean_db)
    before = drift_count()
    # Pending changes are folded first: the check compares one snapshot.
    async with clean_db.begin() as conn:
        await add_order(conn, a, "5.00", at("2026-01-03"))
    assert await run_check(clean_db) == 0
    assert drift_count() == before
    async with clean_db.connect() as conn:
        kept = await stored_kpis(conn, segment_id)
    assert kept is not None
    assert str(kept["total_revenue"]) == "15.00"


@pytest.mark.asyncio
async def test_a_drift_is_repaired_in_the_figures_and_the_parts(clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        a = await add_customer(conn, "a", "a@example.com", "subscribed")
        await add_order(conn, a, "10.00", at("2026-01-01"))
        await add_order(conn, a, "20.00", at("2026-01-02"))
        first = await add_segment(conn, "First", [a])
        second = await add_segment(conn, "Second", [a])
    await fold_due(clean_db)
    # Something wrote behind the fold's back: a wrong sum, and a customer's wrong figures.
    async with clean_db.begin() as conn:
        await conn.execute(
            text("UPDATE segment_kpis SET total_orders = 7 WHERE segment_id = :s"),
            {"s": first},
        )
        await conn.execute(
            text("UPDATE customer_kpi_parts SET revenue = 1 WHERE customer_id = :c"), {"c": a}
        )
    before = drift_count()
    assert await run_check(clean_db) == 1
    assert drift_count() == before + 1
    async with clean_db.connect() as conn:
        for segment_id in (first, second):
            kept = await stored_kpis(conn, segment_id)
            exact = await compute_segment_kpis(conn, segment_id)
            assert kept is not None
            assert {n: kept[n] for n in SUMS} == {n: exact[n] for n in SUMS}
        revenue = (
            await conn.execute(
                text("SELECT revenue FROM customer_kpi_parts WHERE customer_id = :c"), {"c": a}
            )
        ).scalar_one()
    assert str(revenue) == "30.00"  # repaired: later deltas take away the right figures
