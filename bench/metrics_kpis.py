"""Recomputing a large segment's KPIs (issue 3: a 1,000,000-member segment in under 3 s, and
within 1.3 times one hand-written SQL query for the same figures, measured in the same run).

    python -m bench.metrics_kpis [--customers 1000000] [--orders 5000000] [--every 1] [--repeat 5]

Clones the data set (bench/dataset.py; built into a template on first use) and creates a
segment of every `every`-th customer. Each round then times, in turn:

- the worker: the segment is marked stale as segment-api marks it, then the worker's own code
  claims the mark and recomputes in one transaction (figures stored, `metrics.updated` in the
  outbox, mark cleared) and commits; the mark is not timed;
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
from metrics_worker.kpis import compute_segment_kpis
from metrics_worker.recompute import Folding, claim_stale_segments, recompute_segment_kpis
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.staleness import mark_segments_stale

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


async def worker_recompute(engine: AsyncEngine, segment_id: uuid.UUID) -> float:
    async with engine.begin() as conn:
        await mark_segments_stale(conn, [segment_id])

    async def claim_and_recompute() -> None:
        claims = await claim_stale_segments(
            engine, "bench", limit=1, folding=Folding(debounce=0.0, max_delay=0.0)
        )
        assert [claim.segment_id for claim in claims] == [segment_id]
        async with engine.begin() as conn:
            assert await recompute_segment_kpis(conn, claims[0])

    return await timed(claim_and_recompute)


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
                kpis.customers,
                kpis.total_orders,
                kpis.total_revenue,
                kpis.average_order_value,
                kpis.customer_lifetime_value,
                kpis.order_latency_days,
            ), (row, kpis)
        worker, base_lag, base_aggregates = [], [], []
        for _ in range(repeat):
            worker.append(await worker_recompute(engine, segment_id))
            base_lag.append(await baseline(engine, BASELINE_LAG, segment_id))
            base_aggregates.append(await baseline(engine, BASELINE_AGGREGATES, segment_id))
    finally:
        await engine.dispose()
        await drop(DATABASE)
    w, a, b = (statistics.median(v) for v in (worker, base_lag, base_aggregates))
    print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders")
    print(f"segment: {kpis.customers:,} members, {kpis.total_orders:,} placed orders")
    print(f"median of {repeat} rounds (min):")
    print(f"  worker claim + recompute + store + event: {w:.2f} s ({min(worker):.2f})")
    print(f"  baseline A, textbook SELECT with lag():   {a:.2f} s ({min(base_lag):.2f})")
    print(f"  baseline B, SELECT per-member aggregates: {b:.2f} s ({min(base_aggregates):.2f})")
    print(f"worker / faster baseline: {w / min(a, b):.2f}")


if __name__ == "__main__":
    parser = arguments(__doc__, repeat=5)
    parser.add_argument("--every", type=int, default=1, help="members: every n-th customer")
    args = parser.parse_args()
    asyncio.run(main(spec_of(args), args.every, args.repeat))
