"""Rule segments on 1,000,000 customers and 5,000,000 orders (issue 6: a rule mixing an
attribute, an order aggregate and a date condition evaluates and replaces membership in under
3 s, and within 1.3 times the best hand-written SQL for the same selection, same run).

    python -m bench.rules_refresh [--customers 1000000] [--orders 5000000] [--repeat 5]

The rule: gold-tier customers who spent 250.00 or more and ordered in the last 365 days.

- evaluate: the compiled rule (with the selectivity probe that picks its shape) counted,
  beside hand-written SELECTs of the same customers in three shapes (a LATERAL look-up of
  each customer's orders, a join to orders grouped by customer, a correlated EXISTS ...
  HAVING), each under the refresher's session settings and under the server's defaults; the
  best of them is the baseline;
- refresh: the refresher's own code (queue, claim, lock the segment, evaluate and replace
  the membership in one statement with includes/excludes applied, history and event), from
  an empty membership and again with nothing changed, beside one hand-written statement
  replacing the membership of another segment with the best hand-written selection.

Prints medians of `--repeat` runs and the ratios; reports the machine's load (it is shared).
"""

import asyncio
import json
import statistics
import time
import uuid

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import load_average
from bench.dataset import DatasetSpec, arguments, clone, drop, spec_of
from segment_api.rules.compile import RuleCompiler
from segment_api.rules.parse import parse_rule
from segment_api.rules.refresh import ANALYZE_AFTER, refresh_segment
from segment_api.rules.repository import strategy_for, tune
from segment_api.rules.requests import QUEUE, request_refresh
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.db.ids import uuid7
from segments_shared.jobs import store

DATABASE = "segments_bench_rules_refresh"
WORKER = "bench"
RULE = {
    "all": [
        {"field": "attributes.tier", "op": "eq", "value": "gold"},
        {"field": "total_revenue", "op": "gte", "value": 250},
        {"field": "last_order_at", "op": "within_last_days", "value": 365},
    ]
}
FILTER = "c.attributes->>'tier' = 'gold'"
AGGREGATES = "sum(total) >= 250 AND max(placed_at) >= now() - interval '365 days'"
HAND_WRITTEN = {
    "lateral": f"""
        SELECT c.id FROM customers c
        CROSS JOIN LATERAL (
            SELECT sum(total) AS revenue, max(placed_at) AS last_order_at FROM orders
            WHERE customer_id = c.id AND status = 'placed'
        ) o
        WHERE {FILTER} AND o.revenue >= 250
          AND o.last_order_at >= now() - interval '365 days'
    """,
    "grouped": f"""
        SELECT c.id FROM customers c
        JOIN (SELECT customer_id FROM orders WHERE status = 'placed'
              GROUP BY customer_id HAVING {AGGREGATES}) o ON o.customer_id = c.id
        WHERE {FILTER}
    """,
    "exists": f"""
        SELECT c.id FROM customers c
        WHERE {FILTER}
          AND EXISTS (SELECT 1 FROM orders WHERE customer_id = c.id AND status = 'placed'
                      HAVING {AGGREGATES})
    """,
}
SESSION = {
    "refresher settings": (
        "SELECT set_config('jit', 'off', true), "
        "set_config('max_parallel_workers_per_gather', '0', true), "
        "set_config('work_mem', '64MB', true)"
    ),
    "server defaults": "SELECT 1",
}
REPLACE = """
    WITH target AS MATERIALIZED ({selection}),
    removed AS (
        DELETE FROM segment_members m
        WHERE m.segment_id = :segment
          AND NOT EXISTS (SELECT 1 FROM target t WHERE t.id = m.customer_id)
        RETURNING 1
    ),
    added AS (
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :segment, t.id FROM target t
        WHERE NOT EXISTS (SELECT 1 FROM segment_members m
                          WHERE m.segment_id = :segment AND m.customer_id = t.id)
        ORDER BY t.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM removed)
"""


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started


async def compiled_count(engine: AsyncEngine) -> tuple[int, str]:
    rule = parse_rule(RULE, "/rule")
    async with engine.begin() as conn:
        await tune(conn)
        strategy = await strategy_for(conn, rule)
        selection = RuleCompiler(rule, strategy=strategy).selection().subquery()
        count = (await conn.execute(select(func.count()).select_from(selection))).scalar_one()
    return int(count), strategy


async def hand_count(engine: AsyncEngine, shape: str, session: str) -> int:
    async with engine.begin() as conn:
        await conn.execute(text(SESSION[session]))
        statement = text(f"SELECT count(*) FROM ({HAND_WRITTEN[shape]}) s")
        return int((await conn.execute(statement)).scalar_one())


async def compiled_refresh(engine: AsyncEngine, segment_id: uuid.UUID) -> tuple[int, int]:
    """What the refresher does for one due segment: claim, then refresh in one transaction."""
    async with engine.begin() as conn:
        await request_refresh(conn, segment_id, "refresh_requested")
    async with engine.begin() as conn:
        (claimed,) = await store.claim(conn, QUEUE, WORKER, limit=1, lease=300)
    # "unchanged" when the membership was already right (the steady refresh).
    assert await refresh_segment(engine, claimed, "bench") in ("refreshed", "unchanged")
    async with engine.begin() as conn:
        await store.finish(conn, claimed, WORKER)
        row = (
            await conn.execute(
                text(
                    "SELECT entered, exited FROM segment_history WHERE segment_id = :s "
                    "ORDER BY id DESC LIMIT 1"
                ),
                {"s": segment_id},
            )
        ).one()
    return int(row.entered), int(row.exited)


async def hand_refresh(
    engine: AsyncEngine, segment_id: uuid.UUID, shape: str, session: str
) -> tuple[int, int]:
    async with engine.begin() as conn:
        await conn.execute(text(SESSION[session]))
        statement = text(REPLACE.format(selection=HAND_WRITTEN[shape]))
        entered, exited = (await conn.execute(statement, {"segment": segment_id})).one()
        await conn.execute(
            text("UPDATE segments SET member_count = member_count + :d WHERE id = :s"),
            {"d": entered - exited, "s": segment_id},
        )
    if entered + exited >= ANALYZE_AFTER:
        # As the refresher does after a large change: without it, the next statement plans
        # for the segment's old size (the steady replacement then ran past 60 s).
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE segment_members"))
            await conn.commit()
    return int(entered), int(exited)


async def empty(engine: AsyncEngine, *segment_ids: uuid.UUID) -> None:
    async with engine.begin() as conn:
        ids = {"ids": list(segment_ids)}
        await conn.execute(text("DELETE FROM segment_members WHERE segment_id = ANY(:ids)"), ids)
        await conn.execute(text("UPDATE segments SET member_count = 0 WHERE id = ANY(:ids)"), ids)
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE segment_members"))


async def setup(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    rule_segment, hand_segment = uuid7(), uuid7()  # as the API creates them
    async with engine.begin() as conn:
        # The default segments would be computed first by a real refresher; not timed here.
        await conn.execute(text("UPDATE segments SET active = false WHERE kind = 'default'"))
        await conn.execute(
            text(
                "INSERT INTO segments (id, name, definition) VALUES "
                "(:r, 'Gold, 250+, last year', CAST(:d AS jsonb)), (:h, 'Hand-written', DEFAULT)"
            ),
            {"r": rule_segment, "h": hand_segment, "d": json.dumps({"type": "rule", "rule": RULE})},
        )
    return rule_segment, hand_segment


def median(values: list[float]) -> float:
    return statistics.median(values)


async def main(spec: DatasetSpec, repeat: int) -> None:
    print(f"before: {load_average()}")
    url = await clone(spec, DATABASE)
    engine = create_engine(DatabaseSettings(database_url=url), pool_size=2)
    try:
        rule_segment, hand_segment = await setup(engine)
        await compiled_count(engine)  # warm the cache for everyone alike
        evaluate: dict[str, list[float]] = {}
        first: dict[str, list[float]] = {"compiled": [], "hand": []}
        steady: dict[str, list[float]] = {"compiled": [], "hand": []}
        seen: set[object] = set()
        strategy = ""
        for _ in range(repeat):
            watch = Stopwatch()
            count, strategy = await compiled_count(engine)
            evaluate.setdefault("compiled rule", []).append(watch.seconds())
            seen.add(count)
            for shape in HAND_WRITTEN:
                for session in SESSION:
                    watch = Stopwatch()
                    seen.add(await hand_count(engine, shape, session))
                    evaluate.setdefault(f"{shape}, {session}", []).append(watch.seconds())
        baselines = {
            name: median(times) for name, times in evaluate.items() if name != "compiled rule"
        }
        best = min(baselines, key=lambda name: baselines[name])
        best_shape, best_session = best.split(", ")
        for run in range(repeat):
            await empty(engine, rule_segment, hand_segment)
            for runs in (first, steady):
                # Each goes first every other run: the first insert warms what both touch.
                for side in ("compiled", "hand") if run % 2 else ("hand", "compiled"):
                    watch = Stopwatch()
                    if side == "compiled":
                        seen.add(await compiled_refresh(engine, rule_segment))
                    else:
                        seen.add(await hand_refresh(engine, hand_segment, best_shape, best_session))
                    runs[side].append(watch.seconds())

        print(f"data set: {spec.customers:,} customers, {spec.orders:,} orders; repeat {repeat}")
        print(f"rule: {json.dumps(RULE)}")
        print(f"results seen (counts, (entered, exited)): {sorted(map(str, seen))}")
        print(f"compiled shape chosen by the probe: {strategy}")
        print("evaluate (count the selected customers), median:")
        for name, times in evaluate.items():
            print(f"  {name:34} {median(times):6.3f} s")
        compiled = median(evaluate["compiled rule"])
        print(f"  best hand-written: {best}; compiled / best = {compiled / baselines[best]:.2f}")
        for label, runs in (("refresh from empty", first), ("refresh, nothing changed", steady)):
            ours, theirs = median(runs["compiled"]), median(runs["hand"])
            print(
                f"{label}: refresher {ours:.3f} s, hand-written replace ({best}) "
                f"{theirs:.3f} s, ratio {ours / theirs:.2f}"
            )
    finally:
        await engine.dispose()
        await drop(DATABASE)
        print(f"after: {load_average()}")


if __name__ == "__main__":
    args = arguments(__doc__, repeat=5).parse_args()
    asyncio.run(main(spec_of(args), args.repeat))
