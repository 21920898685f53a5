"""Writing events: in the caller's transaction, never published from it
(docs/architecture.md#events-the-outbox-relay-and-consumers); and measuring what still
waits for the relay (segments_shared/gauges.py)."""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
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


@dataclass(frozen=True)
class Backlog:
    """What the relay has not published yet: rows, and how long the oldest has waited."""

    rows: int
    oldest_age_seconds: float


# One pass over the unpublished rows (the partial index keeps them apart from the published
# ones); the age is taken by the database's clock, like `created_at`.
_BACKLOG = text(
    """
    SELECT count(*) AS rows,
           coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) AS oldest
    FROM outbox
    WHERE published_at IS NULL
    """
)


async def outbox_backlog(conn: AsyncConnection) -> Backlog:
    row = (await conn.execute(_BACKLOG)).one()
    return Backlog(rows=int(row.rows), oldest_age_seconds=max(float(row.oldest), 0.0))
