"""An installation of the previous version upgraded in place, on the real broker: its
`<prefix>.unrouted` queue was declared without the bound (redeclaring it with the bound fails
with PRECONDITION_FAILED), and its service queues keep bindings since dropped from
SERVICE_BINDINGS. Each test uses a prefix of its own, built in the old shape."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractConnection
from aiormq.abc import ArgumentsType
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.bus.outbox import add_events
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import (
    UNROUTED_ARGUMENTS,
    Topology,
    declare_all,
    delete_all,
)
from segments_shared.events import (
    CustomerErased,
    CustomerIds,
    Event,
    SegmentDeleted,
    SegmentRef,
    SyncCompleted,
    SyncCompletedEvent,
)
from tests.fixtures.infra import AMQP_URL
from tests.shared.test_bus import queue_depth, take, unpublished
from tests.support.waiting import wait_for

# What the previous version bound and no handler consumed.
DROPPED_BINDINGS = {"metrics-worker": "segment.deleted", "sync-worker": "customer.erased"}


@pytest_asyncio.fixture
async def old_install(broker: AbstractConnection, bus_prefix: str) -> AsyncIterator[Topology]:
    """The topology as the previous version left it, with one event parked in the unrouted
    queue."""
    topology = Topology(f"{bus_prefix}-old-{uuid.uuid4().hex[:6]}")
    channel = await broker.channel()
    await declare_all(channel, topology)
    await channel.queue_delete(topology.unrouted)
    unrouted = await channel.declare_queue(
        topology.unrouted, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await unrouted.bind(topology.unrouted)
    events = await channel.get_exchange(topology.events_exchange, ensure=False)
    for service, event_type in DROPPED_BINDINGS.items():
        queue = await channel.get_queue(topology.service_queue(service), ensure=False)
        await queue.bind(events, routing_key=event_type)
    await events.publish(aio_pika.Message(b"parked"), routing_key="metrics.updated")
    await channel.close()
    await wait_for(lambda: _equals(queue_depth(broker, topology.unrouted), 1))
    yield topology
    channel = await broker.channel()
    await delete_all(channel, topology)
    await channel.close()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


def sync_completed() -> SyncCompletedEvent:
    segment_id = uuid.uuid4()
    return SyncCompletedEvent(
        source="tests",
        subject=str(segment_id),
        data=SyncCompleted(
            sync_id=uuid.uuid4(), segment_id=segment_id, status="succeeded", stats={"added": 1}
        ),
    )


async def declares_with(
    broker: AbstractConnection, topology: Topology, arguments: ArgumentsType
) -> bool:
    """Whether redeclaring the unrouted queue with these arguments is accepted (the broker
    refuses other arguments than the queue has)."""
    channel = await broker.channel()
    try:
        await channel.declare_queue(topology.unrouted, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


@pytest.mark.asyncio
async def test_relays_starting_on_the_previous_install_bound_the_unrouted_queue(
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    old_install: Topology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = old_install
    assert await declares_with(broker, topology, {"x-queue-type": "quorum"})
    events = [sync_completed() for _ in range(3)]
    async with clean_db.begin() as conn:
        await add_events(conn, events)
    # Two at once, as when every service restarts with the new version together.
    relays = [OutboxRelay(clean_db, AMQP_URL, topology) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="segments_shared.bus.topology"):
        tasks = [asyncio.create_task(relay.run()) for relay in relays]
        await wait_for(lambda: _zero(unpublished(clean_db)), within=30)
        for relay in relays:
            relay.stop()
        await asyncio.gather(*tasks)

    assert await declares_with(broker, topology, UNROUTED_ARGUMENTS)
    assert not await declares_with(broker, topology, {"x-queue-type": "quorum"})
    redeclared = [r for r in caplog.records if r.getMessage().startswith("unrouted queue")]
    assert redeclared, "the upgrade is logged"
    assert sum(getattr(r, "dropped", 0) for r in redeclared) == 1  # the parked event
    kept = await take(broker, topology.unrouted, 4, within=2)
    assert sorted(m.message_id or "" for m in kept) == sorted(e.id for e in events)


@pytest.mark.asyncio
async def test_declaring_over_the_previous_install_keeps_the_channel_and_drops_old_bindings(
    broker: AbstractConnection, old_install: Topology
) -> None:
    topology = old_install
    channel = await broker.channel()
    await declare_all(channel, topology)
    assert not channel.is_closed  # the refused redeclaration happened on a channel of its own

    exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
    segment_id = uuid.uuid4()
    published: list[Event] = [
        SegmentDeleted(
            source="tests",
            subject=str(segment_id),
            data=SegmentRef(segment_id=segment_id, name="gone", version=1),
        ),
        CustomerErased(
            source="tests",
            subject="erased-1",
            data=CustomerIds(customer_external_ids=["erased-1"]),
        ),
    ]
    for event in published:
        await exchange.publish(
            aio_pika.Message(event.model_dump_json().encode(), message_id=event.id),
            routing_key=event.type,
            mandatory=True,
        )
    await channel.close()

    # Each type now reaches only the service that handles it.
    [to_sync] = await take(broker, topology.service_queue("sync-worker"), 1)
    [to_metrics] = await take(broker, topology.service_queue("metrics-worker"), 1)
    assert (to_sync.routing_key, to_metrics.routing_key) == ("segment.deleted", "customer.erased")
    await asyncio.sleep(0.3)  # room for a wrongly routed copy to arrive
    for service in DROPPED_BINDINGS:
        assert await queue_depth(broker, topology.service_queue(service)) == 0
