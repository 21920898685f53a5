"""The outbox relay: publishes committed events with publisher confirms.

Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several replicas share the outbox without
publishing a row twice at once; they are marked published only after every confirm of the
batch arrived. A crash between confirm and mark publishes a row again (at least once):
consumers are idempotent by event id. Publishing keeps a whole batch of confirms in flight:
one awaited publish at a time caps out near 2,400 messages/s
(docs/pitfalls.md#rabbitmq-and-aio-pika).
"""

import asyncio
import logging
import time
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.bus.connection import BrokerConnection, close_channel
from segments_shared.bus.leadership import Leadership
from segments_shared.bus.topology import Topology, declare_all, declare_events_exchange
from segments_shared.db.types import AnyRow
from segments_shared.loop import Trouble, WorkerLoop

log = logging.getLogger(__name__)


PUBLISHED = Counter("segments_outbox_published", "Outbox events published and confirmed")
PUBLISH_FAILURES = Counter(
    "segments_outbox_publish_failures", "Relay batches that failed and will be retried"
)
PUBLISH_LAG = Histogram(
    "segments_outbox_publish_lag_seconds",
    "Time from an event's commit to the broker's confirm",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60),
)

_CLAIM = text(
    """
    SELECT id, event_type, event_id, payload::text AS payload,
           extract(epoch FROM created_at) AS created
    FROM outbox
    WHERE published_at IS NULL
    ORDER BY id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)
_MARK = text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)")
_PURGE = text("DELETE FROM outbox WHERE published_at < now() - make_interval(hours => :hours)")


def build_message(event_id: str, payload: str) -> aio_pika.Message:
    """Structured mode, persistent, `message_id` = the event id
    (docs/events.md#envelope-and-delivery). The type is the routing key and the correlation
    id travels in the document (`correlationid`): more properties would only cost
    marshalling on the hottest path."""
    return aio_pika.Message(
        payload.encode(),
        content_type="application/cloudevents+json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
    )


class OutboxRelay(WorkerLoop):
    """Publishes the outbox. Every service process runs one, but only one of them at a time
    leads (bus/leadership.py): the others stand by, connected to the broker, and take over
    within `standby_seconds` of the leader's process or connection going away. The leader
    polls every `publish_poll_seconds` while the outbox is empty, and drains at once while it
    is not: one relay works per event, not one per service."""

    def __init__(
        self,
        engine: AsyncEngine,
        amqp_url: str,
        topology: Topology,
        *,
        name: str = "relay",
        batch_size: int = 500,
        concurrency: int = 2,
        poll_interval: float = 1.0,
        publish_timeout: float = 10.0,
        keep_published_hours: int = 24,
        standby_seconds: float = 1.0,
        publish_poll_seconds: float = 0.05,
        prefer_standby: bool = False,
        session_url: str | URL | None = None,
    ) -> None:
        super().__init__(name, poll_seconds=poll_interval, backoff=BackoffPolicy(0.2, 5.0))
        self.engine = engine
        self.topology = topology
        self.broker = BrokerConnection(amqp_url, name)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.publish_timeout = publish_timeout
        self.keep_published_hours = keep_published_hours
        self.standby_seconds = standby_seconds
        self.publish_poll_seconds = publish_poll_seconds
        # The leader lock is a session advisory lock: behind a transaction pooler it needs a
        # direct connection (docs/operations.md#behind-pgbouncer).
        self.leadership = Leadership(session_url or engine.url, name, prefer_standby=prefer_standby)
        self._last_purge = 0.0
        self._channel: AbstractChannel | None = None

    @property
    def broker_connected(self) -> bool:
        """Connected, with an open channel (publishing, or standing by). A channel the broker
        closed counts as down until it is replaced."""
        channel = self._channel
        return self.broker.is_connected and channel is not None and not channel.is_closed

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    async def step(self) -> float | None:
        if not self.broker.is_connected or self.broker.lost.is_set():
            await self.broker.close()
            await self.broker.connect()
        try:
            channel = await self.broker.channel(on_return_raises=True)
        except Exception:
            # A connection that cannot open a channel is not usable: the next step replaces it.
            await self.broker.close()
            raise
        # Wake the pump the moment the channel closes, rather than at its next publish.
        channel.close_callbacks.add(self._on_channel_close)
        try:
            # Declaring every queue here means no event is published before the queues that
            # should receive it exist, whichever service starts first.
            await declare_all(channel, self.topology)
            exchange = await declare_events_exchange(channel, self.topology)
            self._channel = channel
            await self._serve(channel, exchange)
        except Exception:
            PUBLISH_FAILURES.inc()
            raise
        finally:
            self._channel = None
            channel.close_callbacks.discard(self._on_channel_close)
            await close_channel(channel)
        if self.stopping:
            return None
        if self.broker.lost.is_set():
            raise Trouble("relay lost the broker connection")
        raise Trouble("relay channel closed by the broker")

    async def _serve(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        """Lead and publish, or stand by, until the channel or the connection goes. The
        leader polls: a NOTIFY from every writer would queue their commits on one lock
        (docs/pitfalls.md)."""
        while not self.stopping and not channel.is_closed and not self.broker.lost.is_set():
            if not await self.leadership.hold():
                await self._sleep(self._wake, self.standby_seconds)
                continue
            self._wake.clear()
            # Several drains claim disjoint batches (SKIP LOCKED), so one batch's database
            # round trips overlap another's wait for confirms.
            async with asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self._drain(exchange))
            await self._maybe_purge()
            await self._sleep(self._wake, self.publish_poll_seconds)

    async def stopped(self) -> None:
        await self.leadership.close()
        await self.broker.close()

    def _on_channel_close(self, *_: object) -> None:
        self.wake()

    async def _drain(self, exchange: AbstractExchange) -> None:
        while not self.stopping and self.leadership.leading:
            if await self.publish_batch(exchange) < self.batch_size:
                return

    async def publish_batch(self, exchange: AbstractExchange) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"limit": self.batch_size})).all()
            if not rows:
                return 0
            await self._publish(exchange, rows)
            await conn.execute(_MARK, {"ids": [row.id for row in rows]})
        now = time.time()
        for row in rows:
            PUBLISH_LAG.observe(max(0.0, now - float(row.created)))
        PUBLISHED.inc(len(rows))
        return len(rows)

    async def _publish(self, exchange: AbstractExchange, rows: Sequence[AnyRow]) -> None:
        publishes = []
        for row in rows:
            message = build_message(str(row.event_id), row.payload)
            publishes.append(
                exchange.publish(
                    message,
                    routing_key=row.event_type,
                    mandatory=True,
                    timeout=self.publish_timeout,
                )
            )
        results = await asyncio.gather(*publishes, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise failures[0]

    async def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge < 600:
            return
        self._last_purge = time.monotonic()
        async with self.engine.begin() as conn:
            await conn.execute(_PURGE, {"hours": self.keep_published_hours})
