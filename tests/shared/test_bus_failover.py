"""`SEGMENTS_AMQP_URL` naming several nodes of a cluster: a connection skips a node that
refuses or does not answer, and when the node in use goes away the relay and the consumer
move to another with their channels and consumer, losing nothing.

The nodes are TCP proxies in front of the one local broker: cutting a proxy is, to the
services, that node dying."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable

import pytest
from aio_pika.abc import AbstractConnection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from segments_shared.bus.connection import BrokerConnection, broker_addresses, connect_first
from segments_shared.bus.consumer import EventConsumer
from segments_shared.bus.outbox import add_events
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology
from tests.fixtures.infra import AMQP_URL
from tests.fixtures.processes import free_port
from tests.fixtures.proxy import TcpProxy
from tests.shared.test_bus import customer_changed, every_bound_type, queue_depth
from tests.shared.test_bus_channels import Recorder, inbox_count
from tests.support.waiting import wait_for

SERVICE = "metrics-worker"
BROKER = URL(AMQP_URL)


def node(proxy: TcpProxy) -> str:
    return f"127.0.0.1:{proxy.port}"


def cluster_url(*ports: int) -> str:
    """The test broker's URL naming each port as a node: the first in full, the others as
    host:port."""
    first = str(BROKER.with_host("127.0.0.1").with_port(ports[0]))
    return ",".join([first, *(f"127.0.0.1:{port}" for port in ports[1:])])


async def proxy_to_broker() -> TcpProxy:
    proxy = TcpProxy(BROKER.host or "127.0.0.1", BROKER.port or 5672)
    await proxy.start()
    return proxy


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A node that accepts connections and never answers (a hung or unreachable host)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_node_that_refuses_is_skipped_for_the_next() -> None:
    proxy = await proxy_to_broker()
    try:
        url = cluster_url(free_port(), proxy.port)  # nothing listens on the first
        connection, index = await connect_first(broker_addresses(url), "test", start=0)
        await connection.close()
        assert index == 1
        broker = BrokerConnection(url, "test")
        await broker.connect()
        assert broker.is_connected
        assert broker.connected_to == node(proxy)
        await broker.close()
    finally:
        await proxy.cut()


@pytest.mark.asyncio
async def test_a_node_that_does_not_answer_is_given_up_after_its_timeout() -> None:
    proxy = await proxy_to_broker()
    try:
        async with silent_server() as silent:
            url = cluster_url(silent, proxy.port)
            started = time.monotonic()
            connection, index = await connect_first(
                broker_addresses(url), "test", start=0, seconds_each=1.0
            )
            await connection.close()
        assert index == 1
        assert time.monotonic() - started < 5
    finally:
        await proxy.cut()


@pytest.mark.asyncio
async def test_relay_and_consumer_fail_over_when_their_node_dies(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    first, second = await proxy_to_broker(), await proxy_to_broker()
    await second.cut()  # down at the start, so that both connect to the first
    url = cluster_url(first.port, second.port)
    recorder = Recorder()
    consumer = EventConsumer(clean_db, url, topology, SERVICE, every_bound_type(recorder))
    relay = OutboxRelay(clean_db, url, topology)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    try:
        before = customer_changed("before-failover")
        async with clean_db.begin() as conn:
            await add_events(conn, [before])
        await wait_for(lambda: _equals(inbox_count(clean_db), 1), within=20)
        assert consumer.broker.connected_to == relay.broker.connected_to == node(first)

        await second.start(second.port)
        await first.cut()  # the node in use dies
        cut_at = time.monotonic()
        after = customer_changed("after-failover")
        async with clean_db.begin() as conn:
            await add_events(conn, [after])
        await wait_for(lambda: _equals(inbox_count(clean_db), 2), within=10)
        assert time.monotonic() - cut_at < 10
        assert consumer.broker.connected_to == relay.broker.connected_to == node(second)
        assert consumer.broker_connected
        assert relay.broker_connected
        assert recorder.calls == [before.id, after.id]
        async with clean_db.connect() as conn:
            unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            assert (await conn.execute(text(unpublished))).scalar_one() == 0
        assert await queue_depth(broker, topology.dead_letter_queue(SERVICE)) == 0
    finally:
        consumer.stop()
        relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await first.cut()
        await second.cut()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
