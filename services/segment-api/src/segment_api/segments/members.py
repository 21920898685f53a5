"""Memberships of one segment: adding and removing members by external id or email (with
a rule segment's includes and excludes), listing them, copying them. The caller holds the
segment's lock (segments/locks.py)."""

import uuid
from functools import cache
from typing import Literal

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    distinct,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.segments import locks
from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Customer, SegmentMember, SegmentOverride
from segments_shared.db.types import AnyRow


@cache
def _membership_statement(
    add: bool, by: Literal["external_id", "email"], override: bool
) -> Select[int, list[int], int, list[str]]:
    """Add or remove the customers named by `:values` (external ids, or emails: an email
    names every customer with it) to or from segment `:segment_id`. With `override` they
    are also recorded as explicit includes or excludes of a rule segment, which win over
    its rule from now on. One row: changed (and their ids), found, not_found (in input
    order)."""
    segment_id = bindparam("segment_id", type_=SegmentMember.segment_id.type)
    given = (
        func.unnest(bindparam("values", type_=ARRAY(Text)))
        .table_valued("value", with_ordinality="position")
        .render_derived("t")
    )
    # Each value once, at its first position.
    input_ = (
        select(given.c.value, func.min(given.c.position).label("position"))
        .group_by(given.c.value)
        .cte("input")
    )
    key = Customer.external_id if by == "external_id" else Customer.email
    found = select(Customer.id, input_.c.value).join(input_, key == input_.c.value).cte("found")
    if add:
        change = (
            insert(SegmentMember)
            .from_select(
                ["segment_id", "customer_id"],
                select(segment_id, found.c.id).order_by(found.c.id),
            )
            .on_conflict_do_nothing()
            .returning(SegmentMember.customer_id)
            .cte("added")
        )
    else:
        change = (
            delete(SegmentMember)
            .where(SegmentMember.segment_id == segment_id, SegmentMember.customer_id == found.c.id)
            .returning(SegmentMember.customer_id)
            .cte("removed")
        )
    not_found = (
        select(input_.c.value)
        .where(~select(found.c.id).where(found.c.value == input_.c.value).exists())
        .order_by(input_.c.position)
    )
    statement = select(
        select(func.count()).select_from(change).scalar_subquery().label("changed"),
        func.array(select(change.c.customer_id).scalar_subquery(), type_=ARRAY(BigInteger)).label(
            "changed_ids"
        ),
        select(func.count(distinct(found.c.id))).scalar_subquery().label("found"),
        func.array(not_found.scalar_subquery(), type_=ARRAY(Text)).label("not_found"),
    )
    if not override:
        return statement
    ids = select(found.c.id).distinct().subquery("f")
    upsert = insert(SegmentOverride).from_select(
        ["segment_id", "customer_id", "mode"],
        select(segment_id, ids.c.id, literal("include" if add else "exclude", Text)).order_by(
            ids.c.id
        ),
    )
    overridden = upsert.on_conflict_do_update(
        index_elements=[SegmentOverride.segment_id, SegmentOverride.customer_id],
        set_={"mode": upsert.excluded.mode, "created_at": func.now()},
    ).cte("overridden")
    # Nothing reads it: add_cte renders it all the same (PostgreSQL runs every data-modifying
    # CTE).
    return statement.add_cte(overridden)


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
    excludes. Returns (changed, changed_ids, found, not_found); the caller holds the
    segment's lock."""
    statement = _membership_statement(
        add, "external_id" if external_ids is not None else "email", rule
    )
    values = external_ids if external_ids is not None else emails or []
    if add:
        await locks.lock_member_inserts(conn)
    result = await conn.execute(statement, {"segment_id": segment_id, "values": values})
    return result.one()


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
    await locks.lock_member_inserts(conn)
    copied: int = await driver.fetchval(_COPY_MEMBERS, source, target)
    return copied
