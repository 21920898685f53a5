"""The bus against the real broker: outbox relay, publisher confirms, idempotent consumers,
dead-lettering, and a broker outage during which nothing is lost."""

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segment_api.main import create_app
from segment_api.settings import ApiSettings
from segments_shared.bus.consumer import EventConsumer, Handler
from segments_shared.bus.outbox import add_events
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import SERVICE_BINDINGS, Topology
from segments_shared.events import (
    CustomerChanged,
    CustomerIds,
    Event,
    SyncCompleted,
    SyncCompletedEvent,
)
from tests.fixtures.api import serving
from tests.fixtures.infra import AMQP_URL
from tests.fixtures.proxy import TcpProxy
from tests.support.waiting import wait_for

SERVICE = "metrics-worker"
# A handler's side effect, written in its transaction: a job row in a queue of the tests' own.
RECORD_SIDE_EFFECT = text("INSERT INTO jobs (queue, key) VALUES ('tests', :n)")
SIDE_EFFECTS = text("SELECT key FROM jobs WHERE queue = 'tests'")


def every_bound_type(handler: Handler) -> dict[str, Handler]:
    """The one handler for every type the service's queue binds (the consumer refuses fewer);
    the tests publish `customer.changed` only."""
    return dict.fromkeys(SERVICE_BINDINGS[SERVICE], handler)


async def take(
    connection: AbstractConnection, queue_name: str, count: int, within: float = 15.0
) -> list[AbstractIncomingMessage]:
    """Take `count` messages off a queue (acknowledging them), waiting for them to arrive."""
    channel = await connection.channel()
    queue = await channel.get_queue(queue_name, ensure=False)
    messages: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within
    while len(messages) < count and time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
        else:
            messages.append(message)
    await channel.close()
    return messages


async def queue_depth(connection: AbstractConnection, queue_name: str) -> int:
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    depth = queue.declaration_result.message_count or 0
    await channel.close()
    return depth


def customer_changed(external_id: str) -> CustomerChanged:
    return CustomerChanged(
        source="tests",
        subject=external_id,
        data=CustomerIds(customer_external_ids=[external_id]),
        correlationid="corr-" + external_id,
    )


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        return int(result.scalar_one())


@pytest.mark.asyncio
async def test_change_commits_while_broker_is_down_and_is_published_after(
    api_settings: ApiSettings, clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    port = await proxy.start()
    await proxy.cut()  # the broker is unreachable from the API from the start
    settings = api_settings.model_copy(
        update={"amqp_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{port}/")}
    )
    app = create_app(settings)
    async with serving(app) as api:
        response = await api.put("/v1/customers/outage-1", json={"email": "o@example.com"})
        assert response.status_code == 201
        ready = await api.get("/readyz")
        assert ready.status_code == 200  # the outbox absorbs the outage
        assert ready.json()["dependencies"]["broker"]["state"] == "down"
        await asyncio.sleep(1.0)
        assert await unpublished(clean_db) == 1
        assert await queue_depth(broker, Topology(bus_prefix).service_queue(SERVICE)) == 0

        await proxy.start(port)  # the broker is back
        await wait_for(lambda: _zero(unpublished(clean_db)), within=20)
        [message] = await take(broker, Topology(bus_prefix).service_queue(SERVICE), 1)
        await proxy.cut()

    event = json.loads(message.body)
    assert event["type"] == "customer.changed"
    assert event["subject"] == "outage-1"
    assert event["specversion"] == "1.0"
    assert message.content_type == "application/cloudevents+json"
    assert message.message_id == event["id"]
    assert message.routing_key == "customer.changed"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


@pytest.mark.asyncio
async def test_same_event_delivered_twice_is_processed_once(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    calls: list[str] = []

    async def handler(conn: AsyncConnection, event: Event) -> None:
        calls.append(event.id)
        await conn.execute(RECORD_SIDE_EFFECT, {"n": event.id})

    topology = Topology(bus_prefix)
    consumer = EventConsumer(clean_db, AMQP_URL, topology, SERVICE, every_bound_type(handler))
    task = asyncio.create_task(consumer.run())
    event = customer_changed("twice")
    channel = await broker.channel()
    exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
    for _ in range(2):
        await exchange.publish(
            aio_pika.Message(event.model_dump_json().encode(), message_id=event.id),
            routing_key=event.type,
        )

    async def both_taken() -> bool:
        async with clean_db.connect() as conn:
            inbox = (await conn.execute(text("SELECT count(*) FROM inbox"))).scalar_one()
        depth = await queue_depth(broker, topology.service_queue(SERVICE))
        return inbox == 1 and depth == 0

    await wait_for(both_taken)
    await asyncio.sleep(0.3)  # room for a wrongly repeated side effect to show
    consumer.stop()
    await task
    assert calls == [event.id]
    async with clean_db.connect() as conn:
        rows = (await conn.execute(SIDE_EFFECTS)).scalars().all()
    assert rows == [event.id]


@pytest.mark.asyncio
async def test_failing_event_is_dead_lettered_after_the_delivery_limit_and_replayed(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str, service_env: dict[str, str]
) -> None:
    attempts: list[str] = []

    async def handler(conn: AsyncConnection, event: Event) -> None:
        attempts.append(event.id)
        await conn.execute(RECORD_SIDE_EFFECT, {"n": "rolled-back"})
        raise RuntimeError("handler keeps failing")

    topology = Topology(bus_prefix)
    consumer = EventConsumer(clean_db, AMQP_URL, topology, SERVICE, every_bound_type(handler))
    task = asyncio.create_task(consumer.run())
    async with clean_db.begin() as conn:
        await add_events(conn, [customer_changed("poisonous")])
    relay = OutboxRelay(clean_db, AMQP_URL, topology)
    relay_task = asyncio.create_task(relay.run())

    await wait_for(
        lambda: _equals(queue_depth(broker, topology.dead_letter_queue(SERVICE)), 1), within=20
    )
    consumer.stop()
    relay.stop()
    await asyncio.gather(task, relay_task)
    # The first delivery and five redeliveries, then the dead-letter queue
    # (docs/events.md#queues-of-the-suite).
    assert len(attempts) == 6
    async with clean_db.connect() as conn:
        assert (await conn.execute(SIDE_EFFECTS)).all() == []
        assert (await conn.execute(text("SELECT count(*) FROM inbox"))).scalar() == 0

    env = {**os.environ, **service_env}
    replay = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "segments-admin"),
        "replay-dlq",
        SERVICE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await replay.communicate()
    assert replay.returncode == 0
    assert b"replayed 1 messages" in stdout
    assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
    [message] = await take(broker, topology.service_queue(SERVICE), 1)
    assert json.loads(message.body)["subject"] == "poisonous"


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.asyncio
async def test_unparseable_message_goes_straight_to_the_dead_letter_queue(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    calls: list[str] = []

    async def handler(conn: AsyncConnection, event: Event) -> None:
        calls.append(event.id)

    topology = Topology(bus_prefix)
    consumer = EventConsumer(clean_db, AMQP_URL, topology, SERVICE, every_bound_type(handler))
    task = asyncio.create_task(consumer.run())
    channel = await broker.channel()
    exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
    await exchange.publish(aio_pika.Message(b"{not json"), routing_key="customer.changed")
    await wait_for(lambda: _equals(queue_depth(broker, topology.dead_letter_queue(SERVICE)), 1))
    consumer.stop()
    await task
    assert calls == []


@pytest.mark.asyncio
async def test_two_relays_publish_every_event_exactly_once(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    events = [customer_changed(f"c{i}") for i in range(2000)]
    async with clean_db.begin() as conn:
        await add_events(conn, events)
    relays = [OutboxRelay(clean_db, AMQP_URL, topology, batch_size=200) for _ in range(2)]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    await wait_for(lambda: _zero(unpublished(clean_db)), within=30)
    messages = await take(broker, topology.service_queue(SERVICE), 2000)
    await asyncio.sleep(0.5)
    extra = await queue_depth(broker, topology.service_queue(SERVICE))
    for relay in relays:
        relay.stop()
    await asyncio.gather(*tasks)
    ids = [message.message_id for message in messages]
    assert len(ids) == 2000
    assert set(ids) == {event.id for event in events}
    assert extra == 0


@pytest.mark.asyncio
async def test_an_event_no_queue_binds_is_kept_in_the_unrouted_queue(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    segment_id = uuid.uuid4()
    event = SyncCompletedEvent(
        source="tests",
        subject=str(segment_id),
        data=SyncCompleted(
            sync_id=uuid.uuid4(), segment_id=segment_id, status="succeeded", stats={"added": 1}
        ),
    )
    async with clean_db.begin() as conn:
        await add_events(conn, [event])
    relay = OutboxRelay(clean_db, AMQP_URL, topology)
    task = asyncio.create_task(relay.run())
    await wait_for(lambda: _zero(unpublished(clean_db)))
    relay.stop()
    await task
    [message] = await take(broker, topology.unrouted, 1)
    assert message.message_id == event.id
