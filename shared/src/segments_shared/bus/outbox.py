"""Writing events: in the caller's transaction, never published from it (STYLE rule 7)."""

from collections.abc import Sequence

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from segments_shared.db.models import Outbox
from segments_shared.events import CloudEvent, event_json


def _row(event: CloudEvent) -> dict[str, object]:
    return {
        "event_id": event.id,
        "event_type": event.type,
        "payload": event_json(event),
    }


async def add_events(db: AsyncConnection | AsyncSession, events: Sequence[CloudEvent]) -> None:
    """Queue events for the relay in the caller's open transaction."""
    if events:
        await db.execute(insert(Outbox), [_row(event) for event in events])


async def add_event(db: AsyncConnection | AsyncSession, event: CloudEvent) -> None:
    await add_events(db, [event])
