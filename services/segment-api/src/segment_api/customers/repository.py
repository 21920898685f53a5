import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Customer

# Upserted fields, in the order of the statement's parameters.
FIELDS = (
    "email",
    "first_name",
    "last_name",
    "email_status",
    "attributes",
    "shipping_address",
    "billing_address",
)
JSON_FIELDS = frozenset({"attributes", "shipping_address", "billing_address"})
INSERT_DEFAULTS: dict[str, Any] = {"email_status": "pending", "attributes": {}}

RETURNED = """
    id, external_id, email, first_name, last_name, email_status, attributes,
    shipping_address, billing_address, created_at, updated_at
"""

_SELECT = f"SELECT {RETURNED} FROM customers WHERE external_id = $1"
_LOCK = "SELECT id, email, email_status FROM customers WHERE external_id = $1 FOR UPDATE"

# One statement whatever fields a request gives: `$9` says which ones the update touches,
# so fields left out keep their stored values. xmax is 0 on a row an INSERT created.
_UPSERT = f"""
    INSERT INTO customers AS c
        (external_id, email, first_name, last_name, email_status, attributes,
         shipping_address, billing_address)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (external_id) DO UPDATE SET
        email = CASE WHEN ($9::bool[])[1] THEN EXCLUDED.email ELSE c.email END,
        first_name = CASE WHEN ($9::bool[])[2] THEN EXCLUDED.first_name ELSE c.first_name END,
        last_name = CASE WHEN ($9::bool[])[3] THEN EXCLUDED.last_name ELSE c.last_name END,
        email_status =
            CASE WHEN ($9::bool[])[4] THEN EXCLUDED.email_status ELSE c.email_status END,
        attributes = CASE WHEN ($9::bool[])[5] THEN EXCLUDED.attributes ELSE c.attributes END,
        shipping_address =
            CASE WHEN ($9::bool[])[6] THEN EXCLUDED.shipping_address ELSE c.shipping_address END,
        billing_address =
            CASE WHEN ($9::bool[])[7] THEN EXCLUDED.billing_address ELSE c.billing_address END,
        updated_at = now()
    RETURNING {RETURNED}, (xmax = 0) AS created
"""


async def get(conn: AsyncConnection, external_id: str) -> Mapping[str, Any] | None:
    driver = await driver_connection(conn)
    row: Mapping[str, Any] | None = await driver.fetchrow(_SELECT, external_id)
    return row


async def lock_reachability(conn: AsyncConnection, external_id: str) -> Mapping[str, Any] | None:
    """The stored email and status, locked until the transaction ends."""
    driver = await driver_connection(conn)
    row: Mapping[str, Any] | None = await driver.fetchrow(_LOCK, external_id)
    return row


def _parameter(name: str, value: Any) -> Any:
    if name in JSON_FIELDS and value is not None:
        return json.dumps(value)
    return value


async def upsert(
    conn: AsyncConnection, external_id: str, fields: Mapping[str, Any]
) -> tuple[Mapping[str, Any], bool]:
    """Insert or update one customer; only the given fields change. True when created."""
    values = [
        _parameter(name, fields[name] if name in fields else INSERT_DEFAULTS.get(name))
        for name in FIELDS
    ]
    mask = [name in fields for name in FIELDS]
    driver = await driver_connection(conn)
    row: Mapping[str, Any] = await driver.fetchrow(_UPSERT, external_id, *values, mask)
    return row, bool(row["created"])


async def ids_by_external_id(conn: AsyncConnection, external_ids: list[str]) -> dict[str, int]:
    rows = await conn.execute(
        select(Customer.external_id, Customer.id).where(Customer.external_id.in_(external_ids))
    )
    return {row.external_id: row.id for row in rows}
