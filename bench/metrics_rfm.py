"""RFM scores for every customer (issue 3: under 10 s with 1,000,000 customers and 5,000,000
orders), beside a hand-written SELECT computing plain ntile() quintiles, in the same run.

    python -m bench.metrics_rfm [--customers 1000000] [--orders 5000000] [--repeat 3]

Clones the data set (bench/dataset.py; built into a template on first use) and times the
metrics-worker's own recomputation (one transaction: scores, then only the difference written
to `customer_rfm`) in three situations:

- first: `customer_rfm` is empty, every buyer is inserted;
- rewrite: every stored row is wrong (as after a change of definition), every row is updated;
- steady: nothing changed since the last run (a debounced run after a few orders, or the
  daily run, writes only the few rows whose figures or scores moved).

Baseline: one SELECT computing frequency, monetary and recency with `ntile(5)` over the same
buyers, writing nothing.
"""

import asyncio
import statistics
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.dataset import DatasetSpec, arguments, clone, drop, spec_of
from metrics_worker.rfm import RfmChanges, recompute_rfm
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine

DATABASE = "segments_bench_metrics_rfm"

BASELINE = text(
    """
    SELECT count(*), sum(r), sum(f), sum(m) FROM (
        SELECT ntile(5) OVER (ORDER BY last_order_at) AS r,
               ntile(5) OVER (ORDER BY frequency) AS f,
               ntile(5) OVER (ORDER BY monetary) AS m
        FROM (
            SELECT customer_id, max(placed_at) AS last_order_at, count(*) AS frequency,
                   sum(total) AS monetary
            FROM orders WHERE status = 'placed' GROUP BY customer_id
        ) placed
    ) scored
    """
)


async def worker_run(engine: AsyncEngine) -> tuple[float, RfmChanges]:
    started = time.perf_counter()
    async with engine.begin() as conn:
        changes = await recompute_rfm(conn)
    return time.perf_counter() - started, changes


async def vacuum(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM customer_rfm"))


async def baseline(engine: AsyncEngine) -> float:
    started = time.perf_counter()
    async with engine.connect() as conn:
        (await conn.execute(BASELINE)).one()
    return time.perf_counter() - started


async def main(spec: DatasetSpec, repeat: int) -> None:
    url = await clone(spec, DATABASE)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    results: dict[str, list[float]] = {"first": [], "rewrite": [], "steady": [], "baseline": []}
    changes: dict[str, RfmChanges] = {}
    try:
        await baseline(engine)  # warms the caches
        for _ in range(repeat):
            async with engine.begin() as conn:
                await conn.execute(text("TRUNCATE customer_rfm"))
            seconds, changes["first"] = await worker_run(engine)
            results["first"].append(seconds)
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE customer_rfm SET recency_score = 0"))
            await vacuum(engine)  # as autovacuum would have, between runs
            seconds, changes["rewrite"] = await worker_run(engine)
            results["rewrite"].append(seconds)
            seconds, changes["steady"] = await worker_run(engine)
            results["steady"].append(seconds)
            results["baseline"].append(await baseline(engine))
    finally:
        await engine.dispose()
        await drop(DATABASE)
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders")
    print(f"median of {repeat} rounds (min):")
    for name, label in (
        ("first", "worker, empty table (all inserted)"),
        ("rewrite", "worker, every row updated         "),
        ("steady", "worker, nothing changed           "),
        ("baseline", "baseline SELECT with ntile()      "),
    ):
        written = f"  {changes[name]}" if name in changes else ""
        print(f"  {label} {median[name]:.2f} s ({min(results[name]):.2f}){written}")
    for name in ("first", "rewrite", "steady"):
        print(f"worker {name} / baseline: {median[name] / median['baseline']:.2f}")


if __name__ == "__main__":
    args = arguments(__doc__, repeat=3).parse_args()
    asyncio.run(main(spec_of(args), args.repeat))
