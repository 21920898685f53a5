from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import Customer, Order
from segments_shared.db.types import AnyRow

CREATED: ColumnElement[bool] = literal_column("orders.xmax = 0").label("created")
RETURNED = (
    Order.external_id,
    Order.customer_id,
    Order.total,
    Order.currency,
    Order.placed_at,
    Order.status,
    Order.created_at,
    Order.updated_at,
)


async def lock(conn: AsyncConnection, external_id: str) -> AnyRow | None:
    statement = select(Order.id, Order.customer_id).where(Order.external_id == external_id)
    return (await conn.execute(statement.with_for_update())).first()


async def upsert(
    conn: AsyncConnection, external_id: str, fields: dict[str, Any]
) -> tuple[AnyRow, bool]:
    statement = insert(Order).values(external_id=external_id, **fields)
    updates: dict[str, Any] = {name: statement.excluded[name] for name in fields}
    updates["updated_at"] = func.now()
    upsert_statement = statement.on_conflict_do_update(
        index_elements=[Order.external_id], set_=updates
    ).returning(*RETURNED, CREATED)
    row = (await conn.execute(upsert_statement)).one()
    return row, bool(row.created)


async def get(conn: AsyncConnection, external_id: str) -> AnyRow | None:
    statement = (
        select(*RETURNED, Customer.external_id.label("customer_external_id"))
        .join(Customer, Customer.id == Order.customer_id)
        .where(Order.external_id == external_id)
    )
    return (await conn.execute(statement)).first()
