"""Event handlers. A sync request is already a row in `sync_runs`; the event only wakes the
runner, which claims the run with a lease (the message is acknowledged at once, so a long
sync never holds a delivery past the broker's consumer timeout).

The keys are the sync-worker's entry in `SERVICE_BINDINGS`; the consumer refuses any other set.
Erased customers need no handler here: they leave their segments, and the next sync's diff
removes them remotely."""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.bus.consumer import Handler, WakeUp
from segments_shared.events import Event, SegmentDeleted
from sync_worker import record


def build_handlers(wake_runner: Callable[[], None]) -> dict[str, Handler]:
    async def segment_deleted(conn: AsyncConnection, event: Event) -> None:
        # Destinations keep the segment (deleting one does not touch destinations,
        # docs/sync.md); our record of what they hold of it goes (the table has no foreign
        # keys, for speed).
        if isinstance(event, SegmentDeleted):
            await record.forget_segment(conn, event.data.segment_id)

    return {
        # The run is a row and a job already: the event only wakes the runner.
        "sync.requested": WakeUp(wake_runner),
        "segment.deleted": segment_deleted,
    }
