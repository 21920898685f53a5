"""Event handlers. A sync request is already a row in `sync_runs`; the event only wakes the
runner, which claims the run with a lease (the message is acknowledged at once, so a long
sync never holds a delivery past the broker's consumer timeout)."""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.bus.consumer import Handler
from segments_shared.events import Event


def build_handlers(wake_runner: Callable[[], None]) -> dict[str, Handler]:
    async def sync_requested(_conn: AsyncConnection, _event: Event) -> None:
        wake_runner()

    async def membership_gone(_conn: AsyncConnection, _event: Event) -> None:
        # Deletions and erasures reach destinations through the next sync's diff.
        return None

    return {
        "sync.requested": sync_requested,
        "segment.deleted": membership_gone,
        "customer.erased": membership_gone,
    }
