"""Writing test data straight into the database with the consequences segment-api records
(segments_shared/changes.py), so the metrics tests control every figure, and folding it the
way the metrics-worker does."""

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.fold import Folded, kpi_transaction
from metrics_worker.jobs import SOURCE, fold_once
from segments_shared.changes import Changes, recording


async def record(conn: AsyncConnection, what: Callable[[Changes], object]) -> None:
    """Record a change the way segment-api's unit of work does, in the caller's transaction."""
    changes = Changes(conn, "tests")
    what(changes)
    await changes.flush()


async def add_customer(
    conn: AsyncConnection, external_id: str, email: str | None, status: str = "pending"
) -> int:
    result = await conn.execute(
        text(
            "INSERT INTO customers (external_id, email, email_status) VALUES (:x, :e, :s) "
            "RETURNING id"
        ),
        {"x": external_id, "e": email, "s": status},
    )
    return int(result.scalar_one())


async def set_email_status(conn: AsyncConnection, customer_id: int, status: str) -> None:
    await conn.execute(
        text("UPDATE customers SET email_status = :s WHERE id = :id"),
        {"s": status, "id": customer_id},
    )
    await record(conn, lambda changes: changes.customers_changed("reach", [customer_id]))


async def add_order(
    conn: AsyncConnection,
    customer_id: int,
    total: str,
    placed_at: datetime,
    status: str = "placed",
) -> int:
    result = await conn.execute(
        text(
            "INSERT INTO orders (external_id, customer_id, total, currency, placed_at, status) "
            "VALUES (:x, :c, :t, 'USD', :p, :s) RETURNING id"
        ),
        {
            "x": f"o-{uuid.uuid4().hex}",
            "c": customer_id,
            "t": Decimal(total),
            "p": placed_at,
            "s": status,
        },
    )
    await record(conn, lambda changes: changes.customers_changed("orders", [customer_id]))
    return int(result.scalar_one())


async def set_order_status(conn: AsyncConnection, order_id: int, status: str) -> None:
    customer_id = (
        await conn.execute(
            text("UPDATE orders SET status = :s WHERE id = :id RETURNING customer_id"),
            {"s": status, "id": order_id},
        )
    ).scalar_one()
    await record(conn, lambda changes: changes.customers_changed("orders", [customer_id]))


async def add_segment(conn: AsyncConnection, name: str, members: list[int]) -> uuid.UUID:
    segment_id = uuid.uuid4()
    await conn.execute(
        text("INSERT INTO segments (id, name, member_count) VALUES (:id, :n, :c)"),
        {"id": segment_id, "n": name, "c": len(members)},
    )
    if members:
        await conn.execute(
            text(
                "INSERT INTO segment_members (segment_id, customer_id) "
                "SELECT :id, unnest(CAST(:m AS bigint[]))"
            ),
            {"id": segment_id, "m": members},
        )
    await record(conn, lambda changes: changes.segment_created(segment_id))
    return segment_id


async def move_members(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    entered: list[int] | None = None,
    exited: list[int] | None = None,
) -> None:
    """Customers enter and leave a segment, named, as a member edit or a refresh records."""
    entered, exited = entered or [], exited or []
    if entered:
        await conn.execute(
            text(
                "INSERT INTO segment_members (segment_id, customer_id) "
                "SELECT :id, unnest(CAST(:m AS bigint[]))"
            ),
            {"id": segment_id, "m": entered},
        )
    if exited:
        await conn.execute(
            text(
                "DELETE FROM segment_members "
                "WHERE segment_id = :id AND customer_id = ANY(CAST(:m AS bigint[]))"
            ),
            {"id": segment_id, "m": exited},
        )
    changes = Changes(conn, "tests")
    await changes.members_changed(segment_id, entered=entered, exited=exited, cause="tests")
    await changes.flush()


async def erase_customer(conn: AsyncConnection, customer_id: int) -> None:
    """What erasure does to the data the metrics read (segment-api's DELETE
    /v1/customers/{id}, in one transaction): the customer leaves every segment, named, and
    goes with their orders."""
    segments = (
        await conn.execute(
            text("DELETE FROM segment_members WHERE customer_id = :id RETURNING segment_id"),
            {"id": customer_id},
        )
    ).scalars()
    changes = Changes(conn, "tests")
    for segment_id in sorted(set(segments)):
        await changes.members_changed(
            segment_id, entered=0, exited=[customer_id], cause="customer_erased"
        )
    changes.customers_changed("erased", [customer_id])
    await changes.flush()
    await conn.execute(text("DELETE FROM customers WHERE id = :id"), {"id": customer_id})


async def fold_due(engine: AsyncEngine) -> Folded:
    """One fold of every pending change, as the metrics-worker's job runs it."""
    async with kpi_transaction(engine) as conn, recording(conn, SOURCE) as changes:
        return await fold_once(conn, changes)


async def stored_kpis(conn: AsyncConnection, segment_id: uuid.UUID) -> dict[str, object] | None:
    row = (
        await conn.execute(
            text("SELECT * FROM segment_kpis WHERE segment_id = :id"), {"id": segment_id}
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def is_pending(conn: AsyncConnection, segment_id: uuid.UUID) -> bool:
    """A change that concerns the segment is waiting for a fold."""
    result = await conn.execute(
        text("SELECT 1 FROM metrics_changes WHERE segment_id = :id"), {"id": segment_id}
    )
    return result.first() is not None
