"""One refresh of a rule segment's membership: one transaction, one statement.

The segment is locked (its other membership writers wait), then the rule is evaluated and
the membership replaced set-wise in one statement: explicit includes and excludes and the
size limit applied, additions inserted, removals deleted, counted exactly. A whole refresh
evaluates every customer; a partial one only the customers changed since the last refresh
(`rule_refresh_pending`), when the rule allows it (rules/signals.py). The change is recorded
like every membership change (segments_shared/changes.py). Readers see the old membership
until the commit.

Lock order (segment_api/segments/locks.py): the segment first, then the membership-insert
lock (shared).
"""

import logging
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segment_api.rules import repository
from segment_api.rules.compile import SORTS_ON_ORDERS, RuleCompiler, SortKey, Strategy, random_seed
from segment_api.rules.definition import RuleDefinition, is_rule, parse_definition
from segment_api.rules.parse import RuleInvalid
from segment_api.rules.requests import QUEUE, drop
from segment_api.segments import locks
from segments_shared.changes import changes_of, unit_of_work
from segments_shared.jobs.store import Claim

log = logging.getLogger(__name__)

# A refresh that moves this many members refreshes the planner's statistics of memberships.
ANALYZE_AFTER = 50_000

_BUILDING = text(
    "UPDATE segments SET status = 'building' "
    "WHERE id = :id AND active AND definition->>'type' = 'rule' AND status <> 'building'"
)
_TAKE_PENDING = text(
    "WITH taken AS (DELETE FROM rule_refresh_pending WHERE segment_id = :id "
    "RETURNING customer_ids) "
    "SELECT DISTINCT c FROM taken, unnest(taken.customer_ids) AS c ORDER BY c"
)
_FORGET_PENDING = text("DELETE FROM rule_refresh_pending WHERE segment_id = :id")
# Done: `building` stays while a whole refresh is asked for again.
_DONE = text(
    """
    UPDATE segments SET
        refreshed_at = CASE WHEN :whole THEN now() ELSE refreshed_at END,
        status = CASE WHEN EXISTS (
            SELECT 1 FROM jobs
            WHERE queue = :queue AND key = :key AND due_at IS NOT NULL AND payload ? 'whole'
        ) THEN 'building' ELSE 'ready' END
    WHERE id = :id
    """
)


def compiler_for(
    definition: RuleDefinition, segment_id: uuid.UUID, strategy: Strategy
) -> RuleCompiler:
    sort = None
    if definition.max_size is not None:
        # Random, but stable per segment: a refresh keeps the same sample (no churn).
        sort = SortKey(definition.order_by, random_seed(str(segment_id)))
    return RuleCompiler(definition.rule, strategy=strategy, sort=sort)


async def refresh_segment(engine: AsyncEngine, job: Claim, source: str) -> str:
    """Carry out a claimed refresh; returns its outcome (`refreshed`, `unchanged`,
    `skipped`, `dropped`)."""
    segment_id = uuid.UUID(job.key)
    whole = bool(job.payload.get("whole"))
    cause = str(job.payload.get("cause") or "refresh")
    if whole:
        async with engine.begin() as conn:
            await conn.execute(_BUILDING, {"id": segment_id})
    async with unit_of_work(engine, source) as conn:
        outcome, moved = await _refresh(conn, segment_id, whole, cause)
        await conn.execute(
            _DONE,
            {
                "id": segment_id,
                "whole": whole or outcome == "skipped",
                "queue": QUEUE,
                "key": job.key,
            },
        )
    if moved >= ANALYZE_AFTER:
        # The planner's idea of the segment's size must follow at once: estimates from
        # before (an empty table after install) made the next partial refresh scan the whole
        # segment per customer (minutes instead of milliseconds). Autovacuum may be a minute
        # or more behind.
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE segment_members"))
            await conn.commit()
    return outcome


async def _refresh(
    conn: AsyncConnection, segment_id: uuid.UUID, whole: bool, cause: str
) -> tuple[str, int]:
    """The outcome, and how many members entered or left."""
    await repository.tune(conn)
    locked = await locks.lock_segment(conn, segment_id)
    if locked is None or not locked.active or not is_rule(locked.definition):
        if locked is not None:
            await drop(conn, segment_id)
        return "dropped", 0
    try:
        definition = parse_definition(locked.definition)
    except RuleInvalid as exc:
        # Saved rules were valid when saved: a hand-edited row, or one saved before a check
        # was tightened. Skipped until the rule is changed (the segment's PATCH re-validates).
        log.error(
            "stored rule is invalid; not refreshing",
            extra={"segment_id": str(segment_id), "errors": exc.errors},
        )
        await conn.execute(_FORGET_PENDING, {"id": segment_id})
        return "skipped", 0
    await locks.lock_member_inserts(conn)
    only: list[int] | None = None
    if whole or definition.max_size is not None:
        await conn.execute(_FORGET_PENDING, {"id": segment_id})
        whole = True
    else:
        only = sorted((await conn.execute(_TAKE_PENDING, {"id": segment_id})).scalars())
        if not only:
            return "unchanged", 0
    if only is not None:
        strategy: Strategy = "lateral"
    else:
        by_orders = definition.max_size is not None and definition.order_by in SORTS_ON_ORDERS
        strategy = await repository.strategy_for(conn, definition.rule, orders=by_orders)
    compiler = compiler_for(definition, segment_id, strategy)
    moved = await repository.replace_members(
        conn, segment_id, compiler, definition.max_size, only=only
    )
    await changes_of(conn).members_changed(
        segment_id, entered=moved.entered, exited=moved.exited, cause=cause
    )
    log.info(
        "rule segment refreshed",
        extra={
            "segment_id": str(segment_id),
            "cause": cause,
            "whole": whole,
            "evaluated": "all" if only is None else len(only),
            "strategy": strategy,
            "entered": moved.entered_count,
            "exited": moved.exited_count,
        },
    )
    changed = moved.entered_count + moved.exited_count
    return ("refreshed" if changed else "unchanged"), changed
