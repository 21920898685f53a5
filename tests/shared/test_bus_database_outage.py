"""A consumer whose database goes away: the messages wait in the consumer and are retried
after the back-off, without spending their delivery limit, and each is handled exactly once
when the database is back; nothing reaches the dead-letter queue. The database is behind a
TCP proxy the test cuts; the broker and the checks use it directly."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import pytest
import pytest_asyncio
from aio_pika.abc import AbstractConnection
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.bus.consumer import EventConsumer
from segments_shared.bus.topology import Topology
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.events import Event
from tests.fixtures.infra import AMQP_URL
from tests.fixtures.proxy import TcpProxy
from tests.shared.test_bus import (
    RECORD_SIDE_EFFECT,
    SIDE_EFFECTS,
    customer_changed,
    every_bound_type,
    queue_depth,
)
from tests.shared.test_bus_channels import inbox_count, publish
from tests.support.waiting import wait_for

SERVICE = "metrics-worker"
# Quick enough for a test; an outage of OUTAGE_SECONDS still sees many retries per message.
RETRIES = BackoffPolicy(base=0.1, cap=1.0)
OUTAGE_SECONDS = 6.0


@pytest_asyncio.fixture
async def proxied_database(clean_db: AsyncEngine) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """The test database behind a proxy, and an engine that reaches it through the proxy."""
    target = clean_db.url
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    url = make_url(target.render_as_string(hide_password=False)).set(host="127.0.0.1", port=port)
    engine = create_engine(
        DatabaseSettings(
            database_url=url.render_as_string(hide_password=False),
            database_connect_timeout=2.0,
        ),
        pool_size=2,
    )
    yield proxy, engine
    await engine.dispose()
    await proxy.cut()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, conn: AsyncConnection, event: Event) -> None:
        self.calls.append(event.id)
        await conn.execute(RECORD_SIDE_EFFECT, {"n": event.id})


def consumed(outcome: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "segments_events_consumed":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["outcome"] == outcome:
                    total += sample.value
    return total


@pytest.mark.asyncio
async def test_messages_wait_out_a_database_outage_and_are_handled_once(
    proxied_database: tuple[TcpProxy, AsyncEngine],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    proxy, engine = proxied_database
    topology = Topology(bus_prefix)
    recorder = Recorder()
    consumer = EventConsumer(
        engine, AMQP_URL, topology, SERVICE, every_bound_type(recorder), retry_backoff=RETRIES
    )
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _true(consumer.broker_connected))
        await proxy.cut()  # the database goes away
        retried_before = consumed("retried")
        events = [customer_changed(f"outage-{n}") for n in range(5)]
        for event in events:
            await publish(broker, topology, event)
        went_away = time.monotonic()
        # Far longer than six immediate redeliveries take: each message is retried many
        # times, and none is dead-lettered.
        while time.monotonic() - went_away < OUTAGE_SECONDS:
            assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
            await asyncio.sleep(0.5)
        assert consumed("retried") - retried_before >= 6 * len(events)
        assert recorder.calls == []

        await proxy.start(proxy.port)  # the database is back
        await wait_for(lambda: _equals(inbox_count(clean_db), len(events)), within=15)
        await wait_for(lambda: _equals(queue_depth(broker, topology.service_queue(SERVICE)), 0))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert sorted(recorder.calls) == sorted(event.id for event in events)
    async with clean_db.connect() as conn:
        side_effects = (await conn.execute(SIDE_EFFECTS)).scalars().all()
    assert sorted(side_effects) == sorted(event.id for event in events)
    assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0


@pytest.mark.asyncio
async def test_stopping_during_an_outage_requeues_the_waiting_message(
    proxied_database: tuple[TcpProxy, AsyncEngine],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    """The stop does not wait for the database: the message goes back to the queue (one
    delivery spent) for the next consumer."""
    proxy, engine = proxied_database
    topology = Topology(bus_prefix)
    recorder = Recorder()
    consumer = EventConsumer(
        engine, AMQP_URL, topology, SERVICE, every_bound_type(recorder), retry_backoff=RETRIES
    )
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: _true(consumer.broker_connected))
    await proxy.cut()
    retried_before = consumed("retried")
    await publish(broker, topology, customer_changed("stopped-while-waiting"))
    await wait_for(lambda: _true(consumed("retried") > retried_before))
    stopped_at = time.monotonic()
    consumer.stop()
    await asyncio.wait_for(task, 30)
    assert time.monotonic() - stopped_at < 5  # not the 25 s grace for handlers in flight
    await wait_for(lambda: _equals(queue_depth(broker, topology.service_queue(SERVICE)), 1))
    assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
    assert recorder.calls == []
    assert await inbox_count(clean_db) == 0


async def _true(value: bool) -> bool:
    return value


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
