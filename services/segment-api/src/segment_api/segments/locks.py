"""The locks every writer of memberships takes, in one order, so that none deadlock:

1. the segments whose membership it changes (or reads as one), row locks in id order:
   `NO KEY UPDATE` to change a membership, `SHARE` to read it frozen, `KEY SHARE` to keep a
   segment from being deleted;
2. then, when it inserts memberships set-wise, the membership-insert lock, shared.

Deleting a customer takes the membership-insert lock exclusively (the trigger
`customers_leave_segments` of the migrations) before sweeping their memberships: it waits
for set-based inserts in flight, which read only customers that exist, so none can leave a
membership of an erased customer behind (`segment_members` has no foreign keys: their
per-row checks made set-based inserts four times slower). An erasure locks the customer's
segments first (1), in id order, like every other writer.
"""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Segment
from segments_shared.db.types import AnyRow

Mode = Literal["KEY SHARE", "SHARE", "NO KEY UPDATE"]

_MEMBER_INSERTS = text("SELECT pg_advisory_xact_lock_shared(hashtext('segment_members.insert'))")
_SEGMENTS = """
    SELECT id, name, definition, active, member_count FROM segments
    WHERE id = ANY(:ids) ORDER BY id FOR {mode}
"""
_SEGMENTS_OF_CUSTOMER = """
    SELECT id FROM segments
    WHERE id IN (SELECT segment_id FROM segment_members WHERE customer_id = $1)
    ORDER BY id
    FOR NO KEY UPDATE
"""


async def lock_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> AnyRow | None:
    """The segment row, locked against concurrent membership changes (NO KEY UPDATE leaves
    foreign-key checks of other tables unblocked); None if there is none. Through
    SQLAlchemy, so that the transaction has begun."""
    statement = (
        select(Segment.__table__).where(Segment.id == segment_id).with_for_update(key_share=True)
    )
    return (await conn.execute(statement)).first()


async def lock_segments(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], mode: Mode
) -> dict[uuid.UUID, Mapping[str, Any]]:
    """The segments that exist among `ids`, locked in id order."""
    assert mode in ("KEY SHARE", "SHARE", "NO KEY UPDATE")
    statement = text(_SEGMENTS.format(mode=mode))
    rows = (await conn.execute(statement, {"ids": list(ids)})).mappings().all()
    return {row["id"]: dict(row) for row in rows}


async def lock_segments_of_customer(conn: AsyncConnection, customer_id: int) -> None:
    """Every segment holding the customer, in id order (an erasure, before it deletes their
    memberships)."""
    driver = await driver_connection(conn)
    await driver.execute(_SEGMENTS_OF_CUSTOMER, customer_id)


async def lock_member_inserts(conn: AsyncConnection) -> None:
    """Before a set-based membership insert reads the customers it inserts (after the
    segment locks)."""
    await conn.execute(_MEMBER_INSERTS)
