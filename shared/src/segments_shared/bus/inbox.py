"""Processed-message records, so each consumer handles an event once
(docs/architecture.md#events-the-outbox-relay-and-consumers)."""

import uuid

from sqlalchemy import delete, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.db.models import Inbox


async def record_processed(conn: AsyncConnection, consumer: str, event_id: uuid.UUID) -> bool:
    """Claim the event for this consumer in the caller's transaction.

    False when it was already processed: the caller skips it. Two deliveries racing in
    parallel serialise on the primary key; the loser sees False once the winner commits.
    """
    statement = (
        insert(Inbox)
        .values(consumer=consumer, event_id=event_id)
        .on_conflict_do_nothing()
        .returning(Inbox.event_id)
    )
    result = await conn.execute(statement)
    return result.first() is not None


async def purge_inbox(engine: AsyncEngine, older_than_days: int = 7) -> int:
    """Forget processed ids after the window in which a redelivery can still arrive."""
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(Inbox).where(
                Inbox.processed_at < func.now() - func.make_interval(0, 0, 0, older_than_days)
            )
        )
        return int(result.rowcount or 0)
