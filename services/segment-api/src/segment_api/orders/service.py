from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.customers.service import duplicate_errors
from segment_api.events import SOURCE
from segment_api.orders import repository
from segment_api.orders.schemas import BulkResult, Order, OrderIn, OrdersBulk
from segment_api.problems import ProblemException
from segments_shared.changes import changes_of
from segments_shared.events import MAX_IDS_PER_EVENT, OrderRecorded, OrderRef, OrdersRecorded

REQUIRED_ON_CREATE = ("customer_external_id", "total", "placed_at")

Pointer = Callable[[int, str], str]


class Upserted(NamedTuple):
    created: set[str]
    # Each order as stored now, read back by the upsert itself.
    stored: Mapping[str, Mapping[str, Any]]
    # Customers' external ids by id.
    names: Mapping[int, str]

    def order(self, external_id: str) -> Order:
        row = self.stored[external_id]
        fields = {name: row[name] for name in Order.model_fields if name != "customer_external_id"}
        return Order(customer_external_id=self.names[row["customer_id"]], **fields)


def _validate(
    items: list[tuple[str, dict[str, Any]]],
    existing: dict[str, int],
    customer_ids: dict[str, int],
    store_currency: str,
    pointer: Pointer,
) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for index, (external_id, given) in enumerate(items):
        for name, value in given.items():
            if value is None:
                errors.append({"pointer": pointer(index, name), "detail": "must not be null"})
        currency = given.get("currency")
        if currency is not None and currency.upper() != store_currency:
            errors.append(
                {
                    "pointer": pointer(index, "currency"),
                    "detail": f"must be the store currency {store_currency}",
                }
            )
        customer = given.get("customer_external_id")
        if customer is not None and customer not in customer_ids:
            errors.append(
                {
                    "pointer": pointer(index, "customer_external_id"),
                    "detail": "no customer has this external id",
                }
            )
        if external_id not in existing:
            errors += [
                {"pointer": pointer(index, name), "detail": "required when creating an order"}
                for name in REQUIRED_ON_CREATE
                if name not in given
            ]
    return errors


def _columns(
    given: dict[str, Any], customer_ids: dict[str, int], is_new: bool, store_currency: str
) -> dict[str, Any]:
    fields = {k: v for k, v in given.items() if k not in ("customer_external_id", "currency")}
    if "customer_external_id" in given:
        fields["customer_id"] = customer_ids[given["customer_external_id"]]
    if "currency" in given:
        fields["currency"] = given["currency"].upper()
    if is_new:
        fields.setdefault("currency", store_currency)
        fields.setdefault("status", "placed")
    return fields


async def upsert_orders(
    conn: AsyncConnection,
    items: list[tuple[str, dict[str, Any]]],
    store_currency: str,
    pointer: Pointer,
) -> Upserted:
    """Validate and upsert orders, all or nothing."""
    keys = [external_id for external_id, _ in items]
    named = {
        given["customer_external_id"] for _, given in items if given.get("customer_external_id")
    }
    customer_ids = await repository.lock_customers(conn, sorted(named)) if named else {}
    existing = await repository.lock(conn, keys)
    errors = _validate(items, existing, customer_ids, store_currency, pointer)
    if errors:
        raise ProblemException(422, errors[0]["detail"], errors=errors)
    rows = [
        (key, _columns(given, customer_ids, key not in existing, store_currency))
        for key, given in items
    ]
    created, stored = await repository.upsert_many(conn, rows, set(existing))
    owners = {key: row["customer_id"] for key, row in stored.items()}
    # Every customer an order belongs to, or belonged to, has other orders now.
    changes = changes_of(conn)
    changes.customers_changed("orders", set(owners.values()) | set(existing.values()))
    # The customers named in the body are known; only the others' external ids are read.
    names = {id_: external_id for external_id, id_ in customer_ids.items()}
    names |= await repository.customer_external_ids(conn, set(owners.values()) - set(names))
    refs = [
        OrderRef(order_external_id=key, customer_external_id=names[owners[key]]) for key in keys
    ]
    batches = [refs[i : i + MAX_IDS_PER_EVENT] for i in range(0, len(refs), MAX_IDS_PER_EVENT)]
    changes.publish(
        *(
            OrderRecorded(
                source=SOURCE,
                subject=batch[0].order_external_id,
                data=OrdersRecorded(orders=batch),
            )
            for batch in batches
        )
    )
    return Upserted(created, stored, names)


async def put_order(
    conn: AsyncConnection, external_id: str, body: OrderIn, store_currency: str
) -> tuple[Order, bool]:
    given = body.model_dump(exclude_unset=True)
    upserted = await upsert_orders(
        conn, [(external_id, given)], store_currency, lambda _index, name: f"/{name}"
    )
    return upserted.order(external_id), external_id in upserted.created


async def bulk_upsert(conn: AsyncConnection, body: OrdersBulk, store_currency: str) -> BulkResult:
    keys = [item.external_id for item in body.orders]
    errors = duplicate_errors(keys, "orders")
    if errors:
        raise ProblemException(422, "external ids repeat within the call", errors=errors)
    items = [
        (item.external_id, item.model_dump(exclude_unset=True, exclude={"external_id"}))
        for item in body.orders
    ]
    created = (
        await upsert_orders(
            conn, items, store_currency, lambda index, name: f"/orders/{index}/{name}"
        )
    ).created
    return BulkResult(created=len(created), updated=len(keys) - len(created))
