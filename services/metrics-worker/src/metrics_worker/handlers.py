"""Event handlers: thin, one per event type.

segment-api marks KPIs stale in the transaction of each change, so `stale` is exact; these
handlers wake the recomputation as soon as the event arrives instead of waiting for a poll.
"""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.bus.consumer import Handler
from segments_shared.events import Event


def build_handlers(wake_kpis: Callable[[], None]) -> dict[str, Handler]:
    async def kpis_affected(_conn: AsyncConnection, _event: Event) -> None:
        wake_kpis()

    return {
        "segment.created": kpis_affected,
        "segment.updated": kpis_affected,
        "segment.activated": kpis_affected,
        "segment.members_changed": kpis_affected,
        "customer.changed": kpis_affected,
        "customer.erased": kpis_affected,
        "order.recorded": kpis_affected,
    }
