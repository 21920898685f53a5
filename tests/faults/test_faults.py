"""Faults injected one at a time under a steady stream of writes, against two replicas of
each service, a three-node RabbitMQ cluster and a PostgreSQL of their own
(docs/operations.md#the-fault-suite). After each: nothing acknowledged is lost, no answer was
a 500, the failures stopped within 5 s of the fault ending, and the dead-letter queues are
empty. `make test-faults` runs this module."""

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from tests.faults.clusters import queue_depth
from tests.faults.conftest import RATE, World
from tests.faults.ledger import SteadyLoad
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import ServiceProcess
from tests.support.waiting import eventually
from tests.sync.fake_process import start_fake
from tests.sync.test_crash import (
    DELAY,
    MEMBERS,
    finished,
    prepare,
    run_of,
    segment_at_fake,
    start_sync,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

RECOVERY_SECONDS = 5.0
# How long the slow, lossy database path lasts (the 60 s by default).
LOSSY_SECONDS = float(os.environ.get("FAULTS_LOSSY_SECONDS", "60"))
OUTAGE_SECONDS = 30.0
WORKERS = ("sync-worker", "metrics-worker")


class EventTap:
    """A queue of the test's own bound to every event: which event ids reached the broker."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.name = f"{world.prefix}.faults-tap"
        self.seen: set[str] = set()
        self.since = 0  # outbox rows up to this id were written before the tap existed

    async def _channel(
        self,
    ) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
        for node in self.world.rabbit.nodes:
            try:
                connection = await aio_pika.connect(node.url, timeout=5)
            except Exception:  # a node the test killed
                continue
            return connection, await connection.channel()
        raise RuntimeError("no RabbitMQ node answers")

    async def declare(self) -> None:
        connection, channel = await self._channel()
        try:
            queue = await channel.declare_queue(
                self.name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(f"{self.world.prefix}.events", routing_key="#")
        finally:
            await connection.close()

    async def drain(self) -> set[str]:
        connection, channel = await self._channel()
        try:
            await channel.set_qos(prefetch_count=2000)
            queue = await channel.declare_queue(self.name, passive=True)
            async with queue.iterator() as messages:
                while True:
                    try:
                        message = await asyncio.wait_for(messages.__anext__(), 2)
                    except TimeoutError:
                        break
                    if message.message_id:
                        self.seen.add(message.message_id)
                    await message.ack()
        finally:
            await connection.close()
        return self.seen


@pytest_asyncio.fixture(scope="module")
async def tap(world: World) -> AsyncIterator[EventTap]:
    tap = EventTap(world)
    await tap.declare()
    async with world.engine.connect() as conn:
        tap.since = int(
            (await conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox"))).scalar_one()
        )
    yield tap


async def assert_nothing_lost(world: World, tap: EventTap) -> None:
    ledger = world.ledger
    assert not ledger.server_errors, ledger.server_errors[:5]
    assert ledger.statuses[500] == 0, ledger.statuses
    async with world.engine.connect() as conn:
        kept: dict[str, str] = dict(
            (
                await conn.execute(
                    text("SELECT external_id, email FROM customers WHERE external_id = ANY(:ids)"),
                    {"ids": list(ledger.customers)},
                )
            ).all()
        )
        assert kept == ledger.customers
        orders = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE external_id = ANY(:ids)"),
                {"ids": list(ledger.orders)},
            )
        ).scalar_one()
        assert orders == len(ledger.orders)

    async def unpublished() -> int:
        async with world.engine.connect() as conn:
            waiting = await conn.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            )
            return int(waiting.scalar_one())

    assert await eventually(unpublished, lambda count: count == 0, within=60) == 0
    seen = await tap.drain()
    async with world.engine.connect() as conn:
        written = {
            str(event_id)
            for event_id in (
                await conn.execute(
                    text("SELECT event_id FROM outbox WHERE id > :since"),
                    {"since": tap.since},
                )
            ).scalars()
        }
    missing = written - seen
    assert not missing, f"{len(missing)} of {len(written)} events never reached the broker"


async def assert_dead_letters_empty(world: World) -> None:
    url = next(n.url for n in world.rabbit.nodes if n.process and n.process.returncode is None)
    for service in WORKERS:
        depth = await queue_depth(url, f"{world.prefix}.{service}.dlq")
        assert depth == 0, f"{depth} dead letters for {service}"


async def steady(seconds: float) -> None:
    await asyncio.sleep(seconds)


def assert_recovered(world: World, fault_ended: float) -> None:
    seconds = world.ledger.recovery_seconds(fault_ended)
    answers = dict(world.ledger.statuses)
    sys.stderr.write(f"\nrecovered {seconds:.1f} s after the fault ended; answers {answers}\n")
    late = [u for u in world.ledger.unanswered if u[0] >= fault_ended]
    assert seconds <= RECOVERY_SECONDS, (world.ledger.failures_after(fault_ended)[-10:], late[-5:])


@pytest.mark.asyncio
async def test_a_broker_node_leading_the_queues_is_killed(world: World, tap: EventTap) -> None:
    async with SteadyLoad(world.api_urls, world.ledger, RATE, "broker"):
        await steady(5)
        leader = await world.rabbit.leader_of(f"{world.prefix}.metrics-worker")
        leader.kill()
        ended = time.monotonic()
        await steady(15)
    assert_recovered(world, ended)
    await assert_nothing_lost(world, tap)
    await leader.start()
    await assert_dead_letters_empty(world)


@pytest.mark.asyncio
async def test_postgres_restarts_immediately_after_30_s_away(world: World, tap: EventTap) -> None:
    async with SteadyLoad(world.api_urls, world.ledger, RATE, "restart"):
        await steady(5)
        await world.postgres.restart_immediately(down_for=OUTAGE_SECONDS)
        ended = time.monotonic()
        await steady(15)
    assert_recovered(world, ended)
    await assert_nothing_lost(world, tap)
    await assert_dead_letters_empty(world)


@pytest.mark.asyncio
async def test_a_slow_lossy_path_to_the_database(world: World, tap: EventTap) -> None:
    """300 ms more per round trip, and 5% of connections reset, for a minute."""
    async with SteadyLoad(world.api_urls, world.ledger, RATE, "lossy"):
        await steady(5)
        world.proxy.latency, world.proxy.reset_fraction = 0.3, 0.05
        await steady(LOSSY_SECONDS)
        world.proxy.latency, world.proxy.reset_fraction = 0.0, 0.0
        ended = time.monotonic()
        await steady(15)
    assert_recovered(world, ended)
    await assert_nothing_lost(world, tap)
    await assert_dead_letters_empty(world)


async def counters(services: list[ServiceProcess], metric: str) -> list[float]:
    """A Prometheus counter's total in each service, in order."""
    totals = []
    async with httpx.AsyncClient(timeout=5) as client:
        for service in services:
            response = await client.get(f"{service.url}/metrics")
            totals.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in response.text.splitlines()
                    if line.startswith(metric)
                )
            )
    return totals


async def the_busy_one(services: list[ServiceProcess], metric: str) -> ServiceProcess:
    """The service whose counter rises fastest: the one doing the work."""
    before = await counters(services, metric)
    await asyncio.sleep(0.5)
    after = await counters(services, metric)
    return services[max(range(len(services)), key=lambda i: after[i] - before[i])]


@pytest.mark.asyncio
async def test_the_publishing_relay_is_killed_mid_backlog(world: World, tap: EventTap) -> None:
    """SIGKILL of the API replica that took a 4,000-customer bulk write, and of the process
    publishing its 4,000 events: the balancer sends the load to the other replica, another
    relay takes the leadership over and publishes the rest. (segment-api's relays stand by
    while a worker's can lead, so the publisher is usually a worker.)"""
    async with (
        SteadyLoad(world.api_urls, world.ledger, RATE, "relay"),
        httpx.AsyncClient(
            base_url=world.api_urls[0], headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
        ) as api,
    ):
        await steady(3)
        people = [
            {"external_id": f"backlog-{i}", "email": f"backlog{i}@example.com"} for i in range(4000)
        ]
        response = await api.post("/v1/customers/bulk", json={"customers": people})
        assert response.status_code == 200, response.text
        publisher = await the_busy_one(world.every_service(), "segments_outbox_published_total")
        # One API replica dies either way: the publisher itself, or the first one.
        apis = world.services["segment-api"]
        victims = [publisher] if publisher in apis else [publisher, apis[0]]
        for victim in victims:
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
        for victim in victims:
            assert victim.process is not None
            await victim.process.wait()
        ended = time.monotonic()
        await steady(10)
        await asyncio.gather(*(victim.start() for victim in victims))
    assert_recovered(world, ended)
    await assert_nothing_lost(world, tap)
    async with world.engine.connect() as conn:
        kept = await conn.execute(
            text("SELECT count(*) FROM customers WHERE external_id LIKE 'backlog-%'")
        )
        assert kept.scalar_one() == 4000
    await assert_dead_letters_empty(world)


@pytest.mark.asyncio
async def test_a_sync_worker_is_killed_mid_sync(world: World, tap: EventTap) -> None:
    """SIGKILL of the sync-worker sending a 20,000-member sync to Mailchimp (its fake, in
    its own process): the other replica takes the run over when its lease runs out, and the
    destination ends holding exactly the segment's members."""
    fake = await start_fake("mailchimp", "--list-id", "list1")
    try:
        async with (
            SteadyLoad(world.api_urls, world.ledger, RATE, "sync"),
            httpx.AsyncClient(
                base_url=world.api_urls[0],
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=60,
            ) as api,
        ):
            segment_id, destination_id = await prepare(api, fake, "Killed mid-sync", "fk")
            await fake.faults(DELAY)
            run_id = await start_sync(api, segment_id, destination_id)
            run = await eventually(
                lambda: run_of(api, run_id), lambda r: r["stats"]["added"] >= 2000, within=90
            )
            assert 0 < run["stats"]["added"] < MEMBERS, run
            victim = await the_busy_one(
                world.services["sync-worker"], "segments_vendor_limiter_wait_seconds_count"
            )
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            ended = time.monotonic()
            await victim.start()
            await fake.clear_faults()
            run = await finished(api, run_id, within=180)
        assert run["status"] == "succeeded", run
        expected = {f"fk{i}@example.com" for i in range(MEMBERS)}
        assert await segment_at_fake(fake, "Killed mid-sync") == expected
    finally:
        await fake.stop()
    assert_recovered(world, ended)
    await assert_nothing_lost(world, tap)
    await assert_dead_letters_empty(world)


@pytest.mark.asyncio
async def test_sigterm_stops_everything_quickly_and_loses_nothing(
    world: World, tap: EventTap
) -> None:
    async with SteadyLoad(world.api_urls, world.ledger, RATE, "stop"):
        await steady(5)
        started = time.monotonic()
        codes = await asyncio.gather(*(s.stop(signal.SIGTERM) for s in world.every_service()))
        took = time.monotonic() - started
    assert codes == [0] * len(codes), codes
    assert took < 30, took
    await asyncio.gather(*(s.start() for s in world.every_service()))
    await assert_nothing_lost(world, tap)
    await assert_dead_letters_empty(world)
