"""The outbox relay: publishes committed events with publisher confirms.

Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several replicas share the outbox without
publishing a row twice at once; they are marked published only after every confirm of the
batch arrived. A crash between confirm and mark publishes a row again (at least once):
consumers are idempotent by event id. Publishing keeps a whole batch of confirms in flight
(PITFALLS.md: one awaited publish at a time caps out near 2,400 messages/s).
"""

import asyncio
import logging
import time
from collections.abc import Sequence

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange
from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.bus.connection import (
    STABLE_SECONDS,
    Backoff,
    BrokerConnection,
    close_channel,
)
from segments_shared.bus.topology import Topology, declare_all, declare_events_exchange
from segments_shared.db.engine import asyncpg_dsn
from segments_shared.db.types import AnyRow

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "segments_outbox"

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
    """SPEC section 8: structured mode, persistent, `message_id` = the event id. The type is
    the routing key and the correlation id travels in the document (`correlationid`): more
    properties would only cost marshalling on the hottest path."""
    return aio_pika.Message(
        payload.encode(),
        content_type="application/cloudevents+json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
    )


class OutboxRelay:
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
    ) -> None:
        self.engine = engine
        self.topology = topology
        self.broker = BrokerConnection(amqp_url, name)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.keep_published_hours = keep_published_hours
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_purge = 0.0
        self._channel: AbstractChannel | None = None

    @property
    def broker_connected(self) -> bool:
        """Connected, with an open publishing channel. A channel the broker closed counts as
        down until it is replaced."""
        channel = self._channel
        return self.broker.is_connected and channel is not None and not channel.is_closed

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="outbox-listen")
        try:
            backoff = Backoff(cap=5.0)
            while not self._stopping.is_set():
                if await self.broker.connect_with_backoff(self._stopping) is None:
                    break
                try:
                    # A channel the broker closes (or one a publish timed out on) is replaced
                    # on the same connection.
                    while not self._stopping.is_set() and self.broker.is_connected:
                        await self._publish_on_new_channel(backoff)
                        if not self._stopping.is_set():
                            await backoff.sleep(self._stopping)
                except Exception as exc:
                    log.warning("relay lost the broker", extra={"error": repr(exc)})
                finally:
                    await self.broker.close()
                if not self._stopping.is_set():
                    await backoff.sleep(self._stopping)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _publish_on_new_channel(self, backoff: Backoff) -> None:
        """Open a channel, declare the topology and publish until the channel or the
        connection goes (or we stop). Errors of the connection (opening the channel)
        propagate; a failed batch or a channel error closes this channel."""
        channel = await self.broker.channel(on_return_raises=True)
        # Wake the pump the moment the channel closes, rather than at its next publish.
        channel.close_callbacks.add(self._on_channel_close)
        started: float | None = None
        try:
            # Declaring every queue here means no event is published before the queues that
            # should receive it exist, whichever service starts first.
            await declare_all(channel, self.topology)
            exchange = await declare_events_exchange(channel, self.topology)
            self._channel = channel
            started = time.monotonic()
            await self._pump(channel, exchange)
            if self.broker.lost.is_set():
                log.warning("relay lost the broker connection")
            elif channel.is_closed:
                log.warning("relay channel closed by the broker")
        except Exception as exc:
            PUBLISH_FAILURES.inc()
            cause = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
            log.warning("relay channel failed", extra={"error": repr(cause)})
        finally:
            self._channel = None
            if started is not None and time.monotonic() - started >= STABLE_SECONDS:
                backoff.reset()  # a channel that keeps failing at once keeps backing off
            channel.close_callbacks.discard(self._on_channel_close)
            await close_channel(channel)

    def _on_channel_close(self, *_: object) -> None:
        self._wake.set()

    async def _pump(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        while not self._stopping.is_set() and not channel.is_closed:
            self._wake.clear()
            # Several drains claim disjoint batches (SKIP LOCKED), so one batch's database
            # round trips overlap another's wait for confirms.
            async with asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self._drain(exchange))
            await self._maybe_purge()
            await self._sleep(self.poll_interval)

    async def _drain(self, exchange: AbstractExchange) -> None:
        while not self._stopping.is_set():
            if await self.publish_batch(exchange) < self.batch_size:
                return

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

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

    async def _listen(self) -> None:
        """LISTEN for new rows on a dedicated connection; polling covers any gap."""
        while not self._stopping.is_set():
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox LISTEN connection failed", extra={"error": repr(exc)})
            await asyncio.sleep(1)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(self.engine.url))
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
            self._wake.set()  # rows may have arrived while we were not listening
            await lost.wait()
        finally:
            if not conn.is_closed():
                await conn.close()
