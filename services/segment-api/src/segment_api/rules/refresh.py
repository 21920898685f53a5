"""One recomputation of a rule segment's membership: one transaction, one statement.

The segment is locked (its other membership writers wait), then the rule is evaluated and
the membership replaced set-wise in one statement: explicit includes and excludes and the
size limit applied, additions inserted, removals deleted, counted exactly. It is recorded
like every membership change (history, `member_count`, `segment.members_changed`). Readers
see the old membership until the commit.

Lock order, free of deadlocks with erasures: the segment first, then the membership-insert
lock (shared). An erasure takes a segment's lock only while it holds no insert lock, and
takes the insert lock last; the refresh never waits for a row an erasure holds.
"""

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.rules import queue, repository
from segment_api.rules.compile import SORTS_ON_ORDERS, RuleCompiler, SortKey, Strategy, random_seed
from segment_api.rules.definition import RuleDefinition, is_rule, parse_definition
from segment_api.rules.parse import RuleInvalid
from segment_api.segments import repository as segments
from segment_api.segments.service import record_membership_change

log = logging.getLogger(__name__)


def compiler_for(
    definition: RuleDefinition, segment_id: uuid.UUID, strategy: Strategy
) -> RuleCompiler:
    sort = None
    if definition.max_size is not None:
        # Random, but stable per segment: a refresh keeps the same sample (no churn).
        sort = SortKey(definition.order_by, random_seed(str(segment_id)))
    return RuleCompiler(definition.rule, strategy=strategy, sort=sort)


async def refresh_segment(conn: AsyncConnection, claimed: queue.Claim, worker: str) -> bool:
    """Recompute the claimed segment in the caller's transaction; False when it was not
    (deleted, inactive or manual by now)."""
    await repository.tune(conn)
    locked = await segments.lock(conn, claimed.segment_id)
    if locked is None or not locked.active or not is_rule(locked.definition):
        if locked is not None:
            await queue.drop(conn, claimed.segment_id)
        return False
    try:
        definition = parse_definition(locked.definition)
    except RuleInvalid as exc:
        # Saved rules were valid when saved: a hand-edited row, or one saved before a check
        # was tightened. Skipped until the rule is changed (the segment's PATCH re-validates).
        log.error(
            "stored rule is invalid; not refreshing",
            extra={"segment_id": str(claimed.segment_id), "errors": exc.errors},
        )
        await queue.skip(conn, claimed.segment_id)
        return False
    await repository.lock_member_inserts(conn)
    sorted_by_orders = definition.max_size is not None and definition.order_by in SORTS_ON_ORDERS
    strategy = await repository.strategy_for(conn, definition.rule, orders=sorted_by_orders)
    compiler = compiler_for(definition, claimed.segment_id, strategy)
    entered, exited = await repository.replace_members(
        conn, claimed.segment_id, compiler, definition.max_size
    )
    await record_membership_change(
        conn, claimed.segment_id, entered=entered, exited=exited, cause=claimed.cause
    )
    await queue.finish(conn, claimed, worker, refreshed=True)
    log.info(
        "rule segment refreshed",
        extra={
            "segment_id": str(claimed.segment_id),
            "cause": claimed.cause,
            "strategy": strategy,
            "entered": entered,
            "exited": exited,
        },
    )
    return True
