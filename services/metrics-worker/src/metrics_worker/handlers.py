"""Event handlers: one per event type the metrics-worker's entry in `SERVICE_BINDINGS` lists
(the consumer refuses any other set), all the same.

Writers record what changed in `metrics_changes` in the transaction of each change, and the
fold takes it from there; these events only wake the fold sooner than its poll. A wake-up
needs no transaction and no inbox row (`WakeUp`), so a stream of events costs the database
nothing.
"""

from collections.abc import Callable

from segments_shared.bus.consumer import Handler, WakeUp
from segments_shared.bus.topology import SERVICE_BINDINGS

SERVICE = "metrics-worker"


def build_handlers(changes_arrived: Callable[[], None]) -> dict[str, Handler]:
    return dict.fromkeys(SERVICE_BINDINGS[SERVICE], WakeUp(changes_arrived))
