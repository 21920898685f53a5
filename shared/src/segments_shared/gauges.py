"""Gauges of what is waiting, exported by every service (SPEC section 2,
docs/operations.md#metrics-worth-alerting-on).

A loop of each process measures every `interval` seconds:

- `segments_outbox_backlog` and `segments_outbox_oldest_age_seconds`: the outbox rows the relay
  has not published, and how long the oldest has waited (one query, bus/outbox.py). Unlike the
  publish lag histogram, which only counts confirmed publishes, these rise while the broker is
  away;
- `segments_queue_depth` and `segments_dead_letter_depth` (labels `queue`, `consumer`): the
  messages ready in each worker's queue and in its dead-letter queue, by a passive declare on a
  broker connection of the loop's own, so that measuring can never disturb publishing or
  consuming. Every service reports every worker's queues: whichever replicas are scraped, the
  queues are seen;
- `segments_subscriptions_overdue`: active subscriptions of active segments whose job has
  been due for over a minute with no sync-worker taking it (every worker down or stuck);
- `segments_ready` (label `service_name`): 1 while the service's `/readyz` would answer 200.

`/metrics` renders the last measurement and never waits for the database or the broker. A
source that does not answer within its timeout leaves its series out until it answers again:
a number kept from before the outage would look like a measurement. The loop carries on
whatever fails.

Pending erasures will be measured here too once erasures are kept (no table holds them yet).
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.bus.connection import BrokerConnection, close_channel
from segments_shared.bus.outbox import Backlog, outbox_backlog
from segments_shared.bus.topology import SERVICE_BINDINGS, Topology
from segments_shared.health import Dependency, readiness
from segments_shared.loop import WorkerLoop

log = logging.getLogger(__name__)

# Often enough for a 15 s scrape to see a fresh value; cheap enough for every replica: one
# query on the outbox's partial index and four passive declares.
GAUGE_INTERVAL_SECONDS = 5.0
DATABASE_TIMEOUT_SECONDS = 5.0
BROKER_TIMEOUT_SECONDS = 10.0
# A subscription's job due this long and not taken is overdue: workers take due jobs within a
# second or two.
OVERDUE_AFTER_SECONDS = 60

# Subscriptions are jobs of the queue `subscription` keyed by their id (sync_worker/
# subscriptions.py); a claim clears `due_at`, a holder that died leaves its lease to expire.
_OVERDUE_SUBSCRIPTIONS = text(
    """
    SELECT count(*)
    FROM subscriptions s
    JOIN segments g ON g.id = s.segment_id AND g.active
    JOIN jobs j ON j.queue = 'subscription' AND j.key = s.id::text
    WHERE s.active
      AND (j.due_at < clock_timestamp() - make_interval(secs => :after)
           OR j.lease_expires_at < clock_timestamp() - make_interval(secs => :after))
    """
)


async def overdue_subscriptions(conn: AsyncConnection) -> int:
    result = await conn.execute(_OVERDUE_SUBSCRIPTIONS, {"after": OVERDUE_AFTER_SECONDS})
    return int(result.scalar_one())


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    consumer: str
    dead_letter: bool
    messages: int


async def queue_depths(broker: BrokerConnection, topology: Topology) -> list[QueueDepth]:
    """Messages ready in each worker's queue and dead-letter queue. A queue not declared yet
    (no relay has run on this prefix) is left out."""
    wanted = [
        (name, consumer, dead_letter)
        for consumer in SERVICE_BINDINGS
        for name, dead_letter in (
            (topology.service_queue(consumer), False),
            (topology.dead_letter_queue(consumer), True),
        )
    ]
    depths: list[QueueDepth] = []
    channel: AbstractChannel = await broker.channel(publisher_confirms=False)
    try:
        for name, consumer, dead_letter in wanted:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                # NOT_FOUND closes the channel: the next queue needs a new one.
                await close_channel(channel)
                channel = await broker.channel(publisher_confirms=False)
                continue
            result = queue.declaration_result
            depths.append(QueueDepth(name, consumer, dead_letter, int(result.message_count or 0)))
    finally:
        await close_channel(channel)
    return depths


@dataclass(frozen=True)
class Measurement:
    """The last values of one process's loop; None where the source did not answer."""

    service: str
    ready: bool
    backlog: Backlog | None
    queues: Sequence[QueueDepth] | None
    overdue_subscriptions: int | None = None


class WaitingGauges(WorkerLoop):
    def __init__(
        self,
        service: str,
        engine: AsyncEngine,
        amqp_url: str,
        topology: Topology,
        dependencies: Sequence[Dependency],
        *,
        interval: float = GAUGE_INTERVAL_SECONDS,
        database_timeout: float = DATABASE_TIMEOUT_SECONDS,
        broker_timeout: float = BROKER_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(f"{service}-gauges", poll_seconds=interval)
        self.service = service
        self.engine = engine
        self.topology = topology
        self.dependencies = list(dependencies)
        self.database_timeout = database_timeout
        self.broker_timeout = broker_timeout
        self.broker = BrokerConnection(amqp_url, f"{service}-gauges")
        self.measurement = Measurement(service, ready=False, backlog=None, queues=None)
        # Whether each source answered last time (absent: not asked yet), to log changes only.
        self._answering: dict[str, bool] = {}

    async def run(self) -> None:
        WAITING.watch(self)
        await super().run()

    async def stopped(self) -> None:
        WAITING.forget(self)
        await self.broker.close()

    async def step(self) -> float | None:
        """Measure every source at once; a stop request cancels what is still out."""
        measuring = asyncio.ensure_future(
            asyncio.gather(self._database(), self._queues(), self._ready())
        )
        stopping = asyncio.ensure_future(self.stopping_event.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {measuring, stopping}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not measuring.done():
                measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await measuring
        if measuring.cancelled():
            return None
        (backlog, overdue), queues, ready = measuring.result()
        self.measurement = Measurement(self.service, ready, backlog, queues, overdue)
        return None

    async def _database(self) -> tuple[Backlog | None, int | None]:
        try:
            async with asyncio.timeout(self.database_timeout):
                async with self.engine.connect() as conn:
                    backlog = await outbox_backlog(conn)
                    await conn.commit()
                    # Its own statement: a database not yet migrated to subscriptions (a
                    # rolling upgrade) still has its outbox measured.
                    try:
                        overdue: int | None = await overdue_subscriptions(conn)
                    except DBAPIError as exc:
                        self._answered("subscriptions", exc)
                        overdue = None
                    else:
                        self._answered("subscriptions", None)
        except Exception as exc:
            self._answered("database", exc)
            return None, None
        self._answered("database", None)
        return backlog, overdue

    async def _queues(self) -> list[QueueDepth] | None:
        try:
            async with asyncio.timeout(self.broker_timeout):
                if not self.broker.is_connected or self.broker.lost.is_set():
                    await self.broker.close()
                    await self.broker.connect()
                depths = await queue_depths(self.broker, self.topology)
        except Exception as exc:
            # Whatever went wrong, start from a fresh connection next time.
            await self.broker.close()
            self._answered("broker", exc)
            return None
        self._answered("broker", None)
        return depths

    async def _ready(self) -> bool:
        status, _ = await readiness(self.dependencies)
        return status == 200

    def _answered(self, source: str, error: Exception | None) -> None:
        answering = error is None
        if self._answering.get(source) == answering:
            return
        first = source not in self._answering
        self._answering[source] = answering
        if not answering:
            log.warning(
                "cannot measure what waits in the %s; its gauges are left out",
                source,
                extra={"loop": self.name, "error": repr(error)},
            )
        elif not first:
            log.info("measuring what waits in the %s again", source, extra={"loop": self.name})


def waiting_families(measurement: Measurement | None) -> list[Metric]:
    """The gauge families, with the samples `measurement` has (none without one)."""
    backlog = GaugeMetricFamily(
        "segments_outbox_backlog", "Outbox events not yet published (rows of the outbox)"
    )
    oldest = GaugeMetricFamily(
        "segments_outbox_oldest_age_seconds",
        "How long the oldest unpublished outbox event has waited (0 when none waits)",
    )
    depth = GaugeMetricFamily(
        "segments_queue_depth",
        "Messages ready in a worker's queue",
        labels=["queue", "consumer"],
    )
    dead = GaugeMetricFamily(
        "segments_dead_letter_depth",
        "Messages in a worker's dead-letter queue",
        labels=["queue", "consumer"],
    )
    overdue = GaugeMetricFamily(
        "segments_subscriptions_overdue",
        "Active subscriptions whose run has been due for over a minute, not yet requested",
    )
    ready = GaugeMetricFamily(
        "segments_ready",
        "1 while the service's /readyz answers 200, else 0",
        labels=["service_name"],
    )
    if measurement is not None:
        ready.add_metric([measurement.service], 1.0 if measurement.ready else 0.0)
        if measurement.backlog is not None:
            backlog.add_metric([], measurement.backlog.rows)
            oldest.add_metric([], measurement.backlog.oldest_age_seconds)
        if measurement.overdue_subscriptions is not None:
            overdue.add_metric([], measurement.overdue_subscriptions)
        for queue in measurement.queues or ():
            family = dead if queue.dead_letter else depth
            family.add_metric([queue.queue, queue.consumer], queue.messages)
    return [backlog, oldest, depth, dead, overdue, ready]


class WaitingCollector(Collector):
    """Renders the measurement of the process's gauge loop; one loop runs per service
    process (a second one, as tests may start, takes over until it stops)."""

    def __init__(self) -> None:
        self._loops: list[WaitingGauges] = []

    def watch(self, loop: WaitingGauges) -> None:
        self._loops.append(loop)

    def forget(self, loop: WaitingGauges) -> None:
        if loop in self._loops:
            self._loops.remove(loop)

    def describe(self) -> Iterable[Metric]:
        return waiting_families(None)

    def collect(self) -> Iterator[Metric]:
        yield from waiting_families(self._loops[-1].measurement if self._loops else None)


WAITING = WaitingCollector()
REGISTRY.register(WAITING)
