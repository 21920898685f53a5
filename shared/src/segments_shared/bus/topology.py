"""Exchanges, queues and dead-lettering (docs/events.md), all named under the bus prefix.

<prefix>.events          topic exchange every event is published to (routing key = type)
<prefix>.unrouted        its alternate exchange (fanout) and the queue keeping unbound events,
                         bounded: at most UNROUTED_MAX_LENGTH messages, the oldest dropped first
<prefix>.dlx             direct exchange receiving dead letters
<prefix>.<service>       each worker's durable quorum queue, x-delivery-limit 5
<prefix>.<service>.dlq   where that queue's dead letters land
"""

import logging
from dataclasses import dataclass

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.abc import ArgumentsType

from segments_shared.events import EVENT_TYPES

log = logging.getLogger(__name__)

DELIVERY_LIMIT = 5
UNROUTED_MAX_LENGTH = 100_000
UNROUTED_ARGUMENTS: ArgumentsType = {
    "x-queue-type": "quorum",
    "x-max-length": UNROUTED_MAX_LENGTH,
    "x-overflow": "drop-head",
}
DECLARE_TIMEOUT = 10.0

# The one registry of what each consuming service handles: its queue binds exactly these event
# types (exact names, no wildcards) and `EventConsumer` refuses handlers for any other set. The
# relays declare every service's queue from here, so it lives in shared, not in the services.
SERVICE_BINDINGS: dict[str, tuple[str, ...]] = {
    # sync.requested wakes the runner; segment.deleted drops our record of the segment.
    "sync-worker": ("sync.requested", "segment.deleted"),
    # Each wakes the KPI recomputation; orders and erasures also schedule RFM.
    "metrics-worker": (
        "segment.created",
        "segment.updated",
        "segment.activated",
        "segment.members_changed",
        "customer.changed",
        "customer.erased",
        "order.recorded",
    ),
}


@dataclass(frozen=True)
class Topology:
    prefix: str

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def unrouted(self) -> str:
        return f"{self.prefix}.unrouted"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    def service_queue(self, service: str) -> str:
        return f"{self.prefix}.{service}"

    def dead_letter_queue(self, service: str) -> str:
        return f"{self.prefix}.{service}.dlq"

    def all_queues(self) -> list[str]:
        names = [self.unrouted]
        for service in SERVICE_BINDINGS:
            names += [self.service_queue(service), self.dead_letter_queue(service)]
        return names

    def all_exchanges(self) -> list[str]:
        return [self.events_exchange, self.unrouted, self.dead_letter_exchange]


async def declare_unrouted_queue(channel: AbstractChannel, topology: Topology) -> None:
    """Declare `<prefix>.unrouted` with its bound, on a channel of its own.

    An installation of an earlier version has this queue without the bound, and redeclaring a
    queue with other arguments fails with PRECONDITION_FAILED, which closes the channel; doing
    it on a separate channel keeps the caller's open. Such a queue is deleted and declared
    again: it only parks events nobody consumes, so dropping what it holds loses nothing a
    consumer was owed (and the count is logged). One process replaces it, holding an
    exclusive queue as a lock: when every service restarts at once, a second deletion of the
    queue the first had just declared left RabbitMQ refusing to declare it again
    (`cluster_not_formed`) for over 30 s. The others fail with RESOURCE_LOCKED, and their
    callers retry after a back-off."""
    connection = (await channel.get_underlay_channel()).connection
    if await _declares_bounded(connection, topology):
        return
    locking = await connection.channel(timeout=DECLARE_TIMEOUT)
    try:
        await locking.queue_declare(
            f"{topology.unrouted}.replacing",
            exclusive=True,
            auto_delete=True,
            timeout=DECLARE_TIMEOUT,
        )
        # Another process may have replaced it between the first look and the lock.
        if await _declares_bounded(connection, topology):
            return
        deleted = await locking.queue_delete(topology.unrouted, timeout=DECLARE_TIMEOUT)
        await locking.queue_declare(
            topology.unrouted, durable=True, arguments=UNROUTED_ARGUMENTS, timeout=DECLARE_TIMEOUT
        )
    finally:
        # Closing the channel leaves the lock queue to the connection's end: delete it.
        if not locking.is_closed:
            await locking.queue_delete(f"{topology.unrouted}.replacing", timeout=DECLARE_TIMEOUT)
            await locking.close()
    log.warning(
        "unrouted queue redeclared with its bound, the events it held dropped",
        extra={"queue": topology.unrouted, "dropped": deleted.message_count},
    )


async def _declares_bounded(connection: aiormq.abc.AbstractConnection, topology: Topology) -> bool:
    """Whether `<prefix>.unrouted` exists (or now does) with its bound."""
    probe = await connection.channel(timeout=DECLARE_TIMEOUT)
    try:
        await probe.queue_declare(
            topology.unrouted, durable=True, arguments=UNROUTED_ARGUMENTS, timeout=DECLARE_TIMEOUT
        )
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        if not probe.is_closed:
            await probe.close()


async def declare_events_exchange(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """The events exchange and its alternate exchange: what a publisher needs."""
    unrouted = await channel.declare_exchange(topology.unrouted, ExchangeType.FANOUT, durable=True)
    await declare_unrouted_queue(channel, topology)
    unrouted_queue = await channel.get_queue(topology.unrouted, ensure=False)
    await unrouted_queue.bind(unrouted)
    return await channel.declare_exchange(
        topology.events_exchange,
        ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.unrouted},
    )


async def declare_service_queue(
    channel: AbstractChannel, topology: Topology, service: str
) -> AbstractQueue:
    """A service's quorum queue, bound to its events, with its dead-letter queue."""
    events = await declare_events_exchange(channel, topology)
    return await _declare_service_queue(channel, topology, service, events)


async def _declare_service_queue(
    channel: AbstractChannel, topology: Topology, service: str, events: AbstractExchange
) -> AbstractQueue:
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, ExchangeType.DIRECT, durable=True
    )
    dlq = await channel.declare_queue(
        topology.dead_letter_queue(service), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dlx, routing_key=service)
    queue = await channel.declare_queue(
        topology.service_queue(service),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": topology.dead_letter_exchange,
            "x-dead-letter-routing-key": service,
        },
    )
    bound = SERVICE_BINDINGS[service]
    for event_type in bound:
        await queue.bind(events, routing_key=event_type)
    # A binding an earlier version made stays on the durable queue after its type left the
    # registry; remove it so that only events with a handler arrive. Unbinding a binding that
    # does not exist succeeds.
    for event_type in EVENT_TYPES:
        if event_type not in bound:
            await queue.unbind(events, routing_key=event_type)
    return queue


async def declare_all(channel: AbstractChannel, topology: Topology) -> None:
    events = await declare_events_exchange(channel, topology)
    for service in SERVICE_BINDINGS:
        await _declare_service_queue(channel, topology, service, events)


async def delete_all(channel: AbstractChannel, topology: Topology) -> None:
    """Remove every queue and exchange of this prefix (tests, uninstall)."""
    for queue in topology.all_queues():
        await channel.queue_delete(queue)
    for exchange in topology.all_exchanges():
        await channel.exchange_delete(exchange)
