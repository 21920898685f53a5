"""RFM scores (metrics_worker/rfm.py): quintile boundaries with ties, what is written, and the
job that runs them once per burst of order changes, on one replica at a time."""

import asyncio
import os
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.jobs import claim_job, ensure_job, fail_job, finish_job, request_job
from metrics_worker.rfm import JOB, RfmChanges, recompute_rfm
from tests.fixtures.processes import BIN
from tests.metrics.store import add_customer, add_order, add_segment, set_order_status

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
async def test_the_job_runs_on_one_replica_and_folds_requests(clean_db: AsyncEngine) -> None:
    period, lease = 3600.0, 60.0
    await ensure_job(clean_db, JOB)
    # Never run: due at once, and exactly one of several replicas gets it.
    claimed = await asyncio.gather(
        *(claim_job(clean_db, JOB, f"w{i}", period=period, lease=lease) for i in range(4))
    )
    assert sorted(claimed) == [False, False, False, True]
    winner = f"w{claimed.index(True)}"
    # An order change during the run asks again: the run after it is not lost.
    async with clean_db.begin() as conn:
        await request_job(conn, JOB, within=0.3)
        await request_job(conn, JOB, within=30)  # a later request keeps the earlier time
    async with clean_db.begin() as conn:
        await finish_job(conn, JOB, winner)
    assert not await claim_job(clean_db, JOB, "w0", period=period, lease=lease)
    await asyncio.sleep(0.4)
    assert await claim_job(clean_db, JOB, "w0", period=period, lease=lease)
    async with clean_db.begin() as conn:
        await finish_job(conn, JOB, "w0")
    assert not await claim_job(clean_db, JOB, "w1", period=period, lease=lease)

    # The period makes it due again; a replica dying mid-run leaves a lease that expires.
    assert await claim_job(clean_db, JOB, "w1", period=0.0, lease=0.2)
    assert not await claim_job(clean_db, JOB, "w2", period=0.0, lease=0.2)
    await asyncio.sleep(0.3)
    assert await claim_job(clean_db, JOB, "w2", period=period, lease=lease)
    # A failed run is retried after the retry delay.
    await fail_job(clean_db, JOB, "w2", retry=0.2)
    assert not await claim_job(clean_db, JOB, "w3", period=period, lease=lease)
    await asyncio.sleep(0.3)
    assert await claim_job(clean_db, JOB, "w3", period=period, lease=lease)


@pytest.mark.asyncio
async def test_admin_recompute_metrics_marks_everything(
    clean_db: AsyncEngine, service_env: dict[str, str]
) -> None:
    async with clean_db.begin() as conn:
        segment_id = await add_segment(conn, "Admin", [])
        await conn.execute(text("DELETE FROM metrics_dirty_segments"))
    await ensure_job(clean_db, JOB)
    assert await claim_job(clean_db, JOB, "w", period=3600, lease=60)
    async with clean_db.begin() as conn:
        await finish_job(conn, JOB, "w")

    process = await asyncio.create_subprocess_exec(
        str(BIN / "segments-admin"),
        "recompute-metrics",
        env={**os.environ, "SEGMENTS_DATABASE_URL": service_env["SEGMENTS_DATABASE_URL"]},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert out.decode().strip() == "marked 6 segments for recomputation"  # and the 5 defaults
    async with clean_db.connect() as conn:
        marked = (
            await conn.execute(text("SELECT segment_id FROM metrics_dirty_segments"))
        ).scalars()
        assert segment_id in set(marked)
    assert await claim_job(clean_db, JOB, "w", period=3600, lease=60)
