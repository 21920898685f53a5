"""Writing events: in the caller's transaction, never published from it
(docs/architecture.md#events-the-outbox-relay-and-consumers)."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.engine import driver_connection
from segments_shared.events import CloudEvent

_INSERT = "INSERT INTO outbox (event_id, event_type, payload) VALUES ($1, $2, $3)"


async def add_events(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    """Queue events for the relay in the caller's open transaction.

    Written through the driver: every change writes at least one event, so this is on the
    hottest path there is.
    """
    if not events:
        return
    driver = await driver_connection(conn)
    rows = [(event.id, event.type, event.model_dump_json()) for event in events]
    if len(rows) == 1:
        await driver.execute(_INSERT, *rows[0])
    else:
        await driver.executemany(_INSERT, rows)


async def add_event(conn: AsyncConnection, event: CloudEvent) -> None:
    await add_events(conn, [event])
