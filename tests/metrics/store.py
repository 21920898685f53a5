"""Writing test data straight into the database, the way segment-api does (including the
staleness marks), so the metrics tests control every figure."""

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.recompute import (
    Claim,
    Folding,
    claim_stale_segments,
    recompute_segment_kpis,
)
from segments_shared.staleness import mark_customer_segments_stale, mark_segments_stale

# Due at once: the tests decide when to recompute.
NOW = Folding(debounce=0.0, max_delay=0.0)


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
    await mark_customer_segments_stale(conn, [customer_id])
    return int(result.scalar_one())


async def set_order_status(conn: AsyncConnection, order_id: int, status: str) -> None:
    customer_id = (
        await conn.execute(
            text("UPDATE orders SET status = :s WHERE id = :id RETURNING customer_id"),
            {"s": status, "id": order_id},
        )
    ).scalar_one()
    await mark_customer_segments_stale(conn, [customer_id])


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
    await mark_segments_stale(conn, [segment_id])
    return segment_id


async def erase_customer(conn: AsyncConnection, customer_id: int) -> None:
    """What erasure does to the data the metrics read: mark the customer's segments stale,
    then delete the customer (memberships and orders cascade)."""
    await mark_customer_segments_stale(conn, [customer_id])
    await conn.execute(text("DELETE FROM customers WHERE id = :id"), {"id": customer_id})


async def recompute_due(engine: AsyncEngine, worker: str = "tests") -> list[Claim]:
    """One pass of the KPI worker over every stale segment; returns what it recomputed."""
    claims = await claim_stale_segments(engine, worker, limit=1000, folding=NOW)
    for claim in claims:
        async with engine.begin() as conn:
            await recompute_segment_kpis(conn, claim)
    return claims


async def stored_kpis(conn: AsyncConnection, segment_id: uuid.UUID) -> dict[str, object] | None:
    row = (
        await conn.execute(
            text("SELECT * FROM segment_kpis WHERE segment_id = :id"), {"id": segment_id}
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def is_marked(conn: AsyncConnection, segment_id: uuid.UUID) -> bool:
    result = await conn.execute(
        text("SELECT 1 FROM metrics_dirty_segments WHERE segment_id = :id"), {"id": segment_id}
    )
    return result.first() is not None
