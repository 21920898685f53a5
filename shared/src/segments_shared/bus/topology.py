"""Exchanges, queues and dead-lettering (SPEC section 8), all named under the bus prefix.

<prefix>.events          topic exchange every event is published to (routing key = type)
<prefix>.unrouted        its alternate exchange (fanout) and the queue keeping unbound events
<prefix>.dlx             direct exchange receiving dead letters
<prefix>.<service>       each worker's durable quorum queue, x-delivery-limit 5
<prefix>.<service>.dlq   where that queue's dead letters land
"""

from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

DELIVERY_LIMIT = 5

# What each consuming service listens to; patterns follow AMQP topic syntax.
SERVICE_BINDINGS: dict[str, tuple[str, ...]] = {
    "sync-worker": ("sync.requested", "segment.deleted", "customer.erased"),
    "metrics-worker": (
        "segment.created",
        "segment.updated",
        "segment.deleted",
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


async def declare_events_exchange(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """The events exchange and its alternate exchange: what a publisher needs."""
    unrouted = await channel.declare_exchange(topology.unrouted, ExchangeType.FANOUT, durable=True)
    unrouted_queue = await channel.declare_queue(
        topology.unrouted, durable=True, arguments={"x-queue-type": "quorum"}
    )
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
    for pattern in SERVICE_BINDINGS[service]:
        await queue.bind(events, routing_key=pattern)
    return queue


async def declare_all(channel: AbstractChannel, topology: Topology) -> None:
    for service in SERVICE_BINDINGS:
        await declare_service_queue(channel, topology, service)


async def delete_all(channel: AbstractChannel, topology: Topology) -> None:
    """Remove every queue and exchange of this prefix (tests, uninstall)."""
    for queue in topology.all_queues():
        await channel.queue_delete(queue)
    for exchange in topology.all_exchanges():
        await channel.exchange_delete(exchange)
