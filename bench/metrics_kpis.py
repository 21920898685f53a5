"""Recomputing a large segment's KPIs whole (a 1,000,000-member segment in under 3 s, and
within 1.3 times one hand-written SQL query for the same figures, measured in the same run).

    python -m bench.metrics_kpis [--customers 1000000] [--orders 5000000] [--every 1] [--repeat 5]

Clones the data set (bench/dataset.py; built into a template on first use) and creates a
segment of every `every`-th customer. Each round then times, in turn:

- the full check as it runs daily: the worker's own code (metrics_worker/check.py)
  recomputes the segment from its members' orders in one REPEATABLE READ transaction,
  compares with the kept figures (equal: nothing written) and commits;
- the same check after the segment's kept figures were lost (their row removed first,
  untimed): it also rebuilds every member's stored figures and stores the segment's;
- the whole computation from the kept per-customer figures, as the fold computes a new
  segment (metrics_worker/fold.py), committed;
- baseline A: one hand-written SELECT of the same figures, the textbook way (`lag()` over each
  member's orders for the gaps);
- baseline B: one hand-written SELECT of the same figures with per-member aggregates.

Prints the median of each and the worker's ratio to the faster baseline.
"""

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.dataset import DatasetSpec, arguments, clone, create_segment, drop, spec_of
from metrics_worker.check import check_segment
from metrics_worker.fold import MISSING_PARTS, WHOLE, kpi_transaction
from metrics_worker.kpis import compute_segment_kpis
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine

DATABASE = "segments_bench_metrics_kpis"

BASELINE_LAG = text(
    """
    WITH gaps AS (
        SELECT o.total,
               o.placed_at - lag(o.placed_at) OVER (PARTITION BY o.customer_id
                                                    ORDER BY o.placed_at) AS gap
        FROM segment_members m JOIN orders o ON o.customer_id = m.customer_id
        WHERE m.segment_id = :segment_id AND o.status = 'placed'
    ),
    people AS (
        SELECT count(*) AS customers,
               count(*) FILTER (WHERE c.email IS NOT NULL AND c.email_status = 'subscribed')
                   AS reachable
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = :segment_id
    )
    SELECT p.customers, p.reachable, coalesce(sum(g.total), 0) AS revenue, count(g.*) AS orders,
           round(sum(g.total) / nullif(count(g.*), 0), 2) AS aov,
           round(coalesce(sum(g.total), 0) / nullif(p.customers, 0), 2) AS clv,
           round(avg(extract(epoch FROM g.gap)) / 86400, 2) AS latency
    FROM people p LEFT JOIN gaps g ON true
    GROUP BY p.customers, p.reachable
    """
)

BASELINE_AGGREGATES = text(
    """
    WITH per_member AS (
        SELECT count(*) AS orders, sum(o.total) AS revenue,
               extract(epoch FROM max(o.placed_at) - min(o.placed_at)) AS span
        FROM segment_members m JOIN orders o ON o.customer_id = m.customer_id
        WHERE m.segment_id = :segment_id AND o.status = 'placed'
        GROUP BY m.customer_id
    ),
    people AS (
        SELECT count(*) AS customers,
               count(*) FILTER (WHERE c.email IS NOT NULL AND c.email_status = 'subscribed')
                   AS reachable
        FROM segment_members m JOIN customers c ON c.id = m.customer_id
        WHERE m.segment_id = :segment_id
    )
    SELECT p.customers, p.reachable, coalesce(sum(a.revenue), 0) AS revenue,
           coalesce(sum(a.orders), 0) AS orders,
           round(sum(a.revenue) / nullif(sum(a.orders), 0), 2) AS aov,
           round(coalesce(sum(a.revenue), 0) / nullif(p.customers, 0), 2) AS clv,
           round(sum(a.span) / nullif(sum(a.orders - 1), 0) / 86400, 2) AS latency
    FROM people p LEFT JOIN per_member a ON true
    GROUP BY p.customers, p.reachable
    """
)


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def full_check(engine: AsyncEngine, segment_id: uuid.UUID, *, lost: bool) -> float:
    """The check as it runs daily (the kept figures there: recompute and compare), or, with
    `lost`, after the kept figures were lost (recompute, rebuild every member's figures,
    store)."""
    if lost:
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM segment_kpis WHERE segment_id = :s"), {"s": segment_id}
            )

    async def check() -> None:
        async with kpi_transaction(engine) as conn:
            assert not await check_segment(conn, segment_id)

    return await timed(check)


async def whole_from_parts(engine: AsyncEngine, segment_id: uuid.UUID) -> float:
    async def whole() -> None:
        async with engine.begin() as conn:
            await conn.execute(MISSING_PARTS, {"segment_id": segment_id})
            await conn.execute(WHOLE, {"segment_id": segment_id})

    return await timed(whole)


async def baseline(engine: AsyncEngine, statement: TextClause, segment_id: uuid.UUID) -> float:
    async def run() -> None:
        async with engine.connect() as conn:
            (await conn.execute(statement, {"segment_id": segment_id})).one()

    return await timed(run)


async def main(spec: DatasetSpec, every: int, repeat: int) -> None:
    url = await clone(spec, DATABASE)
    segment_id = await create_segment(url, "Bench KPIs", every=every)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    try:
        async with engine.connect() as conn:
            kpis = await compute_segment_kpis(conn, segment_id)  # warms the caches
            lag = (await conn.execute(BASELINE_LAG, {"segment_id": segment_id})).one()
            aggregates = (await conn.execute(BASELINE_AGGREGATES, {"segment_id": segment_id})).one()
        # The three compute the same figures.
        for row in (lag, aggregates):
            assert (row.customers, row.orders, row.revenue, row.aov, row.clv, row.latency) == (
                kpis["customers"],
                kpis["total_orders"],
                kpis["total_revenue"],
                kpis["average_order_value"],
                kpis["customer_lifetime_value"],
                kpis["order_latency_days"],
            ), (row, kpis)
        await whole_from_parts(engine, segment_id)  # stores every member's figures once
        worker, repair, parts, base_lag, base_aggregates = [], [], [], [], []
        for _ in range(repeat):
            repair.append(await full_check(engine, segment_id, lost=True))
            worker.append(await full_check(engine, segment_id, lost=False))
            parts.append(await whole_from_parts(engine, segment_id))
            base_lag.append(await baseline(engine, BASELINE_LAG, segment_id))
            base_aggregates.append(await baseline(engine, BASELINE_AGGREGATES, segment_id))
    finally:
        await engine.dispose()
        await drop(DATABASE)
    w, p, a, b = (statistics.median(v) for v in (worker, parts, base_lag, base_aggregates))
    print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders")
    print(f"segment: {kpis['customers']:,} members, {kpis['total_orders']:,} placed orders")
    print(f"median of {repeat} rounds (min):")
    r = statistics.median(repair)
    print(f"  full check: recompute from orders, compare: {w:.2f} s ({min(worker):.2f})")
    print(f"  after figures lost: recompute, rebuild, store: {r:.2f} s ({min(repair):.2f})")
    print(f"  whole from kept figures (a new segment):   {p:.2f} s ({min(parts):.2f})")
    print(f"  baseline A, textbook SELECT with lag():   {a:.2f} s ({min(base_lag):.2f})")
    print(f"  baseline B, SELECT per-member aggregates: {b:.2f} s ({min(base_aggregates):.2f})")
    print(f"full check / faster baseline: {w / min(a, b):.2f}")
    print(f"whole from kept figures / faster baseline: {p / min(a, b):.2f}")


if __name__ == "__main__":
    parser = arguments(__doc__, repeat=5)
    parser.add_argument("--every", type=int, default=1, help="members: every n-th customer")
    args = parser.parse_args()
    asyncio.run(main(spec_of(args), args.every, args.repeat))
