"""A consumer whose database goes away: the messages wait in the consumer and are retried
after the back-off, without spending their delivery limit, and each is handled exactly once
when the database is back; nothing reaches the dead-letter queue. A message is held at most
the consumer's hold limit (below the broker's consumer_timeout), then requeued at the cost of
one delivery. A timeout the work itself may cause (statement timeout, command timeout) is
retried a few times only, so a message that always overruns is dead-lettered. The database is
behind a TCP proxy the test cuts; the broker and the checks use it directly."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import pytest_asyncio
from aio_pika.abc import AbstractConnection
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.bus.consumer import TIMEOUT_ATTEMPTS, EventConsumer, HandlerFunction
from segments_shared.bus.topology import DELIVERY_LIMIT, Topology
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine, driver_connection
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


# Each delivery of a message is held this long at most in the tests (20 minutes in service).
HOLD_LIMIT = 1.0
DELIVERIES = DELIVERY_LIMIT + 1  # the first and the redeliveries the limit allows


@pytest_asyncio.fixture
async def proxied_database(clean_db: AsyncEngine) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """The test database behind a proxy, and an engine that reaches it through the proxy."""
    async with through_proxy(clean_db, connect_timeout=2.0) as proxied:
        yield proxied


@contextlib.asynccontextmanager
async def through_proxy(
    clean_db: AsyncEngine, *, connect_timeout: float
) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    target = clean_db.url
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    url = make_url(target.render_as_string(hide_password=False)).set(host="127.0.0.1", port=port)
    engine = create_engine(
        DatabaseSettings(
            database_url=url.render_as_string(hide_password=False),
            database_connect_timeout=connect_timeout,
        ),
        pool_size=2,
    )
    try:
        yield proxy, engine
    finally:
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


def consumer_of(
    engine: AsyncEngine, topology: Topology, handler: Any, **options: Any
) -> EventConsumer:
    """This module's consumer: every bound type to `handler`, quick retries."""
    return EventConsumer(
        engine,
        AMQP_URL,
        topology,
        SERVICE,
        every_bound_type(handler),
        retry_backoff=RETRIES,
        **options,
    )


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
    consumer = consumer_of(engine, topology, recorder)
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
    consumer = consumer_of(engine, topology, recorder)
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


@pytest.mark.asyncio
async def test_a_message_held_for_the_hold_limit_is_requeued_at_the_cost_of_one_delivery(
    proxied_database: tuple[TcpProxy, AsyncEngine],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held unacknowledged past the broker's consumer_timeout, a message would have its
    channel closed, and every delivery on it redelivered. So after the hold limit the consumer
    requeues it, one delivery spent, and waits again on the redelivery; the message is
    handled once the database is back, and is not dead-lettered."""
    caplog.set_level(logging.WARNING, logger="segments_shared.bus.consumer")
    proxy, engine = proxied_database
    topology = Topology(bus_prefix)
    recorder = Recorder()
    consumer = consumer_of(engine, topology, recorder, hold_limit=HOLD_LIMIT)
    task = asyncio.create_task(consumer.run())
    event = customer_changed("held-for-the-limit")
    try:
        await wait_for(lambda: _true(consumer.broker_connected))
        await proxy.cut()
        requeued_before = consumed("requeued")
        published = time.monotonic()
        await publish(broker, topology, event)
        await wait_for(lambda: _true(consumed("requeued") - requeued_before >= 2))
        assert time.monotonic() - published >= 2 * HOLD_LIMIT
        assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
        # The delivery held first had no redelivery count, the next one had 1.
        holds = [
            record
            for record in caplog.records
            if getattr(record, "event_id", None) == event.id
            and record.getMessage().startswith("event still failing")
        ]
        assert [getattr(hold, "delivery_count", None) for hold in holds][:2] == [0, 1]
        assert all(getattr(hold, "held_s", 0) >= HOLD_LIMIT for hold in holds)

        await proxy.start(proxy.port)
        await wait_for(lambda: _equals(inbox_count(clean_db), 1))
        await wait_for(lambda: _equals(queue_depth(broker, topology.service_queue(SERVICE)), 0))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert recorder.calls == [event.id]
    assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0


@pytest.mark.asyncio
async def test_only_an_outage_of_every_delivery_s_hold_limit_dead_letters(
    proxied_database: tuple[TcpProxy, AsyncEngine],
    broker: AbstractConnection,
    bus_prefix: str,
) -> None:
    """The real bound (docs/operations.md#dead-letters): each delivery waits the hold limit,
    so a message is dead-lettered only after six of them, the delivery limit spent."""
    proxy, engine = proxied_database
    topology = Topology(bus_prefix)
    hold_limit = 0.3
    consumer = consumer_of(engine, topology, Recorder(), hold_limit=hold_limit)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: _true(consumer.broker_connected))
        await proxy.cut()
        requeued_before = consumed("requeued")
        published = time.monotonic()
        await publish(broker, topology, customer_changed("outage-past-every-hold"))
        await wait_for(lambda: _equals(queue_depth(broker, topology.dead_letter_queue(SERVICE)), 1))
        assert time.monotonic() - published >= DELIVERIES * hold_limit
        assert consumed("requeued") - requeued_before == DELIVERIES
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def overrun_statement_timeout(conn: AsyncConnection, event: Event) -> None:
    """A statement slower than the database allows, every time: 57014, query_canceled."""
    await conn.execute(text("SET LOCAL statement_timeout = '20ms'"))
    await conn.execute(text("SELECT pg_sleep(0.5)"))


async def overrun_command_timeout(conn: AsyncConnection, event: Event) -> None:
    """A statement slower than asyncpg's command timeout, every time: TimeoutError."""
    driver = await driver_connection(conn)
    await driver.execute("SELECT pg_sleep(0.5)", timeout=0.02)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "overrun",
    [overrun_statement_timeout, overrun_command_timeout],
    ids=["statement timeout", "command timeout"],
)
async def test_a_message_that_always_times_out_is_dead_lettered(
    overrun: HandlerFunction, clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    """A timeout may be the work's own slowness: retried in place a few times per delivery,
    then a failure like any other, so the message reaches the dead-letter queue after the
    delivery limit instead of looping for ever."""
    attempts: list[str] = []

    async def handler(conn: AsyncConnection, event: Event) -> None:
        attempts.append(event.id)
        await overrun(conn, event)

    topology = Topology(bus_prefix)
    consumer = consumer_of(clean_db, topology, handler)
    task = asyncio.create_task(consumer.run())
    errors_before = consumed("error")
    try:
        await wait_for(lambda: _true(consumer.broker_connected))
        await publish(broker, topology, customer_changed("always-overruns"))
        await wait_for(
            lambda: _equals(queue_depth(broker, topology.dead_letter_queue(SERVICE)), 1),
            within=30,
        )
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert len(attempts) == DELIVERIES * TIMEOUT_ATTEMPTS
    assert consumed("error") - errors_before == DELIVERIES
    assert await inbox_count(clean_db) == 0


@pytest.mark.asyncio
async def test_a_database_that_never_answers_is_waited_out_past_the_timeout_attempts(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    """asyncpg's connect timeout is the same TimeoutError as its command timeout, but a
    connection not opened in time is the database's trouble, never the message's: retried
    without counting towards the timeout attempts."""
    async with through_proxy(clean_db, connect_timeout=0.3) as (proxy, engine):
        topology = Topology(bus_prefix)
        recorder = Recorder()
        consumer = consumer_of(engine, topology, recorder)
        task = asyncio.create_task(consumer.run())
        try:
            await wait_for(lambda: _true(consumer.broker_connected))
            proxy.silent = True  # new connections are never answered
            await proxy.reset()  # and the pooled ones are gone
            retried_before, errors_before = consumed("retried"), consumed("error")
            await publish(broker, topology, customer_changed("silent-database"))
            await wait_for(
                lambda: _true(consumed("retried") - retried_before >= 2 * TIMEOUT_ATTEMPTS),
                within=30,
            )
            assert consumed("error") == errors_before
            assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
            assert recorder.calls == []

            proxy.silent = False
            await wait_for(lambda: _equals(inbox_count(clean_db), 1))
        finally:
            consumer.stop()
            await asyncio.wait_for(task, 30)
        assert len(recorder.calls) == 1
        assert consumed("error") == errors_before


async def _true(value: bool) -> bool:
    return value


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
