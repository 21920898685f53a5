"""Event handlers: thin, one per event type.

segment-api marks KPIs stale in the transaction of each change, so `stale` is exact; these
handlers wake the recomputation as soon as the event arrives instead of waiting for a poll.
Order changes and erasures also ask for an RFM recomputation, debounced: the first such event
since the last run sets it due `rfm_debounce` seconds later, and later ones fold into it.
"""

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from metrics_worker import rfm
from metrics_worker.jobs import request_job
from segments_shared.bus.consumer import Handler
from segments_shared.events import Event

RFM_EVENTS = frozenset({"order.recorded", "customer.erased"})


def build_handlers(wake_kpis: Callable[[], None], *, rfm_debounce: float) -> dict[str, Handler]:
    async def kpis_affected(_conn: AsyncConnection, _event: Event) -> None:
        wake_kpis()

    async def orders_affected(conn: AsyncConnection, _event: Event) -> None:
        wake_kpis()
        await request_job(conn, rfm.JOB, within=rfm_debounce)

    return {
        "segment.created": kpis_affected,
        "segment.updated": kpis_affected,
        "segment.activated": kpis_affected,
        "segment.members_changed": kpis_affected,
        "customer.changed": kpis_affected,
        "customer.erased": orders_affected,
        "order.recorded": orders_affected,
    }


def after_commit(wake_rfm: Callable[[], None]) -> Callable[[Event], None]:
    """Wake the RFM loop once the request is committed, so it sees the new due time."""

    def woken(event: Event) -> None:
        if event.type in RFM_EVENTS:
            wake_rfm()

    return woken
