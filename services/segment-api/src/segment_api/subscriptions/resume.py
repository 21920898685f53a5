"""Resuming subscriptions when their segment is activated again: kept apart from the service,
which the segments service cannot import (the service reads segments)."""

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.subscriptions import repository
from segments_shared.jobs import store

# The job queue of subscriptions (sync_worker/subscriptions.py).
SUBSCRIPTIONS = "subscription"


async def segment_activated(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    """The segment is active again: `on_change` subscriptions with changes that came while it
    was inactive run once."""
    for subscription_id in await repository.with_changes_pending(conn, segment_id):
        await store.request(conn, SUBSCRIPTIONS, str(subscription_id))
