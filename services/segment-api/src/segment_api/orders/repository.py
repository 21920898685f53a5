from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Customer, Order
from segments_shared.db.types import AnyRow

# Upserted columns, in the order of the statements' parameters.
COLUMNS = ("customer_id", "total", "currency", "placed_at", "status")

_LOCK = """
    SELECT external_id, customer_id FROM orders
    WHERE external_id = ANY($1::text[])
    ORDER BY external_id
    FOR UPDATE
"""
# KEY SHARE: an erasure (which deletes the customer) waits for this transaction, or this one
# waits for the erasure and then no longer finds the customer. Either way the order never
# points at a customer that is gone (no foreign-key violation, a 422 instead).
_LOCK_CUSTOMERS = """
    SELECT external_id, id FROM customers
    WHERE external_id = ANY($1::text[])
    ORDER BY id
    FOR KEY SHARE
"""
_INSERT = """
    INSERT INTO orders (external_id, customer_id, total, currency, placed_at, status)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::text[],
                         $5::timestamptz[], $6::text[])
    -- In one order (as _LOCK's), or two calls creating the same orders deadlock.
    ORDER BY 1
    ON CONFLICT (external_id) DO NOTHING
    RETURNING *
"""
_UPDATE = """
    UPDATE orders o SET
        customer_id = CASE WHEN u.m_customer_id THEN u.customer_id ELSE o.customer_id END,
        total = CASE WHEN u.m_total THEN u.total ELSE o.total END,
        currency = CASE WHEN u.m_currency THEN u.currency ELSE o.currency END,
        placed_at = CASE WHEN u.m_placed_at THEN u.placed_at ELSE o.placed_at END,
        status = CASE WHEN u.m_status THEN u.status ELSE o.status END,
        updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::text[], $5::timestamptz[],
                $6::text[], $7::bool[], $8::bool[], $9::bool[], $10::bool[], $11::bool[])
         AS u(external_id, customer_id, total, currency, placed_at, status,
              m_customer_id, m_total, m_currency, m_placed_at, m_status)
    WHERE o.external_id = u.external_id AND o.external_id <> ALL($12::text[])
    RETURNING o.*
"""
_CUSTOMER_EXTERNAL_IDS = "SELECT id, external_id FROM customers WHERE id = ANY($1::bigint[])"


async def lock(conn: AsyncConnection, external_ids: list[str]) -> dict[str, int]:
    """Existing orders (locked until the transaction ends) and their customers."""
    driver = await driver_connection(conn)
    rows = await driver.fetch(_LOCK, external_ids)
    return {row["external_id"]: row["customer_id"] for row in rows}


async def lock_customers(conn: AsyncConnection, external_ids: list[str]) -> dict[str, int]:
    """The customers' ids, kept from being erased until the transaction ends."""
    driver = await driver_connection(conn)
    rows = await driver.fetch(_LOCK_CUSTOMERS, external_ids)
    return {row["external_id"]: row["id"] for row in rows}


async def upsert_many(
    conn: AsyncConnection, items: Sequence[tuple[str, Mapping[str, Any]]], existing: set[str]
) -> tuple[set[str], dict[str, asyncpg.Record]]:
    """Insert new orders and update existing ones (given fields only).

    Only orders that did not exist go through the INSERT: NOT NULL is checked before ON
    CONFLICT, so a partial update cannot. One created meanwhile by another request is then
    updated instead. Returns the external ids created and each order as stored now.
    """
    driver = await driver_connection(conn)
    keys = [external_id for external_id, _ in items]
    columns = [[fields.get(name) for _, fields in items] for name in COLUMNS]
    new = [index for index, key in enumerate(keys) if key not in existing]
    inserted = await driver.fetch(
        _INSERT, [keys[i] for i in new], *([column[i] for i in new] for column in columns)
    )
    created = {row["external_id"] for row in inserted}
    stored = {row["external_id"]: row for row in inserted}
    if len(created) == len(keys):
        return created, stored
    # Orders another call created since the caller's lock: locked in the same order before
    # the update, which would take them in this body's order (a deadlock between two calls).
    meanwhile = [keys[i] for i in new if keys[i] not in created]
    if meanwhile:
        await driver.fetch(_LOCK, meanwhile)
    masks = [[name in fields for _, fields in items] for name in COLUMNS]
    updated = await driver.fetch(_UPDATE, keys, *columns, *masks, list(created))
    stored.update((row["external_id"], row) for row in updated)
    return created, stored


async def customer_external_ids(conn: AsyncConnection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    driver = await driver_connection(conn)
    rows = await driver.fetch(_CUSTOMER_EXTERNAL_IDS, list(ids))
    return {row["id"]: row["external_id"] for row in rows}


async def get(conn: AsyncConnection, external_id: str) -> AnyRow | None:
    statement = (
        select(
            Order.external_id,
            Order.total,
            Order.currency,
            Order.placed_at,
            Order.status,
            Order.created_at,
            Order.updated_at,
            Customer.external_id.label("customer_external_id"),
        )
        .join(Customer, Customer.id == Order.customer_id)
        .where(Order.external_id == external_id)
    )
    return (await conn.execute(statement)).first()
