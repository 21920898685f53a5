"""RFM scores (metrics_worker/rfm.py): quintile boundaries with ties, what is written, changed
customers scored at once against the last full computation's boundaries, and the jobs."""

import asyncio
import os
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.jobs import RfmFull, request_rfm
from metrics_worker.rfm import RfmChanges, recompute_rfm
from metrics_worker.settings import MetricsWorkerSettings
from segments_shared.jobs.runner import JobRunner
from tests.fixtures.processes import BIN
from tests.metrics.store import add_customer, add_order, add_segment, fold_due, set_order_status

# customer: (placed orders, revenue, whole days since the last one) -> (R, F, M) scores.
# Frequencies 1,1,1,1,1,1,2,2,3,4: the six one-time buyers all score 1 (no one is worse), two
# orders have 6 of 10 below them: 1 + floor(5 * 6 / 10) = 4; three and four orders score 5.
# ntile() would have spread the one-time buyers over scores 1 to 3.
SCENARIO = {
    "r0": ((1, "10.00", 60), (1, 1, 1)),
    "r1": ((1, "10.00", 50), (1, 1, 1)),
    "r2": ((1, "20.00", 40), (2, 1, 2)),
    "r3": ((1, "30.00", 30), (2, 1, 2)),
    "r4": ((1, "40.00", 20), (3, 1, 3)),
    "r5": ((1, "50.00", 10), (3, 1, 3)),
    "r6": ((2, "60.00", 10), (3, 4, 4)),
    "r7": ((2, "70.00", 10), (3, 4, 4)),
    "r8": ((3, "80.00", 0), (5, 5, 5)),
    "r9": ((4, "90.00", 0), (5, 5, 5)),
}


async def now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return value


async def add_buyer(
    engine: AsyncEngine, external_id: str, orders: int, revenue: str, days: int
) -> tuple[int, list[int]]:
    """A customer whose last placed order was `days` whole days (and an hour) ago."""
    last = await now(engine) - timedelta(days=days, hours=1)
    async with engine.begin() as conn:
        customer_id = await add_customer(conn, external_id, f"{external_id}@example.com")
        order_ids = [
            await add_order(conn, customer_id, "1.00", last - timedelta(days=3 * (k + 1)))
            for k in range(orders - 1)
        ]
        rest = Decimal(revenue) - (orders - 1)
        order_ids.append(await add_order(conn, customer_id, str(rest), last))
    return customer_id, order_ids


async def scores(engine: AsyncEngine) -> dict[str, tuple[int, int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.external_id, r.recency_score, r.frequency_score, r.monetary_score "
                "FROM customer_rfm r JOIN customers c ON c.id = r.customer_id"
            )
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def run_rfm(engine: AsyncEngine) -> RfmChanges:
    async with engine.begin() as conn:
        return await recompute_rfm(conn)


@pytest.mark.asyncio
async def test_quintile_boundaries_with_ties(clean_db: AsyncEngine) -> None:
    ids = {}
    for name, ((orders, revenue, days), _) in SCENARIO.items():
        ids[name] = await add_buyer(clean_db, name, orders, revenue, days)
    last = await now(clean_db)
    async with clean_db.begin() as conn:
        # Orders that are not placed count nowhere; a customer without a placed order is
        # not scored at all.
        await add_order(conn, ids["r0"][0], "999.00", last, "cancelled")
        refunded = await add_customer(conn, "refunded-only", None)
        await add_order(conn, refunded, "500.00", last, "refunded")
        await add_customer(conn, "no-orders", None)

    assert await run_rfm(clean_db) == RfmChanges(inserted=10, updated=0, deleted=0)
    assert await scores(clean_db) == {name: expected for name, (_, expected) in SCENARIO.items()}
    async with clean_db.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT frequency, monetary FROM customer_rfm WHERE customer_id = :id"),
                {"id": ids["r9"][0]},
            )
        ).one()
    assert (row.frequency, str(row.monetary)) == (4, "90.00")


@pytest.mark.asyncio
async def test_without_ties_the_scores_are_the_quintiles_of_the_position(
    clean_db: AsyncEngine,
) -> None:
    # Seven buyers with distinct revenues: position p (1 = least) scores 1 + floor(5(p-1)/7).
    for p in range(1, 8):
        await add_buyer(clean_db, f"p{p}", 1, f"{p}.00", 5)
    await run_rfm(clean_db)
    monetary = {name: m for name, (_, _, m) in (await scores(clean_db)).items()}
    assert monetary == {"p1": 1, "p2": 1, "p3": 2, "p4": 3, "p5": 3, "p6": 4, "p7": 5}
    # Everyone ties on recency and frequency: nobody is worse than anyone, all score 1.
    assert {(r, f) for r, f, _ in (await scores(clean_db)).values()} == {(1, 1)}


@pytest.mark.asyncio
async def test_only_changes_are_written_and_lapsed_buyers_leave(clean_db: AsyncEngine) -> None:
    ids = {}
    for name, ((orders, revenue, days), _) in SCENARIO.items():
        ids[name] = await add_buyer(clean_db, name, orders, revenue, days)
    await run_rfm(clean_db)
    assert await run_rfm(clean_db) == RfmChanges(inserted=0, updated=0, deleted=0)

    # r0's only order is cancelled: r0 leaves; the others are rescored over nine buyers.
    async with clean_db.begin() as conn:
        await set_order_status(conn, ids["r0"][1][0], "cancelled")
    changes = await run_rfm(clean_db)
    assert (changes.inserted, changes.deleted) == (0, 1)
    assert "r0" not in await scores(clean_db)

    # r9 is erased (orders cascade): their scores go with the next computation.
    async with clean_db.begin() as conn:
        await conn.execute(text("DELETE FROM customers WHERE id = :id"), {"id": ids["r9"][0]})
    changes = await run_rfm(clean_db)
    assert changes.deleted == 1
    async with clean_db.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM customer_rfm"))).scalar()
    assert count == 8

    # A new buyer, the worst on every measure, is inserted.
    await add_buyer(clean_db, "new", 1, "5.00", 100)
    changes = await run_rfm(clean_db)
    assert changes.inserted == 1
    assert (await scores(clean_db))["new"] == (1, 1, 1)


@pytest.mark.asyncio
async def test_changed_customers_are_scored_at_once_against_the_boundaries(
    clean_db: AsyncEngine,
) -> None:
    ids = {}
    for name, ((orders, revenue, days), _) in SCENARIO.items():
        ids[name] = await add_buyer(clean_db, name, orders, revenue, days)
    await fold_due(clean_db)
    before = await run_rfm(clean_db)
    assert before.inserted == 10
    # A new buyer whose figures equal r6's (2 orders, 60.00, 10 days ago) scores as r6
    # did; one more order makes r0 a two-order buyer: frequency 4, as r6 and r7 score.
    twin, _ = await add_buyer(clean_db, "twin", 2, "60.00", 10)
    last = await now(clean_db) - timedelta(days=60, hours=1)
    async with clean_db.begin() as conn:
        await add_order(conn, ids["r0"][0], "0.00", last - timedelta(days=1))
    await fold_due(clean_db)
    scored = await scores(clean_db)
    assert scored["twin"] == scored["r6"] == (3, 4, 4)
    assert scored["r0"] == (1, 4, 1)
    # The others kept the scores of the full computation; and rules on scores learn who
    # moved.
    assert {k: v for k, v in scored.items() if k not in ("twin", "r0")} == {
        name: expected for name, (_, expected) in SCENARIO.items() if name != "r0"
    }
    async with clean_db.connect() as conn:
        signalled = (
            await conn.execute(
                text("SELECT customer_ids FROM segment_refresh_signals WHERE kind = 'rfm'")
            )
        ).scalars()
        moved = {customer for ids_ in signalled if ids_ for customer in ids_}
    assert moved == {twin, ids["r0"][0]}


@pytest.mark.asyncio
async def test_a_bulk_load_asks_for_a_full_computation_with_a_ceiling(
    clean_db: AsyncEngine,
) -> None:
    settings = MetricsWorkerSettings(rfm_debounce_seconds=0.5, rfm_max_delay_seconds=1.0)

    async def due_in() -> float:
        async with clean_db.connect() as conn:
            seconds = (
                await conn.execute(
                    text("SELECT extract(epoch FROM due_at - now()) FROM jobs WHERE queue = 'rfm'")
                )
            ).scalar_one()
        return float(seconds)

    async with clean_db.begin() as conn:
        await request_rfm(conn, settings)
    assert 0.3 < await due_in() <= 0.5
    # Bulk loads keep coming: each moves the time on, never past the ceiling.
    for _ in range(6):
        await asyncio.sleep(0.2)
        async with clean_db.begin() as conn:
            await request_rfm(conn, settings)
    assert await due_in() < 0  # the ceiling passed: due now

    # The runner carries it out: everyone scored, the boundaries kept, rules told.
    await add_buyer(clean_db, "solo", 1, "1.00", 3)
    runner = JobRunner(clean_db, "tests", [RfmFull(clean_db, settings)])
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(600):
            async with clean_db.connect() as conn:
                done = (
                    await conn.execute(
                        text("SELECT count(*) FROM jobs WHERE last_finished_at IS NOT NULL")
                    )
                ).scalar_one()
            if done:
                break
            await asyncio.sleep(0.05)
    finally:
        runner.stop()
        await task
    assert done, "the runner did not carry the job out within 30 s"
    assert await scores(clean_db) == {"solo": (1, 1, 1)}
    async with clean_db.connect() as conn:
        job = (
            await conn.execute(
                text("SELECT due_at - now() > interval '1 hour' FROM jobs WHERE queue = 'rfm'")
            )
        ).scalar_one()
        signal = (
            await conn.execute(
                text("SELECT customer_ids FROM segment_refresh_signals WHERE kind = 'rfm'")
            )
        ).one()
    assert job  # periodic: due again a period later
    assert signal.customer_ids is None  # everyone may have moved


@pytest.mark.asyncio
async def test_admin_recompute_metrics_asks_for_a_check_and_rfm(
    clean_db: AsyncEngine, service_env: dict[str, str]
) -> None:
    async with clean_db.begin() as conn:
        await add_segment(conn, "Admin", [])
    process = await asyncio.create_subprocess_exec(
        str(BIN / "segments-admin"),
        "recompute-metrics",
        env={**os.environ, "SEGMENTS_DATABASE_URL": service_env["SEGMENTS_DATABASE_URL"]},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    # The new segment and the 5 defaults.
    assert out.decode().strip() == "asked for a check of 6 segments and RFM scores"
    async with clean_db.connect() as conn:
        due = (
            await conn.execute(text("SELECT queue FROM jobs WHERE due_at <= now() ORDER BY queue"))
        ).scalars()
        assert list(due) == ["kpi_check", "rfm"]
