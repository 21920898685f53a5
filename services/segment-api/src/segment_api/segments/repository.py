import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import and_, func, literal, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.db.ids import uuid7
from segments_shared.db.models import (
    Customer,
    DestinationSegment,
    MetricsDirtySegment,
    Segment,
    SegmentHistory,
    SegmentKpis,
    SegmentMember,
)
from segments_shared.db.types import AnyRow

_delivery = (
    select(
        func.coalesce(
            func.json_agg(
                func.json_build_object(
                    "destination_id",
                    DestinationSegment.destination_id,
                    "state",
                    DestinationSegment.state,
                    "last_synced_at",
                    DestinationSegment.last_synced_at,
                )
            ),
            text("'[]'::json"),
        )
    )
    .where(DestinationSegment.segment_id == Segment.id)
    .scalar_subquery()
    .label("delivery")
)

# KPIs are stale while a change is not folded in, and before the first computation.
_stale = or_(MetricsDirtySegment.segment_id.is_not(None), SegmentKpis.segment_id.is_(None)).label(
    "stale"
)

SEGMENT_VIEW = (
    select(
        Segment.__table__,
        SegmentKpis.customers,
        SegmentKpis.reachable_customers,
        SegmentKpis.total_revenue,
        SegmentKpis.total_orders,
        SegmentKpis.average_order_value,
        SegmentKpis.customer_lifetime_value,
        SegmentKpis.order_latency_days,
        SegmentKpis.computed_at,
        _stale,
        _delivery,
    )
    .outerjoin(SegmentKpis, SegmentKpis.segment_id == Segment.id)
    .outerjoin(MetricsDirtySegment, MetricsDirtySegment.segment_id == Segment.id)
)


# The same view as SEGMENT_VIEW, as plain SQL for the hottest read (one prepared statement).
_VIEW_BY_ID = """
    SELECT s.id, s.name, s.description, s.kind, s.definition, s.active, s.status,
           s.member_count, s.membership_version, s.version, s.created_at, s.updated_at,
           k.customers, k.reachable_customers, k.total_revenue, k.total_orders,
           k.average_order_value, k.customer_lifetime_value, k.order_latency_days,
           k.computed_at,
           (d.segment_id IS NOT NULL OR k.segment_id IS NULL) AS stale,
           coalesce((
               SELECT json_agg(json_build_object(
                   'destination_id', ds.destination_id, 'state', ds.state,
                   'last_synced_at', ds.last_synced_at) ORDER BY ds.created_at)
               FROM destination_segments ds WHERE ds.segment_id = s.id
           ), '[]'::json) AS delivery
    FROM segments s
    LEFT JOIN segment_kpis k ON k.segment_id = s.id
    LEFT JOIN metrics_dirty_segments d ON d.segment_id = s.id
    WHERE s.id = $1
"""


async def get_view(conn: AsyncConnection, segment_id: uuid.UUID) -> Mapping[str, Any] | None:
    driver = await driver_connection(conn)
    row: Mapping[str, Any] | None = await driver.fetchrow(_VIEW_BY_ID, segment_id)
    return row


async def list_views(
    conn: AsyncConnection,
    *,
    kind: str | None,
    status: str | None,
    active: bool | None,
    q: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AnyRow]:
    statement = SEGMENT_VIEW
    if kind is not None:
        statement = statement.where(Segment.kind == kind)
    if status == "inactive":
        statement = statement.where(Segment.active.is_(False))
    elif status is not None:
        statement = statement.where(Segment.active.is_(True), Segment.status == status)
    if active is not None:
        statement = statement.where(Segment.active.is_(active))
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(Segment.name.ilike(pattern, escape="\\"))
    if after is not None:
        statement = statement.where(
            tuple_(Segment.created_at, Segment.id) > tuple_(literal(after[0]), literal(after[1]))
        )
    statement = statement.order_by(Segment.created_at, Segment.id).limit(limit + 1)
    return list((await conn.execute(statement)).all())


async def insert_segment(conn: AsyncConnection, values: dict[str, Any]) -> uuid.UUID | None:
    """None when the name is taken (names are unique case-insensitively)."""
    statement = (
        insert(Segment)
        .values(id=uuid7(), **values)
        .on_conflict_do_nothing(index_elements=[func.lower(Segment.name)])
        .returning(Segment.id)
    )
    return (await conn.execute(statement)).scalar_one_or_none()


async def lock(conn: AsyncConnection, segment_id: uuid.UUID) -> AnyRow | None:
    """The segment row, locked against concurrent membership changes. NO KEY UPDATE leaves
    foreign-key checks of other tables (syncs, members) unblocked."""
    statement = (
        select(Segment.__table__).where(Segment.id == segment_id).with_for_update(key_share=True)
    )
    return (await conn.execute(statement)).first()


_ADD_BY_EXTERNAL_ID = text(
    """
    WITH input AS (
        SELECT value, min(position) AS position
        FROM unnest(CAST(:values AS text[])) WITH ORDINALITY AS t(value, position)
        GROUP BY value
    ),
    found AS (
        SELECT c.id, i.value FROM customers c JOIN input i ON c.external_id = i.value
    ),
    added AS (
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT :segment_id, id FROM found ORDER BY id
        ON CONFLICT DO NOTHING
        RETURNING customer_id
    )
    SELECT (SELECT count(*) FROM added) AS changed,
           (SELECT count(DISTINCT id) FROM found) AS found,
           ARRAY(SELECT value FROM input i
                 WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.value = i.value)
                 ORDER BY position) AS not_found
    """
)

_REMOVE_BY_EXTERNAL_ID = text(
    """
    WITH input AS (
        SELECT value, min(position) AS position
        FROM unnest(CAST(:values AS text[])) WITH ORDINALITY AS t(value, position)
        GROUP BY value
    ),
    found AS (
        SELECT c.id, i.value FROM customers c JOIN input i ON c.external_id = i.value
    ),
    removed AS (
        DELETE FROM segment_members m USING found f
        WHERE m.segment_id = :segment_id AND m.customer_id = f.id
        RETURNING m.customer_id
    )
    SELECT (SELECT count(*) FROM removed) AS changed,
           (SELECT count(DISTINCT id) FROM found) AS found,
           ARRAY(SELECT value FROM input i
                 WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.value = i.value)
                 ORDER BY position) AS not_found
    """
)


def _by_email(statement: str) -> str:
    """The same statement matching customers by email: an email names every customer with it."""
    return statement.replace("c.external_id = i.value", "c.email = i.value")


def _overriding(statement: str, mode: str) -> str:
    """The same statement also recording the customers as explicit includes or excludes of
    a rule segment, which win over its rule from now on."""
    override = f"""
    overridden AS (
        INSERT INTO segment_overrides (segment_id, customer_id, mode)
        SELECT :segment_id, id, '{mode}' FROM (SELECT DISTINCT id FROM found) f ORDER BY id
        ON CONFLICT (segment_id, customer_id) DO UPDATE
        SET mode = excluded.mode, created_at = now()
    ),"""
    return statement.replace("    added AS (", override + "\n    added AS (").replace(
        "    removed AS (", override + "\n    removed AS ("
    )


_ADD_BY_EMAIL = text(_by_email(_ADD_BY_EXTERNAL_ID.text))
_REMOVE_BY_EMAIL = text(_by_email(_REMOVE_BY_EXTERNAL_ID.text))
_STATEMENTS = {
    # (add, by email, rule segment)
    (add, by_email, rule): text(
        _overriding(template, "include" if add else "exclude") if rule else template
    )
    for add in (True, False)
    for by_email in (True, False)
    for rule in (True, False)
    for template in [
        (_ADD_BY_EMAIL if by_email else _ADD_BY_EXTERNAL_ID).text
        if add
        else (_REMOVE_BY_EMAIL if by_email else _REMOVE_BY_EXTERNAL_ID).text
    ]
}
# Set-based membership inserts hold this lock shared (see rules/repository.py).
LOCK_MEMBER_INSERTS = text(
    "SELECT pg_advisory_xact_lock_shared(hashtext('segment_members.insert'))"
)


async def change_members(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    add: bool,
    external_ids: list[str] | None,
    emails: list[str] | None,
    rule: bool = False,
) -> AnyRow:
    """Add or remove members; on a rule segment also record them as explicit includes or
    excludes. Returns (changed, found, not_found)."""
    statement = _STATEMENTS[(add, external_ids is None, rule)]
    values = external_ids if external_ids is not None else emails or []
    if add:
        await conn.execute(LOCK_MEMBER_INSERTS)
    result = await conn.execute(statement, {"segment_id": segment_id, "values": values})
    return result.one()


async def drop_overrides(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """A segment that is manual now keeps its members and forgets its rule's overrides."""
    await conn.execute(
        text("DELETE FROM segment_overrides WHERE segment_id = :s"), {"s": segment_id}
    )


async def record_membership_change(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    entered: int,
    exited: int,
    cause: str,
    correlation_id: str | None,
) -> AnyRow:
    """Bump the count and version of a membership change and keep it in the history."""
    row = (
        await conn.execute(
            update(Segment)
            .where(Segment.id == segment_id)
            .values(
                member_count=Segment.member_count + entered - exited,
                membership_version=Segment.membership_version + 1,
            )
            .returning(Segment.membership_version, Segment.member_count)
        )
    ).one()
    await conn.execute(
        insert(SegmentHistory).values(
            segment_id=segment_id,
            membership_version=row.membership_version,
            entered=entered,
            exited=exited,
            member_count=row.member_count,
            cause=cause,
            correlation_id=correlation_id,
        )
    )
    return row


async def list_members(
    conn: AsyncConnection, segment_id: uuid.UUID, after: int | None, limit: int
) -> list[AnyRow]:
    statement = (
        select(
            SegmentMember.customer_id,
            Customer.external_id,
            Customer.email,
            Customer.first_name,
            Customer.last_name,
            Customer.email_status,
            SegmentMember.added_at,
        )
        .join(Customer, Customer.id == SegmentMember.customer_id)
        .where(
            and_(
                SegmentMember.segment_id == segment_id,
                SegmentMember.customer_id > (after if after is not None else 0),
            )
        )
        .order_by(SegmentMember.customer_id)
        .limit(limit + 1)
    )
    return list((await conn.execute(statement)).all())


async def exists(conn: AsyncConnection, segment_id: uuid.UUID) -> bool:
    statement = select(Segment.id).where(Segment.id == segment_id)
    return (await conn.execute(statement)).first() is not None


_UPDATE = """
    UPDATE segments SET
        name = coalesce($2, name),
        description = CASE WHEN $3 THEN $4 ELSE description END,
        definition = coalesce($5::jsonb, definition),
        kind = coalesce($6, kind),
        active = coalesce($7, active),
        version = version + 1,
        updated_at = now()
    WHERE id = $1
    RETURNING id, name, version
"""


class NameTaken(Exception):
    pass


async def update_segment(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    name: str | None = None,
    description: tuple[str | None] | None = None,
    definition: dict[str, Any] | None = None,
    kind: str | None = None,
    active: bool | None = None,
) -> Mapping[str, Any]:
    """A user edit: the given fields change and `version` moves on. `description` is a
    1-tuple so that clearing it (None) differs from leaving it alone."""
    driver = await driver_connection(conn)
    try:
        async with driver.transaction():  # a savepoint: a taken name must not abort the caller
            row: Mapping[str, Any] = await driver.fetchrow(
                _UPDATE,
                segment_id,
                name,
                description is not None,
                description[0] if description is not None else None,
                json.dumps(definition) if definition is not None else None,
                kind,
                active,
            )
    except asyncpg.UniqueViolationError as exc:
        raise NameTaken(name) from exc
    return row


async def delete_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    driver = await driver_connection(conn)
    await driver.execute("DELETE FROM segments WHERE id = $1", segment_id)


async def insert_copy(
    conn: AsyncConnection, source: Mapping[str, Any], names: list[str]
) -> uuid.UUID | None:
    """A user segment with the source's definition, under the first free name of `names`."""
    for name in names:
        segment_id = await insert_segment(
            conn,
            {
                "name": name,
                "description": source["description"],
                "kind": "user",
                "definition": source["definition"],
            },
        )
        if segment_id is not None:
            return segment_id
    return None


_COPY_MEMBERS = """
    WITH copied AS (
        INSERT INTO segment_members (segment_id, customer_id)
        SELECT $2, customer_id FROM segment_members WHERE segment_id = $1
        RETURNING 1
    )
    SELECT count(*) FROM copied
"""
_COPY_OVERRIDES = """
    INSERT INTO segment_overrides (segment_id, customer_id, mode)
    SELECT $2, customer_id, mode FROM segment_overrides WHERE segment_id = $1
"""


async def copy_members(conn: AsyncConnection, source: uuid.UUID, target: uuid.UUID) -> int:
    driver = await driver_connection(conn)
    await driver.execute(_COPY_OVERRIDES, source, target)
    await conn.execute(LOCK_MEMBER_INSERTS)
    copied: int = await driver.fetchval(_COPY_MEMBERS, source, target)
    return copied


async def taken_names(conn: AsyncConnection, prefix: str) -> set[str]:
    """Lower-cased names starting with `prefix` (case-insensitive)."""
    pattern = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    driver = await driver_connection(conn)
    rows = await driver.fetch(
        "SELECT lower(name) AS name FROM segments WHERE lower(name) LIKE $1", pattern
    )
    return {row["name"] for row in rows}


_HISTORY = """
    SELECT id, membership_version, entered, exited, member_count, cause, correlation_id,
           occurred_at
    FROM segment_history
    WHERE segment_id = $1 AND id < $2
    ORDER BY id DESC
    LIMIT $3
"""


async def history(
    conn: AsyncConnection, segment_id: uuid.UUID, before: int, limit: int
) -> list[Mapping[str, Any]]:
    driver = await driver_connection(conn)
    rows: list[Mapping[str, Any]] = await driver.fetch(_HISTORY, segment_id, before, limit)
    return rows
