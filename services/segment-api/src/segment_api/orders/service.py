from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.customers import repository as customers
from segment_api.events import SOURCE
from segment_api.orders import repository
from segment_api.orders.schemas import Order, OrderIn
from segment_api.problems import ProblemException
from segments_shared.bus.outbox import add_event
from segments_shared.events import OrderRecorded, OrderRef, OrdersRecorded
from segments_shared.staleness import mark_customer_segments_stale

REQUIRED_ON_CREATE = ("customer_external_id", "total", "placed_at")


async def put_order(
    conn: AsyncConnection, external_id: str, body: OrderIn, store_currency: str
) -> tuple[Order, bool]:
    given = body.model_dump(exclude_unset=True)
    errors: list[dict[str, str]] = []
    for name, value in given.items():
        if value is None:
            errors.append({"pointer": f"/{name}", "detail": "must not be null"})
    currency = given.get("currency")
    if currency is not None and currency.upper() != store_currency:
        errors.append(
            {"pointer": "/currency", "detail": f"must be the store currency {store_currency}"}
        )
    before = await repository.lock(conn, external_id)
    if before is None:
        errors += [
            {"pointer": f"/{name}", "detail": "required when creating an order"}
            for name in REQUIRED_ON_CREATE
            if name not in given
        ]
    fields: dict[str, Any] = {
        key: value for key, value in given.items() if key != "customer_external_id"
    }
    customer_external_id = given.get("customer_external_id")
    if customer_external_id is not None:
        ids = await customers.ids_by_external_id(conn, [customer_external_id])
        if customer_external_id not in ids:
            errors.append(
                {"pointer": "/customer_external_id", "detail": "no customer has this external id"}
            )
        else:
            fields["customer_id"] = ids[customer_external_id]
    if errors:
        raise ProblemException(422, errors[0]["detail"], errors=errors)
    if "currency" in fields:
        fields["currency"] = fields["currency"].upper()
    elif before is None:
        fields["currency"] = store_currency
    if before is None:
        fields.setdefault("status", "placed")
    row, created = await repository.upsert(conn, external_id, fields)
    affected = {row.customer_id} | ({before.customer_id} if before is not None else set())
    await mark_customer_segments_stale(conn, affected)
    stored = await repository.get(conn, external_id)
    assert stored is not None
    await add_event(
        conn,
        OrderRecorded(
            source=SOURCE,
            subject=external_id,
            data=OrdersRecorded(
                orders=[
                    OrderRef(
                        order_external_id=external_id,
                        customer_external_id=stored.customer_external_id,
                    )
                ]
            ),
        ),
    )
    return Order.model_validate(stored, from_attributes=True), created
