"""Event handlers. A sync request is already a row in `sync_runs`; the event only wakes the
runner, which claims the run with a lease (the message is acknowledged at once, so a long
sync never holds a delivery past the broker's consumer timeout)."""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.bus.consumer import Handler
from segments_shared.events import Event, SegmentDeleted
from sync_worker import planner


def build_handlers(wake_runner: Callable[[], None]) -> dict[str, Handler]:
    async def sync_requested(_conn: AsyncConnection, _event: Event) -> None:
        wake_runner()

    async def segment_deleted(conn: AsyncConnection, event: Event) -> None:
        # Destinations keep the segment (SPEC: deleting one does not touch destinations); our
        # record of what they hold of it goes (the table has no foreign keys, for speed).
        if isinstance(event, SegmentDeleted):
            await planner.forget_segment(conn, event.data.segment_id)

    async def customer_erased(_conn: AsyncConnection, _event: Event) -> None:
        # Erased customers leave their segments; the next sync's diff removes them remotely.
        return None

    return {
        "sync.requested": sync_requested,
        "segment.deleted": segment_deleted,
        "customer.erased": customer_erased,
    }
