import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.changes import INSERT_EVENT, INSERT_METRICS_CHANGE, INSERT_REFRESH_SIGNAL
from segments_shared.db.engine import driver_connection
from segments_shared.db.models import Customer
from segments_shared.observability import current_correlation_id

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

# The customer's RFM scores (docs/rules.md#rfm-scores), null without a placed order; recency
# counts whole days up to now, so it is computed at read time from the stored last order.
_RFM = """
    (SELECT json_build_object(
        'recency_days', floor(extract(epoch FROM now() - r.last_order_at) / 86400)::int,
        'frequency', r.frequency,
        'monetary', r.monetary::text,
        'recency_score', r.recency_score,
        'frequency_score', r.frequency_score,
        'monetary_score', r.monetary_score,
        'score', concat(r.recency_score, r.frequency_score, r.monetary_score))
     FROM customer_rfm r WHERE r.customer_id = c.id) AS rfm
"""
RETURNED = f"""
    c.id, c.external_id, c.email, c.first_name, c.last_name, c.email_status, c.attributes,
    c.shipping_address, c.billing_address, c.created_at, c.updated_at, {_RFM}
"""

_SELECT = f"SELECT {RETURNED} FROM customers c WHERE c.external_id = $1"

# A whole PUT in one statement (autocommit: atomic by itself, one round trip instead of
# BEGIN, lock, upsert, event, signal, COMMIT). The INSERT reads `before` first, so the row
# is locked and its stored reachability read before the upsert changes it. `$9` says which
# fields the update touches (fields left out keep their stored values); xmax is 0 on a row
# an INSERT created. Its consequences are those `segments_shared.changes` writes for a
# customer change: the KPIs' change when the email or its status changed (with the request's
# correlation id, $13), the rules' signal, the event.
_PUT = f"""
    WITH before AS MATERIALIZED (
        SELECT email, email_status FROM customers WHERE external_id = $1 FOR UPDATE
    ),
    upserted AS (
        INSERT INTO customers AS c
            (external_id, email, first_name, last_name, email_status, attributes,
             shipping_address, billing_address)
        SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::jsonb, $7::jsonb,
               $8::jsonb
        FROM (VALUES (1)) AS one LEFT JOIN before ON true
        ON CONFLICT (external_id) DO UPDATE SET
            email = CASE WHEN ($9::bool[])[1] THEN EXCLUDED.email ELSE c.email END,
            first_name =
                CASE WHEN ($9::bool[])[2] THEN EXCLUDED.first_name ELSE c.first_name END,
            last_name = CASE WHEN ($9::bool[])[3] THEN EXCLUDED.last_name ELSE c.last_name END,
            email_status =
                CASE WHEN ($9::bool[])[4] THEN EXCLUDED.email_status ELSE c.email_status END,
            attributes =
                CASE WHEN ($9::bool[])[5] THEN EXCLUDED.attributes ELSE c.attributes END,
            shipping_address = CASE WHEN ($9::bool[])[6]
                THEN EXCLUDED.shipping_address ELSE c.shipping_address END,
            billing_address = CASE WHEN ($9::bool[])[7]
                THEN EXCLUDED.billing_address ELSE c.billing_address END,
            updated_at = now()
        RETURNING {RETURNED}, (xmax = 0) AS created
    ),
    reach AS (
        {INSERT_METRICS_CHANGE}
        SELECT NULL, ARRAY[u.id], NULL, NULL, false, $13::text
        FROM upserted u JOIN before b
          ON (b.email, b.email_status) IS DISTINCT FROM (u.email, u.email_status)
    ),
    event AS (
        {INSERT_EVENT} VALUES ($10::uuid, $11::text, $12::jsonb)
    ),
    signal AS (
        {INSERT_REFRESH_SIGNAL} SELECT 'customers', NULL, ARRAY[u.id] FROM upserted u
    )
    SELECT * FROM upserted
"""


async def get(conn: AsyncConnection, external_id: str) -> Mapping[str, Any] | None:
    driver = await driver_connection(conn)
    row: Mapping[str, Any] | None = await driver.fetchrow(_SELECT, external_id)
    return row


def _parameter(name: str, value: Any) -> Any:
    if name in JSON_FIELDS and value is not None:
        return json.dumps(value)
    return value


async def put(
    conn: AsyncConnection,
    external_id: str,
    fields: Mapping[str, Any],
    event: tuple[str, str, str],
) -> tuple[Mapping[str, Any], bool]:
    """Insert or update one customer, only the given fields, with the consequences (stale
    KPIs, the event, the rule signal) in one statement: `conn` needs no transaction. True
    when created. `event` is the event's id, type and JSON."""
    values = [
        _parameter(name, fields[name] if name in fields else INSERT_DEFAULTS.get(name))
        for name in FIELDS
    ]
    mask = [name in fields for name in FIELDS]
    driver = await driver_connection(conn)
    row: Mapping[str, Any] = await driver.fetchrow(
        _PUT, external_id, *values, mask, *event, current_correlation_id()
    )
    return row, bool(row["created"])


async def ids_by_external_id(conn: AsyncConnection, external_ids: list[str]) -> dict[str, int]:
    rows = await conn.execute(
        select(Customer.external_id, Customer.id).where(Customer.external_id.in_(external_ids))
    )
    return {row.external_id: row.id for row in rows}


_LOCK_MANY = """
    SELECT id, external_id, email, email_status FROM customers
    WHERE external_id = ANY($1::text[])
    ORDER BY external_id
    FOR UPDATE
"""
# The batch arrives as the validated body's JSON (one parameter): PostgreSQL unpacks it in C,
# where binding a dozen arrays of 10,000 values costs more in the driver than the statement.
# A key present in an item is a field given (`?`), as `exclude_unset` dumped it.
_ITEMS = "jsonb_array_elements(CAST($1 AS jsonb) -> 'customers') AS t(i)"
_INSERT_MANY = f"""
    INSERT INTO customers
        (external_id, email, first_name, last_name, email_status, attributes,
         shipping_address, billing_address)
    SELECT i->>'external_id', i->>'email', i->>'first_name', i->>'last_name',
           coalesce(i->>'email_status', 'pending'), coalesce(i->'attributes', '{{}}'),
           jsonb_strip_nulls(nullif(i->'shipping_address', 'null')),
           jsonb_strip_nulls(nullif(i->'billing_address', 'null'))
    FROM {_ITEMS}
    -- In one order (as _LOCK_MANY's): two calls creating the same customers in different
    -- orders would each wait for a row the other inserted first, a deadlock.
    ORDER BY i->>'external_id'
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id, external_id
"""
_UPDATE_MANY = f"""
    UPDATE customers c SET
        email = CASE WHEN i ? 'email' THEN i->>'email' ELSE c.email END,
        first_name = CASE WHEN i ? 'first_name' THEN i->>'first_name' ELSE c.first_name END,
        last_name = CASE WHEN i ? 'last_name' THEN i->>'last_name' ELSE c.last_name END,
        email_status =
            CASE WHEN i ? 'email_status' THEN i->>'email_status' ELSE c.email_status END,
        attributes = CASE WHEN i ? 'attributes' THEN i->'attributes' ELSE c.attributes END,
        shipping_address = CASE WHEN i ? 'shipping_address'
            THEN jsonb_strip_nulls(nullif(i->'shipping_address', 'null'))
            ELSE c.shipping_address END,
        billing_address = CASE WHEN i ? 'billing_address'
            THEN jsonb_strip_nulls(nullif(i->'billing_address', 'null'))
            ELSE c.billing_address END,
        updated_at = now()
    FROM {_ITEMS}
    WHERE c.external_id = i->>'external_id' AND c.external_id <> ALL($2::text[])
    RETURNING c.id, c.email, c.email_status
"""


@dataclass(frozen=True)
class Upserted:
    created: int
    # Every customer of the call, and those whose email or email status changed.
    ids: list[int]
    reach_changed: list[int]


async def upsert_many(conn: AsyncConnection, external_ids: list[str], body_json: str) -> Upserted:
    """Upsert customers in three set-based statements; each item's given fields only.
    `body_json` is the validated bulk body dumped with `exclude_unset`."""
    driver = await driver_connection(conn)
    # Locking in one order keeps concurrent bulk calls from deadlocking.
    locked = list(await driver.fetch(_LOCK_MANY, external_ids))
    inserted = await driver.fetch(_INSERT_MANY, body_json)
    created = [row["external_id"] for row in inserted]
    # Customers another call created since the lock above: locked in the same order before
    # the update, which would take them in this body's order.
    seen = {row["external_id"] for row in locked}.union(created)
    meanwhile = [external_id for external_id in external_ids if external_id not in seen]
    if meanwhile:
        locked += await driver.fetch(_LOCK_MANY, meanwhile)
    before = {row["id"]: (row["email"], row["email_status"]) for row in locked}
    # Nothing to update when every row is one this call created.
    existing = len(created) < len(external_ids)
    updated = await driver.fetch(_UPDATE_MANY, body_json, created) if existing else []
    changed = [
        row["id"]
        for row in updated
        if row["id"] in before and before[row["id"]] != (row["email"], row["email_status"])
    ]
    ids = [row["id"] for row in inserted] + [row["id"] for row in updated]
    return Upserted(len(created), ids, changed)


_LIST = f"""
    SELECT {RETURNED} FROM customers c
    WHERE ($1::text IS NULL OR c.email = $1) AND c.id > $2
    ORDER BY c.id
    LIMIT $3
"""


async def list_customers(
    conn: AsyncConnection, email: str | None, after: int, limit: int
) -> list[Mapping[str, Any]]:
    driver = await driver_connection(conn)
    rows: list[Mapping[str, Any]] = await driver.fetch(_LIST, email, after, limit)
    return rows


_CUSTOMER_ID = "SELECT id FROM customers WHERE external_id = $1"
# The customer's memberships through ix_segment_members_customer_id (a customer is in few
# segments; sorting them is cheap), each segment's row by its key.
_SEGMENTS_OF = """
    SELECT m.segment_id, s.name, s.kind, m.added_at,
        CASE
            WHEN s.definition->>'type' IS DISTINCT FROM 'rule' THEN 'manual'
            WHEN EXISTS (
                SELECT 1 FROM segment_overrides o
                WHERE o.segment_id = m.segment_id AND o.customer_id = m.customer_id
                  AND o.mode = 'include'
            ) THEN 'include'
            ELSE 'rule'
        END AS via
    FROM segment_members m JOIN segments s ON s.id = m.segment_id
    WHERE m.customer_id = $1 AND ($2::uuid IS NULL OR m.segment_id > $2)
    ORDER BY m.segment_id
    LIMIT $3
"""


async def customer_id(conn: AsyncConnection, external_id: str) -> int | None:
    driver = await driver_connection(conn)
    found: int | None = await driver.fetchval(_CUSTOMER_ID, external_id)
    return found


async def segments_of(
    conn: AsyncConnection, customer: int, after: uuid.UUID | None, limit: int
) -> list[Mapping[str, Any]]:
    """The segments the customer is in, by segment id, after `after`."""
    driver = await driver_connection(conn)
    rows: list[Mapping[str, Any]] = await driver.fetch(_SEGMENTS_OF, customer, after, limit)
    return rows


_ERASE_MEMBERSHIPS = """
    DELETE FROM segment_members WHERE customer_id = $1 RETURNING segment_id
"""
_ERASE = "DELETE FROM customers WHERE id = $1"
# No cascade there: the metrics-worker rewrites that table set-wise, without foreign keys.
_ERASE_RFM = "DELETE FROM customer_rfm WHERE customer_id = $1"


async def lock_for_erasure(conn: AsyncConnection, external_id: str) -> int | None:
    driver = await driver_connection(conn)
    customer_id: int | None = await driver.fetchval(
        "SELECT id FROM customers WHERE external_id = $1 FOR UPDATE", external_id
    )
    return customer_id


async def delete_memberships(conn: AsyncConnection, customer_id: int) -> list[Any]:
    """The segments the customer left, in a stable order; the caller locked them."""
    driver = await driver_connection(conn)
    rows = await driver.fetch(_ERASE_MEMBERSHIPS, customer_id)
    return sorted({row["segment_id"] for row in rows})


async def delete_customer(conn: AsyncConnection, customer_id: int) -> None:
    """The customer, their orders and explicit segment overrides (cascades), their RFM scores."""
    driver = await driver_connection(conn)
    await driver.execute(_ERASE_RFM, customer_id)
    await driver.execute(_ERASE, customer_id)
