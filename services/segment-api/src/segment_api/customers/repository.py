from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import Customer
from segments_shared.db.types import AnyRow

# xmax is 0 on a row version created by an INSERT, not by the ON CONFLICT update.
CREATED: ColumnElement[bool] = literal_column("customers.xmax = 0").label("created")

COLUMNS = (
    Customer.id,
    Customer.external_id,
    Customer.email,
    Customer.first_name,
    Customer.last_name,
    Customer.email_status,
    Customer.attributes,
    Customer.shipping_address,
    Customer.billing_address,
    Customer.created_at,
    Customer.updated_at,
)


async def get(conn: AsyncConnection, external_id: str) -> AnyRow | None:
    return (await conn.execute(select(*COLUMNS).where(Customer.external_id == external_id))).first()


async def lock_reachability(conn: AsyncConnection, external_id: str) -> AnyRow | None:
    """The stored email and status, locked until the transaction ends."""
    statement = (
        select(Customer.id, Customer.email, Customer.email_status)
        .where(Customer.external_id == external_id)
        .with_for_update()
    )
    return (await conn.execute(statement)).first()


async def upsert(
    conn: AsyncConnection, external_id: str, fields: dict[str, Any]
) -> tuple[AnyRow, bool]:
    """Insert or update one customer; only the given fields change. True when created."""
    statement = insert(Customer).values(external_id=external_id, **fields)
    updates: dict[str, Any] = {name: statement.excluded[name] for name in fields}
    updates["updated_at"] = func.now()
    upsert_statement = statement.on_conflict_do_update(
        index_elements=[Customer.external_id], set_=updates
    ).returning(*COLUMNS, CREATED)
    row = (await conn.execute(upsert_statement)).one()
    return row, bool(row.created)


async def ids_by_external_id(conn: AsyncConnection, external_ids: list[str]) -> dict[str, int]:
    rows = await conn.execute(
        select(Customer.external_id, Customer.id).where(Customer.external_id.in_(external_ids))
    )
    return {row.external_id: row.id for row in rows}
