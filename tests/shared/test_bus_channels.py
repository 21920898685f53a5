"""The broker closes a channel but not its connection (a channel-level error, a consumer cancelled
because its queue was deleted): the consumer and the relay notice, report not ready while they
have no working channel, open a new one, and nothing is lost or processed twice."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import aio_pika
import httpx
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractConnection
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.bus.consumer import EventConsumer
from segments_shared.bus.outbox import add_events
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology
from segments_shared.events import Event
from segments_shared.health import Dependency, create_health_app, flag_check
from tests.fixtures.infra import AMQP_URL
from tests.shared.test_bus import (
    RECORD_SIDE_EFFECT,
    SIDE_EFFECTS,
    customer_changed,
    every_bound_type,
    queue_depth,
    take,
)
from tests.support.waiting import wait_for

SERVICE = "metrics-worker"


async def provoke_channel_error(channel: AbstractChannel) -> None:
    """Acknowledge a delivery tag the broker never issued: it closes the channel with
    PRECONDITION_FAILED, the error a double acknowledgement gets, and keeps the connection."""
    underlay = await channel.get_underlay_channel()
    await underlay.basic_ack(delivery_tag=1_000_000)
    await asyncio.wait_for(channel.closed(), 5)


async def consumers_on(broker: AbstractConnection, queue_name: str) -> int:
    """Consumers on the queue; 0 while it does not exist."""
    channel = await broker.channel()
    try:
        queue = await channel.declare_queue(queue_name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return 0  # the failed passive declaration closed the channel
    count = queue.declaration_result.consumer_count or 0
    await channel.close()
    return count


async def publish(broker: AbstractConnection, topology: Topology, event: Event) -> None:
    channel = await broker.channel()
    exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(event.model_dump_json().encode(), message_id=event.id),
        routing_key=event.type,
        mandatory=True,
    )
    await channel.close()


async def inbox_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM inbox"))).scalar_one())


class Recorder:
    """A handler recording each event it handled, optionally held until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, conn: AsyncConnection, event: Event) -> None:
        self.calls.append(event.id)
        self.started.set()
        await self.release.wait()
        await conn.execute(RECORD_SIDE_EFFECT, {"n": event.id})


@pytest_asyncio.fixture
async def running(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> AsyncIterator[tuple[EventConsumer, Recorder]]:
    recorder = Recorder()
    topology = Topology(bus_prefix)
    consumer = EventConsumer(clean_db, AMQP_URL, topology, SERVICE, every_bound_type(recorder))
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: _true(consumer.broker_connected))
    yield consumer, recorder
    recorder.release.set()
    consumer.stop()
    await asyncio.wait_for(task, 30)


async def _true(value: bool) -> bool:
    return value


def consuming_channel(consumer: EventConsumer) -> AbstractChannel:
    channel = consumer._consuming_on
    assert channel is not None
    return channel


@pytest.mark.asyncio
async def test_consumer_replaces_a_channel_the_broker_closed(
    running: tuple[EventConsumer, Recorder],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    consumer, recorder = running
    topology = Topology(bus_prefix)
    old = consuming_channel(consumer)
    await provoke_channel_error(old)
    assert consumer.broker.is_connected  # only the channel went

    event = customer_changed("after-channel-error")
    await publish(broker, topology, event)
    await wait_for(lambda: _equals(inbox_count(clean_db), 1))
    assert recorder.calls == [event.id]
    assert consumer.broker_connected
    assert consuming_channel(consumer) is not old
    await wait_for(lambda: _equals(queue_depth(broker, topology.service_queue(SERVICE)), 0))


@pytest.mark.asyncio
async def test_message_in_flight_when_the_channel_closes_is_processed_once(
    running: tuple[EventConsumer, Recorder],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    consumer, recorder = running
    topology = Topology(bus_prefix)
    recorder.release.clear()
    event = customer_changed("in-flight")
    await publish(broker, topology, event)
    await asyncio.wait_for(recorder.started.wait(), 15)
    await provoke_channel_error(consuming_channel(consumer))
    assert not consumer.broker_connected
    # The channel's consumer tasks are cancelled with it (aiormq), so the handler's transaction
    # rolls back; had it committed first, its acknowledgement would fail instead. Either way the
    # broker redelivers the event on the new channel, and its effects happen exactly once.
    recorder.release.set()
    await wait_for(lambda: _true(consumer.broker_connected))
    await wait_for(lambda: _equals(queue_depth(broker, topology.service_queue(SERVICE)), 0))
    await asyncio.sleep(0.3)  # room for a wrongly repeated side effect to show
    assert set(recorder.calls) == {event.id}
    async with clean_db.connect() as conn:
        rows = (await conn.execute(SIDE_EFFECTS)).scalars().all()
    assert rows == [event.id]
    assert await inbox_count(clean_db) == 1


@pytest.mark.asyncio
async def test_consumer_redeclares_its_deleted_queue_and_resumes(
    running: tuple[EventConsumer, Recorder],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    consumer, recorder = running
    topology = Topology(bus_prefix)
    queue_name = topology.service_queue(SERVICE)
    channel = await broker.channel()
    await channel.queue_delete(queue_name)  # the broker cancels the consumer
    await channel.close()

    await wait_for(lambda: _equals(consumers_on(broker, queue_name), 1))
    event = customer_changed("after-queue-deleted")
    await publish(broker, topology, event)
    await wait_for(lambda: _equals(inbox_count(clean_db), 1))
    assert recorder.calls == [event.id]
    assert consumer.broker_connected


@pytest.mark.asyncio
async def test_readiness_reports_the_broker_down_while_the_consumer_has_no_channel(
    running: tuple[EventConsumer, Recorder],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    consumer, recorder = running
    topology = Topology(bus_prefix)
    queue_name = topology.service_queue(SERVICE)
    # Wired as the workers wire it (metrics_worker.main, sync_worker.main).
    health = create_health_app(
        [Dependency("broker", flag_check(lambda: consumer.broker_connected))]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=health), base_url="http://worker.test"
    ) as client:

        async def broker_state() -> str:
            response = await client.get("/readyz")
            state = str(response.json()["dependencies"]["broker"]["state"])
            assert response.status_code == (200 if state == "up" else 503)
            return state

        assert await broker_state() == "up"
        # Someone replaces the queue with an inequivalent one: the consumer is cancelled, and
        # every re-declaration fails with PRECONDITION_FAILED, closing the channel.
        channel = await broker.channel()
        try:
            await channel.queue_delete(queue_name)
            await channel.declare_queue(queue_name, durable=True)
            await wait_for(lambda: _equals(broker_state(), "down"))
            for _ in range(10):  # it stays down while the channel cannot be re-established
                await asyncio.sleep(0.1)
                assert await broker_state() == "down"
            assert consumer.broker.is_connected  # the connection itself is fine
        finally:
            await channel.queue_delete(queue_name)
            await channel.close()

        await wait_for(lambda: _equals(broker_state(), "up"), within=20)
    event = customer_changed("after-recovery")
    await publish(broker, topology, event)
    await wait_for(lambda: _equals(inbox_count(clean_db), 1))
    assert recorder.calls == [event.id]


@pytest.mark.asyncio
async def test_relay_replaces_a_publishing_channel_the_broker_closed(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    relay = OutboxRelay(clean_db, AMQP_URL, topology, poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        await wait_for(lambda: _true(relay.broker_connected))
        old = relay._channel
        assert old is not None
        failures = _publish_failures()
        await provoke_channel_error(old)
        # Noticed while idle, not at the next publish: no batch fails on the dead channel.
        await wait_for(lambda: _true(relay.broker_connected and relay._channel is not old))
        assert relay.broker.is_connected

        event = customer_changed("relayed-after-channel-error")
        async with clean_db.begin() as conn:
            await add_events(conn, [event])
        relay.wake()
        [message] = await take(broker, topology.service_queue(SERVICE), 1)
        assert message.message_id == event.id
        assert _publish_failures() == failures
    finally:
        relay.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 30)


def _publish_failures() -> float:
    return REGISTRY.get_sample_value("segments_outbox_publish_failures_total") or 0.0


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
