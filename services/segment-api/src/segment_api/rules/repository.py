"""SQL of rule segments: replacing a segment's membership with what its rule selects,
previews, and the graph of segments referring to each other."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Uuid,
    any_,
    case,
    delete,
    except_,
    func,
    insert,
    literal,
    null,
    nulls_last,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.rules.compile import AnySelect, RuleCompiler, Strategy
from segment_api.rules.nodes import Node
from segment_api.rules.strategy import choose_strategy, probe
from segments_shared.changes import MAX_NAMED, Staged, prepare_staging, stage_parts
from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Customer, SegmentMember, SegmentOverride
from segments_shared.db.types import AnyRow

# Saving a rule that refers to segments, and deleting a segment, take this lock: two
# concurrent edits cannot close a cycle, nor refer to a segment being deleted.
_LOCK_RULE_GRAPH = text("SELECT pg_advisory_xact_lock(hashtext('segments.rule_graph'))")

# Evaluation settings for the statements of one transaction. JIT compiling costs more than
# it saves on these queries; parallel plans repeated the grouped orders aggregate in every
# worker (three times the work, measured); set differences want hash tables. Plans are made
# for each execution's values: after five runs of one prepared statement PostgreSQL may
# switch to a generic plan, and one for "the members of some segment" turned a refresh of
# 83,000 members from one second into more than sixty (measured).
_TUNING = text(
    "SELECT set_config('jit', 'off', true), "
    "set_config('max_parallel_workers_per_gather', '0', true), "
    "set_config('work_mem', '64MB', true), "
    "set_config('plan_cache_mode', 'force_custom_plan', true)"
)

OVERRIDES = SegmentOverride.__table__
MEMBERS = SegmentMember.__table__


@dataclass(frozen=True)
class Moved:
    """Who entered and left: their ids, or, when more than MAX_NAMED, how many (their parts
    staged for the change's events, segments_shared/changes.py)."""

    entered_count: int
    exited_count: int
    entered_ids: list[int] | None
    exited_ids: list[int] | None

    @property
    def entered(self) -> list[int] | Staged:
        return self.entered_ids if self.entered_ids is not None else Staged(self.entered_count)

    @property
    def exited(self) -> list[int] | Staged:
        return self.exited_ids if self.exited_ids is not None else Staged(self.exited_count)


def _named(moved: Any) -> ColumnElement[Any]:
    """The ids of a CTE's rows, or NULL when there are more than MAX_NAMED."""
    return (
        select(
            case(
                (func.count() <= MAX_NAMED, func.array_agg(moved.c.customer_id)),
                else_=null(),
            )
        )
        .select_from(moved)
        .scalar_subquery()
    )


def _unnamed(moved: Any) -> Any:
    """A CTE's rows when there are more than MAX_NAMED (none otherwise)."""
    many = select(func.count()).select_from(moved).scalar_subquery() > MAX_NAMED
    return select(moved.c.customer_id).where(many).subquery()


def replacement(
    segment_id: uuid.UUID,
    selection: AnySelect,
    max_size: int | None,
    only: Sequence[int] | None = None,
) -> AnySelect:
    """One statement replacing the segment's membership with what `selection` (customer_id,
    sort_key) selects: the rule's customers less the explicit includes and excludes, cut to
    the size limit after counting the includes (highest sort key first, ties to the
    longest-standing customer), plus the includes. With `only`, just those customers are
    evaluated and moved (no size limit then). Additions and removals are set differences
    (EXCEPT: hashed or sorted, never a nested loop that a stale row estimate of a
    just-filled segment could make quadratic). Removals skip rows a concurrent erasure holds
    (it removes them itself). Answers the counts and ids that entered and exited. The caller
    holds the segment's lock, which keeps every other writer of its membership out: the
    inserts cannot conflict.
    """
    assert only is None or max_size is None, "a size limit ranks every customer"
    ids = literal(list(only), ARRAY(BigInteger)) if only is not None else None
    target = selection.cte("target")
    overrides_query = select(OVERRIDES.c.customer_id, OVERRIDES.c.mode).where(
        OVERRIDES.c.segment_id == segment_id
    )
    if ids is not None:
        overrides_query = overrides_query.where(OVERRIDES.c.customer_id == any_(ids))
    overrides = overrides_query.cte("overrides")
    includes = select(overrides.c.customer_id).where(overrides.c.mode == "include")
    # NOT IN over the (small) overrides: a hashed subplan.
    ruled = select(target.c.customer_id).where(
        target.c.customer_id.not_in(select(overrides.c.customer_id))
    )
    if max_size is not None:
        room = (
            select(func.greatest(max_size - func.count(), 0))
            .where(overrides.c.mode == "include")
            .scalar_subquery()
        )
        ruled = ruled.order_by(nulls_last(target.c.sort_key.desc()), target.c.customer_id).limit(
            room
        )
    wanted = union_all(ruled, includes).cte("wanted")
    current_query = select(MEMBERS.c.customer_id).where(MEMBERS.c.segment_id == segment_id)
    if ids is not None:
        current_query = current_query.where(MEMBERS.c.customer_id == any_(ids))
    current = current_query.cte("current")
    additions = except_(select(wanted.c.customer_id), select(current.c.customer_id)).cte(
        "additions"
    )
    removals = except_(select(current.c.customer_id), select(wanted.c.customer_id)).cte("removals")
    removable = (
        select(MEMBERS.c.customer_id)
        .where(
            MEMBERS.c.segment_id == segment_id,
            MEMBERS.c.customer_id.in_(select(removals.c.customer_id)),
        )
        .with_for_update(skip_locked=True)
        .cte("removable")
    )
    removed = (
        delete(SegmentMember)
        .where(
            MEMBERS.c.segment_id == segment_id,
            MEMBERS.c.customer_id.in_(select(removable.c.customer_id)),
        )
        .returning(MEMBERS.c.customer_id)
        .cte("removed")
    )
    added = (
        insert(SegmentMember)
        .from_select(
            ["segment_id", "customer_id"],
            select(literal(segment_id, Uuid), additions.c.customer_id).order_by(
                additions.c.customer_id
            ),
        )
        .returning(MEMBERS.c.customer_id)
        .cte("added")
    )
    # Who moved, beyond MAX_NAMED, staged as the events' parts, here where they are known.
    staged_added = stage_parts(segment_id, True, _unnamed(added)).cte("staged_added")
    staged_removed = stage_parts(segment_id, False, _unnamed(removed)).cte("staged_removed")
    return select(
        select(func.count()).select_from(added).scalar_subquery().label("entered"),
        select(func.count()).select_from(removed).scalar_subquery().label("exited"),
        _named(added).label("entered_ids"),
        _named(removed).label("exited_ids"),
    ).add_cte(staged_added, staged_removed)


_RULE_GRAPH = """
    SELECT id, name, definition FROM segments
    WHERE definition->>'type' = 'rule' AND jsonb_path_exists(definition, '$.rule.**.segment')
"""
_REFERRING = """
    SELECT id, name FROM segments
    WHERE id <> $1 AND definition->>'type' = 'rule'
      AND jsonb_path_exists(definition, '$.rule.**.segment ? (@ == $id)',
                            jsonb_build_object('id', $1::text))
    ORDER BY name
"""


async def tune(conn: AsyncConnection) -> None:
    """Settings for the rest of the transaction (and its first statement: it begins it)."""
    await conn.execute(_TUNING)


@contextlib.asynccontextmanager
async def planned_for(conn: AsyncConnection, strategy: Strategy) -> AsyncIterator[None]:
    """The grouped shape joins customers to orders grouped by customer. Row estimates of
    JSON conditions are far off (0.5% for a quarter of the customers, measured), and a
    nested loop over the grouped orders would then be quadratic: it is ruled out for the
    statement. The per-customer shape is a nested loop by design."""
    if strategy == "lateral":
        yield
        return
    await conn.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))
    yield
    # Not in a `finally`: the setting ends with the transaction, and after an error (a
    # timeout that closed the connection) a statement here would hide that error.
    await conn.execute(text("SELECT set_config('enable_nestloop', 'on', true)"))


async def strategy_for(conn: AsyncConnection, rule: Node, *, orders: bool = False) -> Strategy:
    """Grouped or per-customer order aggregates, from a 1% sample of the customers.
    `orders`: orders are read for the sort key too."""
    statement = probe(rule, orders=orders)
    if statement is None:
        return "grouped"
    kept, seen = (await conn.execute(statement)).one()
    return choose_strategy(int(kept), int(seen))


async def replace_members(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    compiler: RuleCompiler,
    max_size: int | None,
    *,
    only: Sequence[int] | None = None,
) -> Moved:
    """Replace the segment's membership (see `replacement`), of every customer or of `only`
    those."""
    selection = compiler.selection()
    if only is not None:
        selection = selection.where(compiler.c.c.id == any_(literal(list(only), ARRAY(BigInteger))))
    statement = replacement(segment_id, selection, max_size, only)
    await prepare_staging(conn)
    async with planned_for(conn, compiler.strategy):
        row = (await conn.execute(statement)).one()
    return Moved(int(row.entered), int(row.exited), row.entered_ids, row.exited_ids)


async def definition_of(conn: AsyncConnection, segment_id: uuid.UUID) -> Mapping[str, Any] | None:
    driver = await driver_connection(conn)
    row: Mapping[str, Any] | None = await driver.fetchrow(
        "SELECT id, definition, active FROM segments WHERE id = $1", segment_id
    )
    return row


async def lock_rule_graph(conn: AsyncConnection) -> None:
    await conn.execute(_LOCK_RULE_GRAPH)


async def segment_names(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    driver = await driver_connection(conn)
    rows = await driver.fetch("SELECT id, name FROM segments WHERE id = ANY($1::uuid[])", ids)
    return {row["id"]: row["name"] for row in rows}


async def rule_graph(conn: AsyncConnection) -> list[Mapping[str, Any]]:
    """Every rule segment that refers to other segments, with its definition."""
    driver = await driver_connection(conn)
    rows: list[Mapping[str, Any]] = await driver.fetch(_RULE_GRAPH)
    return rows


async def referring_segments(
    conn: AsyncConnection, segment_id: uuid.UUID
) -> list[Mapping[str, Any]]:
    driver = await driver_connection(conn)
    rows: list[Mapping[str, Any]] = await driver.fetch(_REFERRING, segment_id)
    return rows


async def counts(conn: AsyncConnection, rule: Node) -> AnyRow:
    """The rule's size and each condition's count, over every customer (one grouped pass)."""
    async with planned_for(conn, "grouped"):
        return (await conn.execute(RuleCompiler(rule, strategy="grouped").counts())).one()


async def sample(conn: AsyncConnection, rule: Node, strategy: Strategy, limit: int) -> list[AnyRow]:
    """The first `limit` customers (by internal id, oldest first) the rule selects."""
    compiler = RuleCompiler(rule, strategy=strategy)
    ids = compiler.selection().order_by(compiler.c.c.id).limit(limit).subquery()
    statement = (
        select(
            Customer.external_id,
            Customer.email,
            Customer.first_name,
            Customer.last_name,
            Customer.email_status,
        )
        .join(ids, ids.c.customer_id == Customer.id)
        .order_by(Customer.id)
    )
    async with planned_for(conn, strategy):
        return list((await conn.execute(statement)).all())
