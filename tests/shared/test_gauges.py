"""The gauges of what is waiting (SPEC section 2): the outbox backlog while nothing publishes,
each worker queue's and dead-letter queue's depth, overdue subscriptions, readiness;
`/metrics` answering at once while the database or the broker is away, the gauges of that
source left out meanwhile and back once it answers; and all three services exporting them as
processes, with the broker cut so that their relays publish nothing."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractConnection
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from segments_shared.bus.topology import SERVICE_BINDINGS, Topology
from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from segments_shared.gauges import WaitingGauges
from segments_shared.health import Dependency, create_health_app, database_check, serve_health
from tests.fixtures.infra import AMQP_URL
from tests.fixtures.processes import free_port, running_suite
from tests.fixtures.proxy import TcpProxy
from tests.support.waiting import eventually

# Gauges refreshed this often in the in-process tests (every 5 s in service).
INTERVAL = 0.2
# A scrape that waited for a silent database would take the loop's 5 s timeout at least.
PROMPT_SECONDS = 1.0
WAITING_TYPE = "tests.waiting"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def queue_labels(topology: Topology, consumer: str, *, dead: bool) -> dict[str, str]:
    queue = topology.dead_letter_queue(consumer) if dead else topology.service_queue(consumer)
    return {"queue": queue, "consumer": consumer}


async def write_waiting_events(engine: AsyncEngine, ages: list[int]) -> None:
    """Outbox rows nobody publishes here, created `ages` seconds ago; a type no queue binds,
    so that a relay publishing them later feeds no consumer."""
    async with engine.begin() as conn:
        for age in ages:
            await conn.execute(
                text(
                    "INSERT INTO outbox (event_id, event_type, payload, created_at) "
                    "VALUES (gen_random_uuid(), :type, '{}', now() - make_interval(secs => :age))"
                ),
                {"type": WAITING_TYPE, "age": age},
            )


async def publish_to(connection: AbstractConnection, queue: str, count: int) -> None:
    channel = await connection.channel()
    try:
        for n in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(f"not an event {n}".encode()), routing_key=queue
            )
    finally:
        await channel.close()


async def purge(connection: AbstractConnection, topology: Topology) -> None:
    channel = await connection.channel()
    try:
        for name in topology.all_queues():
            await (await channel.get_queue(name, ensure=False)).purge()
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def database_through_proxy(
    clean_db: AsyncEngine,
) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """The test database behind a proxy the test can silence, and an engine through it."""
    target = clean_db.url
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    url = make_url(target.render_as_string(hide_password=False)).set(host="127.0.0.1", port=port)
    engine = create_engine(
        DatabaseSettings(
            database_url=url.render_as_string(hide_password=False), database_connect_timeout=2.0
        ),
        pool_size=2,
    )
    try:
        yield proxy, engine
    finally:
        await engine.dispose()
        await proxy.cut()


@contextlib.asynccontextmanager
async def gauges_served(
    engine: AsyncEngine, amqp_url: str, topology: Topology
) -> AsyncIterator[Callable[[], Awaitable[tuple[float, Samples]]]]:
    """A gauge loop and `/metrics` served over HTTP as a worker serves them; yields a scrape
    that returns how long it took and what it read."""
    dependencies = [Dependency("database", database_check(engine))]
    gauges = WaitingGauges(
        "sync-worker", engine, amqp_url, topology, dependencies, interval=INTERVAL
    )
    stopping = asyncio.Event()
    port = free_port()
    tasks = [
        asyncio.create_task(gauges.run()),
        asyncio.create_task(
            serve_health(create_health_app(dependencies), "127.0.0.1", port, stopping)
        ),
    ]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        async def scrape() -> tuple[float, Samples]:
            started = time.monotonic()
            try:
                response = await client.get("/metrics")
            except httpx.ConnectError:  # not listening yet
                return 0.0, {}
            assert response.status_code == 200
            return time.monotonic() - started, parse(response.text)

        try:
            yield scrape
        finally:
            gauges.stop()
            stopping.set()
            await asyncio.gather(*tasks)
    # Stopped, the loop closed its broker connection and its gauges are no longer exported.
    assert gauges.broker.connection is None
    assert (
        value(parse(generate_latest().decode()), "segments_ready", service_name="sync-worker")
        is None
    )


@pytest.mark.asyncio
async def test_gauges_report_the_outbox_backlog_and_each_queue_depth(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    await write_waiting_events(clean_db, [120, 30, 0])
    await publish_to(broker, topology.service_queue("sync-worker"), 4)
    await publish_to(broker, topology.dead_letter_queue("metrics-worker"), 2)
    try:
        async with gauges_served(clean_db, AMQP_URL, topology) as scrape:
            _, samples = await eventually(
                scrape, lambda got: value(got[1], "segments_outbox_backlog") == 3, within=10
            )
    finally:
        await purge(broker, topology)

    assert value(samples, "segments_outbox_backlog") == 3
    oldest = value(samples, "segments_outbox_oldest_age_seconds")
    assert oldest is not None
    assert 120 <= oldest < 180
    expected = {
        ("segments_queue_depth", "sync-worker"): 4,
        ("segments_queue_depth", "metrics-worker"): 0,
        ("segments_dead_letter_depth", "sync-worker"): 0,
        ("segments_dead_letter_depth", "metrics-worker"): 2,
    }
    assert set(SERVICE_BINDINGS) == {"sync-worker", "metrics-worker"}
    for (name, consumer), depth in expected.items():
        labels = queue_labels(topology, consumer, dead=name == "segments_dead_letter_depth")
        assert value(samples, name, **labels) == depth, (name, consumer)
    assert value(samples, "segments_ready", service_name="sync-worker") == 1


SUBSCRIBE = text(
    """
    INSERT INTO subscriptions (id, segment_id, destination_id, schedule, active)
    VALUES (gen_random_uuid(), :segment, :destination,
            '{"mode": "interval", "every_minutes": 15}', :active)
    RETURNING id
    """
)


async def subscribe(engine: AsyncEngine) -> None:
    """Five subscriptions of the default segments to one destination, two of them overdue:
    one whose job has waited five minutes, one whose holder died five minutes ago. Not
    overdue: a job due ten seconds ago, a paused subscription's, an inactive segment's."""
    cases = [
        ("due_at", 300, True, True),
        ("lease_expires_at", 300, True, True),
        ("due_at", 10, True, True),
        ("due_at", 300, False, True),
        ("due_at", 300, True, False),
    ]
    async with engine.begin() as conn:
        destination = (
            await conn.execute(
                text(
                    "INSERT INTO destinations (id, name, type, config, secrets, account_key) "
                    "VALUES (gen_random_uuid(), 'hooks', 'webhook', '{}', '', 'hooks') "
                    "RETURNING id"
                )
            )
        ).scalar_one()
        segments = list(
            (
                await conn.execute(
                    text("SELECT id FROM segments WHERE kind = 'default' ORDER BY id")
                )
            ).scalars()
        )
        assert len(segments) >= len(cases)
        for (column, age, active, segment_active), segment in zip(cases, segments, strict=False):
            subscription = (
                await conn.execute(
                    SUBSCRIBE, {"segment": segment, "destination": destination, "active": active}
                )
            ).scalar_one()
            owner = "'gone-worker'" if column == "lease_expires_at" else "NULL"
            await conn.execute(
                text(
                    f"INSERT INTO jobs (queue, key, lease_owner, {column}) "
                    f"VALUES ('subscription', :key, {owner}, "
                    "now() - make_interval(secs => :age))"
                ),
                {"key": str(subscription), "age": age},
            )
            if not segment_active:
                await conn.execute(
                    text("UPDATE segments SET active = false WHERE id = :id"), {"id": segment}
                )


@pytest.mark.asyncio
async def test_gauges_count_overdue_subscriptions(clean_db: AsyncEngine, bus_prefix: str) -> None:
    await subscribe(clean_db)
    async with gauges_served(clean_db, AMQP_URL, Topology(bus_prefix)) as scrape:
        _, samples = await eventually(
            scrape,
            lambda got: value(got[1], "segments_subscriptions_overdue") is not None,
            within=10,
        )
    assert value(samples, "segments_subscriptions_overdue") == 2


@pytest.mark.asyncio
async def test_metrics_answer_at_once_while_the_database_is_away(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    await write_waiting_events(clean_db, [10])
    async with (
        database_through_proxy(clean_db) as (proxy, engine),
        gauges_served(engine, AMQP_URL, topology) as scrape,
    ):
        _, samples = await eventually(
            scrape, lambda got: value(got[1], "segments_outbox_backlog") == 1, within=10
        )
        assert value(samples, "segments_outbox_backlog") == 1

        # The database goes silent: connections are accepted and never answered.
        proxy.silent = True
        await proxy.reset()
        seen: list[float] = []

        async def timed_scrape() -> tuple[float, Samples]:
            took, got = await scrape()
            seen.append(took)
            return took, got

        _, samples = await eventually(
            timed_scrape,
            lambda got: (
                value(got[1], "segments_outbox_backlog") is None
                and value(got[1], "segments_ready", service_name="sync-worker") == 0
            ),
            within=15,
            every=0.1,
        )
        assert value(samples, "segments_outbox_backlog") is None
        assert value(samples, "segments_outbox_oldest_age_seconds") is None
        assert value(samples, "segments_subscriptions_overdue") is None
        assert value(samples, "segments_ready", service_name="sync-worker") == 0
        # The broker still answers: its gauges stay.
        labels = queue_labels(topology, "sync-worker", dead=False)
        assert value(samples, "segments_queue_depth", **labels) == 0
        # Scrapes keep answering at once during the outage, several loop rounds long.
        for _ in range(10):
            await timed_scrape()
            await asyncio.sleep(0.2)
        assert max(seen) < PROMPT_SECONDS, seen

        proxy.silent = False
        _, samples = await eventually(
            scrape, lambda got: value(got[1], "segments_outbox_backlog") == 1, within=15
        )
        assert value(samples, "segments_outbox_backlog") == 1
        assert value(samples, "segments_ready", service_name="sync-worker") == 1


@pytest.mark.asyncio
async def test_queue_gauges_leave_and_return_with_the_broker(
    clean_db: AsyncEngine, broker: AbstractConnection, bus_prefix: str
) -> None:
    topology = Topology(bus_prefix)
    target = URL(AMQP_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5672)
    port = await proxy.start()
    labels = queue_labels(topology, "metrics-worker", dead=True)
    try:
        async with gauges_served(
            clean_db, str(target.with_host("127.0.0.1").with_port(port)), topology
        ) as scrape:
            _, samples = await eventually(
                scrape,
                lambda got: value(got[1], "segments_dead_letter_depth", **labels) == 0,
                within=10,
            )
            assert value(samples, "segments_dead_letter_depth", **labels) == 0

            await proxy.cut()
            took, samples = await eventually(
                scrape,
                lambda got: value(got[1], "segments_dead_letter_depth", **labels) is None,
                within=15,
            )
            assert value(samples, "segments_dead_letter_depth", **labels) is None
            assert took < PROMPT_SECONDS
            # The database still answers.
            assert value(samples, "segments_outbox_backlog") == 0

            await publish_to(broker, topology.dead_letter_queue("metrics-worker"), 1)
            await proxy.start(port)
            _, samples = await eventually(
                scrape,
                lambda got: value(got[1], "segments_dead_letter_depth", **labels) == 1,
                within=20,
            )
            assert value(samples, "segments_dead_letter_depth", **labels) == 1
    finally:
        await proxy.cut()
        await purge(broker, topology)


async def scrape_service(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    return parse(response.text)


@pytest.mark.asyncio
async def test_every_service_exports_the_gauges(
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    broker: AbstractConnection,
    bus_prefix: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The three services as processes, their broker behind a proxy: cut, the relays publish
    nothing and the backlog every service reports is the outbox's; restored, it drains and
    every worker queue's depth is reported by every service."""
    topology = Topology(bus_prefix)
    target = URL(AMQP_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5672)
    port = await proxy.start()
    env = {**service_env, "SEGMENTS_AMQP_URL": str(target.with_host("127.0.0.1").with_port(port))}
    try:
        async with (
            running_suite(env, tmp_path, request) as suite,
            httpx.AsyncClient(timeout=10) as client,
        ):
            urls = {name: service.url for name, service in suite.services.items()}
            await proxy.cut()
            await write_waiting_events(clean_db, [90, 0])

            async def backlogs() -> dict[str, Samples]:
                return {name: await scrape_service(client, url) for name, url in urls.items()}

            def waiting(got: dict[str, Samples]) -> bool:
                return all(value(s, "segments_outbox_backlog") == 2 for s in got.values())

            seen = await eventually(backlogs, waiting, within=30, every=0.5)
            for name, samples in seen.items():
                assert value(samples, "segments_outbox_backlog") == 2, name
                oldest = value(samples, "segments_outbox_oldest_age_seconds")
                assert oldest is not None, name
                assert oldest >= 90, name
                # Without the broker the queues cannot be measured: left out, not stale.
                assert not any(key[0] == "segments_queue_depth" for key in samples), name
                # segment-api does not need the broker to be ready; the workers do.
                ready = value(samples, "segments_ready", service_name=name)
                assert ready == (1 if name == "segment-api" else 0), name

            await proxy.start(port)

            def drained(got: dict[str, Samples]) -> bool:
                return all(
                    value(s, "segments_outbox_backlog") == 0
                    and value(s, "segments_ready", service_name=name) == 1
                    and all(
                        value(s, metric, **queue_labels(topology, consumer, dead=dead)) == 0
                        for consumer in SERVICE_BINDINGS
                        for metric, dead in (
                            ("segments_queue_depth", False),
                            ("segments_dead_letter_depth", True),
                        )
                    )
                    for name, s in got.items()
                )

            seen = await eventually(backlogs, drained, within=60, every=0.5)
            assert drained(seen), seen
    finally:
        await proxy.cut()
