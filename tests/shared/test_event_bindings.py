"""Each service's handlers and its queue's bindings come from one list (`SERVICE_BINDINGS`): the
consumer refuses at construction any handlers that differ from it. No broker or database needed:
the consumer is only built, never run."""

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from metrics_worker.handlers import build_handlers as metrics_handlers
from segments_shared.bus.consumer import EventConsumer, Handler
from segments_shared.bus.topology import SERVICE_BINDINGS, Topology
from segments_shared.events import EVENT_TYPES
from sync_worker.handlers import build_handlers as sync_handlers

# Never connected: building a consumer opens nothing.
UNUSED_URL = "amqp://guest:guest@127.0.0.1:1/"


def nothing() -> None:
    return None


def handlers_of(service: str) -> dict[str, Handler]:
    """The handlers each service's main.py gives its consumer."""
    built = {
        "sync-worker": lambda: sync_handlers(nothing),
        "metrics-worker": lambda: metrics_handlers(nothing),
    }
    return built[service]()


def consumer(service: str, handlers: dict[str, Handler]) -> EventConsumer:
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/unused")
    return EventConsumer(engine, UNUSED_URL, Topology("unused"), service, handlers)


@pytest.mark.parametrize("service", sorted(SERVICE_BINDINGS))
def test_each_service_handles_exactly_what_its_queue_binds(service: str) -> None:
    handlers = handlers_of(service)
    assert sorted(handlers) == sorted(SERVICE_BINDINGS[service])
    assert consumer(service, handlers).handlers == handlers


def test_bindings_name_known_event_types_once_each() -> None:
    for bound in SERVICE_BINDINGS.values():
        assert len(set(bound)) == len(bound)
        assert set(bound) <= set(EVENT_TYPES)  # exact types: the consumer compares them as keys


def test_a_handler_without_a_binding_is_refused() -> None:
    handlers = handlers_of("metrics-worker")
    handlers["segment.deleted"] = handlers["segment.created"]
    with pytest.raises(ValueError, match=r"handled but not bound: segment\.deleted$"):
        consumer("metrics-worker", handlers)


def test_a_binding_without_a_handler_is_refused() -> None:
    handlers = handlers_of("sync-worker")
    del handlers["segment.deleted"]
    with pytest.raises(ValueError, match=r"bound without a handler: segment\.deleted$"):
        consumer("sync-worker", handlers)


def test_both_differences_are_named_at_once() -> None:
    handlers = handlers_of("sync-worker")
    handlers["customer.erased"] = handlers.pop("segment.deleted")
    with pytest.raises(ValueError, match="sync-worker handlers differ") as refused:
        consumer("sync-worker", handlers)
    message = str(refused.value)
    assert "bound without a handler: segment.deleted" in message
    assert "handled but not bound: customer.erased" in message


def test_a_service_without_bindings_is_refused() -> None:
    with pytest.raises(ValueError, match="'segment-api' has no entry in SERVICE_BINDINGS"):
        consumer("segment-api", {})
