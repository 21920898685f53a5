from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.customers import repository
from segment_api.customers.schemas import Customer, CustomerIn
from segment_api.events import SOURCE
from segments_shared.bus.outbox import add_event
from segments_shared.events import CustomerChanged, CustomerIds
from segments_shared.staleness import mark_customer_segments_stale


def to_customer(row: Mapping[str, Any]) -> Customer:
    return Customer.model_validate(dict(row))


def _fields(body: CustomerIn) -> dict[str, Any]:
    """The given fields as column values; addresses keep only their given parts."""
    fields = body.model_dump(exclude_unset=True)
    for name in ("shipping_address", "billing_address"):
        if fields.get(name) is not None:
            fields[name] = {k: v for k, v in fields[name].items() if v is not None}
    return fields


async def put_customer(
    conn: AsyncConnection, external_id: str, body: CustomerIn
) -> tuple[Customer, bool]:
    before = await repository.lock_reachability(conn, external_id)
    row, created = await repository.upsert(conn, external_id, _fields(body))
    if before is not None and (before["email"], before["email_status"]) != (
        row["email"],
        row["email_status"],
    ):
        # Reachability feeds KPIs: the segments holding this customer are stale now.
        await mark_customer_segments_stale(conn, [row["id"]])
    await add_event(
        conn,
        CustomerChanged(
            source=SOURCE,
            subject=external_id,
            data=CustomerIds(customer_external_ids=[external_id]),
        ),
    )
    return to_customer(row), created
