import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.customers import repository
from segment_api.customers.schemas import (
    BulkResult,
    Customer,
    CustomerIn,
    CustomersBulk,
    CustomerSegment,
)
from segment_api.events import SOURCE
from segment_api.listing import PageRequest
from segment_api.pagination import Page, decode_cursor
from segment_api.problems import ProblemException, not_found, parameter_error, repeat_errors
from segment_api.segments import locks
from segments_shared.changes import changes_of
from segments_shared.events import MAX_IDS_PER_EVENT, CustomerChanged, CustomerErased, CustomerIds


def to_customer(row: Mapping[str, Any]) -> Customer:
    return Customer.model_validate(dict(row))


def _fields(body: CustomerIn) -> dict[str, Any]:
    """The given fields as column values; addresses keep only their given parts."""
    fields = body.model_dump(exclude_unset=True)
    for name in ("shipping_address", "billing_address"):
        if fields.get(name) is not None:
            fields[name] = {k: v for k, v in fields[name].items() if v is not None}
    return fields


async def get_customer(conn: AsyncConnection, external_id: str) -> Customer:
    row = await repository.get(conn, external_id)
    if row is None:
        raise not_found("customer", external_id)
    return to_customer(row)


async def put_customer(
    conn: AsyncConnection, external_id: str, body: CustomerIn
) -> tuple[Customer, bool]:
    """One statement, atomic by itself: `conn` is outside any transaction (the hottest write
    there is, so one round trip). Its effects are those of the bulk path: stale KPIs when
    the email or its status changed, `customer.changed`, a signal for rule segments."""
    event = CustomerChanged(
        source=SOURCE,
        subject=external_id,
        data=CustomerIds(customer_external_ids=[external_id]),
    )
    row, created = await repository.put(
        conn, external_id, _fields(body), (event.id, event.type, event.model_dump_json())
    )
    return to_customer(row), created


def duplicate_errors(keys: list[str], collection: str) -> list[dict[str, str]]:
    """One error per item repeating an earlier item's external id."""
    return repeat_errors(keys, lambda index: f"/{collection}/{index}/external_id", "duplicates")


def chunks(values: list[str], size: int = MAX_IDS_PER_EVENT) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


async def bulk_upsert(conn: AsyncConnection, body: CustomersBulk) -> BulkResult:
    """All or nothing: validation happened before; one statement set for the batch."""
    keys = [item.external_id for item in body.customers]
    errors = duplicate_errors(keys, "customers")
    if errors:
        raise ProblemException(422, "external ids repeat within the call", errors=errors)
    upserted = await repository.upsert_many(conn, keys, body.model_dump_json(exclude_unset=True))
    changes = changes_of(conn)
    changes.customers_changed("profile", upserted.ids)
    changes.customers_changed("reach", upserted.reach_changed)
    changes.publish(
        *(
            CustomerChanged(
                source=SOURCE, subject=chunk[0], data=CustomerIds(customer_external_ids=chunk)
            )
            for chunk in chunks(keys)
        )
    )
    return BulkResult(created=upserted.created, updated=len(keys) - upserted.created)


async def list_customers(
    conn: AsyncConnection, email: str | None, page: PageRequest
) -> Page[Customer]:
    # Customer ids start at 1: after 0 is the first page.
    rows = await repository.list_customers(conn, email, page.after_key() or 0, page.limit + 1)
    return Page(
        items=[to_customer(row) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row["id"],)),
    )


async def list_customer_segments(
    conn: AsyncConnection, external_id: str, page: PageRequest
) -> Page[CustomerSegment]:
    """The segments the customer is in, by segment id; 404 for an unknown customer."""
    customer = await repository.customer_id(conn, external_id)
    if customer is None:
        raise not_found("customer", external_id)
    after = _segment_cursor(page.cursor) if page.cursor else None
    rows = await repository.segments_of(conn, customer, after, page.limit + 1)
    return Page(
        items=[CustomerSegment.model_validate(dict(row)) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (str(row["segment_id"]),)),
    )


def _segment_cursor(cursor: str) -> uuid.UUID:
    """A cursor of one segment id, as `list_customer_segments` issues."""
    (segment_id,) = decode_cursor(cursor, 1)
    try:
        return uuid.UUID(str(segment_id))
    except ValueError:
        raise parameter_error("cursor", "the cursor is not one this API issued") from None


async def erase_customer(conn: AsyncConnection, external_id: str) -> None:
    """Right to erasure: the customer and their orders go; they leave every segment (KPIs
    follow), and the next sync removes them from destinations, which still know them by the
    worker's record until then."""
    customer_id = await repository.lock_for_erasure(conn, external_id)
    if customer_id is None:
        raise not_found("customer", external_id)
    await locks.lock_segments_of_customer(conn, customer_id)
    changes = changes_of(conn)
    for segment_id in await repository.delete_memberships(conn, customer_id):
        await changes.members_changed(
            segment_id, entered=0, exited=[customer_id], cause="customer_erased"
        )
    await repository.delete_customer(conn, customer_id)
    changes.customers_changed("erased", [customer_id])
    changes.publish(
        CustomerErased(
            source=SOURCE,
            subject=external_id,
            data=CustomerIds(customer_external_ids=[external_id]),
        )
    )
