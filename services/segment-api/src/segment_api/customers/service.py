from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.customers import repository
from segment_api.customers.schemas import BulkResult, Customer, CustomerIn, CustomersBulk
from segment_api.events import SOURCE
from segment_api.pagination import decode_key_cursor, encode_cursor
from segment_api.problems import ProblemException, not_found
from segment_api.rules.queue import note_data_changed
from segment_api.segments.service import record_membership_change
from segments_shared.bus.outbox import add_event, add_events
from segments_shared.events import MAX_IDS_PER_EVENT, CustomerChanged, CustomerErased, CustomerIds
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
    first: dict[str, int] = {}
    errors = []
    for index, key in enumerate(keys):
        if key in first:
            errors.append(
                {
                    "pointer": f"/{collection}/{index}/external_id",
                    "detail": f"duplicates /{collection}/{first[key]}/external_id",
                }
            )
        else:
            first[key] = index
    return errors


def chunks(values: list[str], size: int = MAX_IDS_PER_EVENT) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


async def bulk_upsert(conn: AsyncConnection, body: CustomersBulk) -> BulkResult:
    """All or nothing: validation happened before; one statement set for the batch."""
    keys = [item.external_id for item in body.customers]
    errors = duplicate_errors(keys, "customers")
    if errors:
        raise ProblemException(422, "external ids repeat within the call", errors=errors)
    created, reachability_changed = await repository.upsert_many(
        conn, keys, body.model_dump_json(exclude_unset=True)
    )
    await mark_customer_segments_stale(conn, reachability_changed)
    await add_events(
        conn,
        [
            CustomerChanged(
                source=SOURCE, subject=chunk[0], data=CustomerIds(customer_external_ids=chunk)
            )
            for chunk in chunks(keys)
        ],
    )
    await note_data_changed(conn, "customers")  # rule segments follow, debounced
    return BulkResult(created=created, updated=len(keys) - created)


async def list_customers(
    conn: AsyncConnection, email: str | None, cursor: str | None, limit: int
) -> tuple[list[Customer], str | None]:
    after = 0
    if cursor:
        after = decode_key_cursor(cursor)
    rows = await repository.list_customers(conn, email, after, limit + 1)
    items = [to_customer(row) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
    return items, next_cursor


async def erase_customer(conn: AsyncConnection, external_id: str) -> None:
    """Right to erasure: the customer and their orders go; they leave every segment (KPIs
    follow), and the next sync removes them from destinations, which still know them by the
    worker's record until then."""
    customer_id = await repository.lock_for_erasure(conn, external_id)
    if customer_id is None:
        raise not_found("customer", external_id)
    for segment_id in await repository.delete_memberships(conn, customer_id):
        await record_membership_change(
            conn, segment_id, entered=0, exited=1, cause="customer_erased"
        )
    await repository.delete_customer(conn, customer_id)
    await add_event(
        conn,
        CustomerErased(
            source=SOURCE,
            subject=external_id,
            data=CustomerIds(customer_external_ids=[external_id]),
        ),
    )
    await note_data_changed(conn, "customers")  # rule segments follow, debounced
