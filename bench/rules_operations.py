"""The other target-group operations on the 1,000,000-customer data set: reduce, deduplicate
and cluster, through segment-api's service beside a bare statement by hand in the same run.

    python -m bench.rules_operations [--repeat 3]

A holds the customers with an even id (500,000), C those whose id is a multiple of three
(333,334; 166,667 of them in A too).

- reduce: the first 100,000 of A, at random (a stable hash) and by revenue. Bare: the same
  selection written by hand (a sort by the hash; a per-customer sum of placed orders).
- deduplicate [A, C]: C loses what A holds. Bare: one DELETE joining the two primary-key
  ranges. C is restored after each.
- cluster, k = 4, over every buyer's recency, frequency and monetary value. Bare: what no
  clustering avoids, reading the placed orders grouped by customer (in customer order from
  the index, as the service does) and writing one membership per buyer; the service also
  computes the features, fits k-means on a sample and finds each buyer's nearest centroid.

Each side goes first every other round; created segments are deleted, the table vacuumed and
a checkpoint taken between measurements. Prints medians, ratios and the machine's load.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import load_average, print_pairs
from bench.dataset import DatasetSpec, arguments, clone, create_segment, drop, spec_of
from bench.rules_targets import SCRATCH, tidy
from segment_api.rules.compile import random_seed
from segment_api.rules.repository import tune
from segment_api.targets import service
from segment_api.targets.schemas import ClusterRequest, DeduplicateRequest, ReduceRequest
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine

DATABASE = "segments_bench_rules_operations"
KEEP = 100_000

BARE = {
    "reduce random": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, customer_id FROM (
            SELECT customer_id FROM segment_members WHERE segment_id = :a
            ORDER BY hashtextextended(customer_id::text, :seed), customer_id LIMIT :keep
        ) AS kept ORDER BY customer_id
    """,
    "reduce revenue": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, customer_id FROM (
            SELECT m.customer_id FROM segment_members m
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(o.total), 0) AS revenue FROM orders o
                WHERE o.customer_id = m.customer_id AND o.status = 'placed'
            ) AS r
            WHERE m.segment_id = :a
            ORDER BY r.revenue DESC, m.customer_id LIMIT :keep
        ) AS kept ORDER BY customer_id
    """,
    "deduplicate": """
        DELETE FROM segment_members c USING segment_members a
        WHERE c.segment_id = :c AND a.segment_id = :a AND a.customer_id = c.customer_id
    """,
    "cluster": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, customer_id FROM orders WHERE status = 'placed'
        GROUP BY customer_id ORDER BY customer_id
    """,
}


async def restore(engine: AsyncEngine, c: uuid.UUID) -> None:
    """C as it was: every third customer."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO segment_members (segment_id, customer_id) "
                "SELECT :c, id FROM customers WHERE id % 3 = 0 ORDER BY id ON CONFLICT DO NOTHING"
            ),
            {"c": c},
        )
        await conn.execute(
            text(
                "UPDATE segments SET member_count = "
                "(SELECT count(*) FROM segment_members WHERE segment_id = :c) WHERE id = :c"
            ),
            {"c": c},
        )


async def main(spec: DatasetSpec, repeat: int) -> None:
    print(f"before: {load_average()}")
    url = await clone(spec, DATABASE)
    a = await create_segment(url, "Even ids", every=2)
    c = await create_segment(url, "Thirds", every=3)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    runs: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE segments SET active = false WHERE kind = 'default'"))
            await conn.execute(
                text("INSERT INTO segments (id, name) VALUES (:s, 'Scratch')"), {"s": SCRATCH}
            )

        async def run_service(name: str, round_: int) -> None:
            async with engine.begin() as conn:
                if name.startswith("reduce"):
                    order = "random" if name == "reduce random" else "total_revenue_desc"
                    body = ReduceRequest(
                        max_size=KEEP, order_by=order, seed="bench", name=f"{name} {round_}"
                    )
                    sizes[name] = (await service.reduce(conn, a, body)).member_count
                elif name == "deduplicate":
                    result = await service.deduplicate(conn, DeduplicateRequest(segment_ids=[a, c]))
                    sizes[name] = result.items[1].removed
                else:
                    request = ClusterRequest(k=4, seed=1, name_prefix=f"Cluster {round_}")
                    made = await service.cluster_buyers(conn, request)
                    sizes[name] = sum(segment.member_count for segment in made)

        async def run_bare(name: str, round_: int) -> None:
            async with engine.begin() as conn:
                await tune(conn)  # the service's session settings: statements compared
                if name == "cluster":
                    # As the service reads orders: grouped in customer order from the index.
                    await conn.execute(text("SELECT set_config('enable_hashagg', 'off', true)"))
                params = {
                    "target": SCRATCH,
                    "a": a,
                    "c": c,
                    "keep": KEEP,
                    "seed": random_seed("reduce:bench"),
                }
                await conn.execute(text(BARE[name]), params)

        names = ("reduce random", "reduce revenue", "deduplicate", "cluster")
        for round_ in range(repeat):
            for name in names:
                order = ("service", "bare") if round_ % 2 else ("bare", "service")
                for side in order:
                    action: Callable[[str, int], Awaitable[None]] = (
                        run_service if side == "service" else run_bare
                    )
                    started = time.perf_counter()
                    await action(name, round_)
                    runs.setdefault(f"{name} {side}", []).append(time.perf_counter() - started)
                    if name == "deduplicate":
                        await restore(engine, c)
                    await tidy(engine, {a, c, SCRATCH})
        print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders; repeat {repeat}")
        print(f"A: 500,000 even ids; C: 333,334 multiples of 3; keep {KEEP:,}; sizes: {sizes}")
        print_pairs(runs, names, width=15)
    finally:
        await engine.dispose()
        await drop(DATABASE)
        print(f"after: {load_average()}")


if __name__ == "__main__":
    args = arguments(__doc__, repeat=3).parse_args()
    asyncio.run(main(spec_of(args), args.repeat))
