"""Target-group operations on two 500,000-member segments (issue 6: combine, split and
compare each under 2 s), on the 1,000,000-customer data set.

    python -m bench.rules_targets [--repeat 3]

A holds the customers with an even id, B the first 500,000 customers: 250,000 in both. Each
operation runs through segment-api's own service (locks, new segments, set-based membership,
history, events, one transaction), beside its bare membership statement run by hand in the
same run (the baseline: what the database cannot avoid doing). Created segments are deleted,
the table vacuumed and a checkpoint taken between runs. Prints medians and ratios, and the
machine's load.
"""

import asyncio
import time
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import load_average, print_pairs
from bench.dataset import DatasetSpec, arguments, clone, create_segment, drop, spec_of
from segment_api.rules.repository import tune
from segment_api.targets import service
from segment_api.targets.schemas import CombineRequest, CompareRequest, SplitPart, SplitRequest
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.db.ids import uuid7

DATABASE = "segments_bench_rules_targets"
# The largest id: the bare statements append at the right edge of the members' primary key,
# as the service's new segments (time-ordered ids, newest last) do.
SCRATCH = uuid.UUID(int=(1 << 128) - 1)

BARE = {
    # The two primary key ranges merged in customer order (ordered subqueries behind
    # OFFSET 0; DISTINCT ON is never hashed): faster than grouping both by customer.
    "union": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT DISTINCT ON (customer_id) CAST(:target AS uuid), customer_id FROM (
            (SELECT customer_id FROM segment_members WHERE segment_id = :a
             ORDER BY customer_id OFFSET 0)
            UNION ALL
            (SELECT customer_id FROM segment_members WHERE segment_id = :b
             ORDER BY customer_id OFFSET 0)
        ) AS members
        ORDER BY customer_id
    """,
    # A merge join of the two primary key ranges: faster than grouping both by customer.
    "intersect": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, a.customer_id FROM segment_members a
        JOIN segment_members b ON b.segment_id = :b AND b.customer_id = a.customer_id
        WHERE a.segment_id = :a ORDER BY a.customer_id
    """,
    # A merge anti-join: the ordered subquery behind OFFSET 0 keeps PostgreSQL from hashing
    # one side and sorting the result, as it does for the same NOT EXISTS.
    "difference": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, a.customer_id FROM segment_members a
        LEFT JOIN (SELECT customer_id FROM segment_members WHERE segment_id = :b
                   ORDER BY customer_id OFFSET 0) b ON b.customer_id = a.customer_id
        WHERE a.segment_id = :a AND b.customer_id IS NULL
        ORDER BY a.customer_id
    """,
    "split": """
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :target, customer_id FROM segment_members WHERE segment_id = :a
        ORDER BY customer_id
    """,
    # Sizes are the segments' member counts, kept with every membership change.
    "compare": """
        SELECT (SELECT member_count FROM segments WHERE id = :a),
               (SELECT member_count FROM segments WHERE id = :b),
               (SELECT count(*) FROM segment_members a JOIN segment_members b
                  ON b.customer_id = a.customer_id AND b.segment_id = :b
                WHERE a.segment_id = :a)
    """,
}


async def first_half(url: str) -> uuid.UUID:
    segment_id = uuid7()  # as the API creates them
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO segments (id, name) VALUES (:s, 'First half')"), {"s": segment_id}
            )
            await conn.execute(
                text(
                    "INSERT INTO segment_members (segment_id, customer_id) "
                    "SELECT :s, id FROM customers WHERE id <= 500000 ORDER BY id"
                ),
                {"s": segment_id},
            )
            await conn.execute(
                text("UPDATE segments SET member_count = 500000 WHERE id = :s"), {"s": segment_id}
            )
    finally:
        await engine.dispose()
    return segment_id


async def tidy(engine: AsyncEngine, keep: set[uuid.UUID]) -> None:
    """Delete what a run created (the trigger deletes their members), vacuum, checkpoint."""
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM segments WHERE kind = 'user' AND NOT (id = ANY(:keep))"),
            {"keep": list(keep)},
        )
        await conn.execute(
            text("DELETE FROM segment_members WHERE segment_id = :s"), {"s": SCRATCH}
        )
        await conn.execute(text("DELETE FROM outbox"))
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE segment_members"))
        # Each measurement starts from a checkpoint: none that the previous one's writes
        # called for lands in it (they drifted up run after run without this).
        await autocommit.execute(text("CHECKPOINT"))


async def main(spec: DatasetSpec, repeat: int) -> None:
    print(f"before: {load_average()}")
    url = await clone(spec, DATABASE)
    a = await create_segment(url, "Even ids", every=2)
    b = await first_half(url)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    runs: dict[str, list[float]] = {}
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE segments SET active = false WHERE kind = 'default'"))
            await conn.execute(
                text("INSERT INTO segments (id, name) VALUES (:s, 'Scratch')"), {"s": SCRATCH}
            )
        await tidy(engine, {a, b, SCRATCH})
        sizes: dict[str, int] = {}

        async def run_service(name: str) -> None:
            async with engine.begin() as conn:
                if name == "compare":
                    result = await service.compare(conn, CompareRequest(segment_ids=[a, b]))
                    sizes[name] = result.pairs[0].intersection
                elif name == "split":
                    parts = [SplitPart(name="Half 1", weight=1), SplitPart(name="Half 2", weight=1)]
                    made = await service.split(conn, a, SplitRequest(parts=parts, seed="bench"))
                    sizes[name] = sum(segment.member_count for segment in made)
                else:
                    body = CombineRequest.model_validate(
                        {"operation": name, "segment_ids": [a, b], "name": name}
                    )
                    sizes[name] = (await service.combine(conn, body)).member_count

        async def run_bare(name: str) -> None:
            async with engine.begin() as conn:
                # The service's session settings (no JIT, 64 MB sorts): statements compared.
                await tune(conn)
                await conn.execute(text(BARE[name]), {"target": SCRATCH, "a": a, "b": b})

        for run in range(repeat):
            for name in ("union", "intersect", "difference", "split", "compare"):
                # Each goes first every other run.
                order = ("service", "bare") if run % 2 else ("bare", "service")
                for side in order:
                    action = run_service if side == "service" else run_bare
                    started = time.perf_counter()
                    await action(name)
                    runs.setdefault(f"{name} {side}", []).append(time.perf_counter() - started)
                    await tidy(engine, {a, b, SCRATCH})
        print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders; repeat {repeat}")
        print("A: 500,000 even ids; B: the first 500,000 customers; 250,000 in both")
        print(f"result sizes: {sizes}")
        print_pairs(runs, ("union", "intersect", "difference", "split", "compare"), width=10)
    finally:
        await engine.dispose()
        await drop(DATABASE)
        print(f"after: {load_average()}")


if __name__ == "__main__":
    args = arguments(__doc__, repeat=3).parse_args()
    asyncio.run(main(spec_of(args), args.repeat))
