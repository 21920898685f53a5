"""Consumer runner: one transaction per message, acknowledged only after it commits.

Each message is recorded in the inbox in the handler's transaction, so a redelivered event is
skipped. A transient failure (the database away, a deadlock: db/errors.py) is not the
message's fault: the consumer keeps the message and retries the handler in place, after the
suite's back-off, until it succeeds, the service stops, or it has waited `hold_limit` (20
minutes); then the message is requeued, which costs one delivery. Requeueing at once would
spend the delivery limit in seconds and dead-letter good messages; holding it past the
broker's `consumer_timeout` (30 minutes) would have the broker close the channel and redeliver
everything it held. So an outage dead-letters nothing unless it lasts about six hold limits
(two hours), the first delivery and the five redeliveries of the quorum queue's limit.

A timeout (statement or lock timeout, asyncpg's command timeout) once the database is reached
may be the work's own slowness, so it is retried in place `timeout_attempts` (3) times per
delivery at most, then fails like any handler error. Any other handler error requeues the
message; the quorum queue counts deliveries and dead-letters it after the limit. A message
that cannot be parsed goes straight to the dead-letter queue: retrying it cannot help.

A service's handlers must cover exactly the event types its queue binds (`SERVICE_BINDINGS`),
checked when the consumer is built: a bound type without a handler would be acknowledged
unhandled, a handler without a binding would never run.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import Backoff, BackoffPolicy
from segments_shared.bus.connection import BrokerConnection, close_channel, wait_for_trouble
from segments_shared.bus.inbox import record_processed
from segments_shared.bus.topology import SERVICE_BINDINGS, Topology, declare_service_queue
from segments_shared.db.errors import is_timeout, is_transient
from segments_shared.events import Event, parse_event
from segments_shared.loop import Trouble, WorkerLoop
from segments_shared.observability import correlation_id_var

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WakeUp:
    """A handler that only wakes something in the process (work whose facts are in the
    database already): no transaction, no inbox row; a duplicate wakes it twice, which is
    harmless."""

    wake: Callable[[], None]


HandlerFunction = Callable[[AsyncConnection, Event], Awaitable[None]]
Handler = HandlerFunction | WakeUp

# How long a message waits in place for a transient failure to pass before it is requeued
# (one delivery spent). RabbitMQ closes a channel whose delivery stays unacknowledged past its
# `consumer_timeout` (30 minutes by default, which deploy/ keeps), cancelling the handlers of
# every delivery the channel holds (up to the prefetch) and redelivering them all. Ten minutes
# below it leave room for the last attempt (a command timeout is 60 s) and the back-off.
HOLD_LIMIT_SECONDS = 20 * 60.0
# Attempts per delivery that may end in a timeout after reaching the database
# (db/errors.py, `is_timeout`): a statement that always overruns fails after this many.
TIMEOUT_ATTEMPTS = 3

# Outcomes: processed, duplicate, retried (a transient failure, retried in place), requeued
# (still failing when stopped or after the hold limit), error (requeued towards the
# dead-letter queue), poison.
CONSUMED = Counter(
    "segments_events_consumed", "Events consumed, by type and outcome", ["type", "outcome"]
)
HANDLE_SECONDS = Histogram("segments_event_handle_seconds", "Event handling time", ["type"])


def inbox_id(event_id: str) -> uuid.UUID:
    """Our events use UUIDs; any other id maps to a stable UUID."""
    try:
        return uuid.UUID(event_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, event_id)


def check_handlers(service: str, handlers: Mapping[str, Handler]) -> None:
    """Refuse handlers whose event types differ from the service's bindings."""
    if service not in SERVICE_BINDINGS:
        raise ValueError(
            f"{service!r} has no entry in SERVICE_BINDINGS "
            f"(segments_shared/bus/topology.py): one of {sorted(SERVICE_BINDINGS)}"
        )
    bound = set(SERVICE_BINDINGS[service])
    missing = sorted(bound - set(handlers))
    extra = sorted(set(handlers) - bound)
    problems = []
    if missing:
        problems.append(f"bound without a handler: {', '.join(missing)}")
    if extra:
        problems.append(f"handled but not bound: {', '.join(extra)}")
    if problems:
        raise ValueError(
            f"{service} handlers differ from its SERVICE_BINDINGS entry "
            f"(segments_shared/bus/topology.py); {'; '.join(problems)}"
        )


class EventConsumer(WorkerLoop):
    """Consumes the service's queue until stopped; each step is one channel's life, and a
    channel or connection the broker drops is replaced after the suite's back-off."""

    def __init__(
        self,
        engine: AsyncEngine,
        amqp_url: str,
        topology: Topology,
        service: str,
        handlers: Mapping[str, Handler],
        *,
        prefetch: int = 100,
        after_commit: Callable[[Event], None] | None = None,
        retry_backoff: BackoffPolicy | None = None,
        hold_limit: float = HOLD_LIMIT_SECONDS,
        timeout_attempts: int = TIMEOUT_ATTEMPTS,
    ) -> None:
        check_handlers(service, handlers)
        super().__init__(f"{service} consumer", backoff=BackoffPolicy(0.2, 10.0))
        # Between retries of a message whose handling failed on a transient error.
        self.retry_backoff = retry_backoff or BackoffPolicy(0.2, 10.0)
        self.hold_limit = hold_limit
        self.timeout_attempts = timeout_attempts
        self.engine = engine
        self.topology = topology
        self.service = service
        self.handlers = handlers
        self.prefetch = prefetch
        self.after_commit = after_commit
        self.broker = BrokerConnection(amqp_url, service)
        self._consuming_on: AbstractChannel | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def broker_connected(self) -> bool:
        """Ready: connected, with an open channel consuming the service's queue. A channel the
        broker closed or a consumer it cancelled counts as down until it is replaced."""
        channel = self._consuming_on
        return self.broker.is_connected and channel is not None and not channel.is_closed

    async def step(self) -> float | None:
        if not self.broker.is_connected or self.broker.lost.is_set():
            await self._drain()
            await self.broker.close()
            await self.broker.connect()
        try:
            channel = await self.broker.channel(publisher_confirms=False)
        except Exception:
            # A connection that cannot open a channel is not usable: the next step replaces it.
            await self.broker.close()
            raise
        trouble = await self._consume_on(channel)
        if self.stopping:
            return None
        raise Trouble(trouble)

    async def stopped(self) -> None:
        await self._drain()
        await self.broker.close()

    async def _consume_on(self, channel: AbstractChannel) -> str:
        """Declare the queue and consume until the channel, the consumer or the connection goes
        (or we stop), then finish what is in flight; returns what happened."""
        cancelled = asyncio.Event()

        def on_cancel(_frame: object) -> None:
            # The broker cancels the consumer when its queue is deleted; the channel stays open.
            self._consuming_on = None
            cancelled.set()

        queue_name = self.topology.service_queue(self.service)
        trouble = "consumer channel failed"
        try:
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await declare_service_queue(channel, self.topology, self.service)
            (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(on_cancel)
            tag = await queue.consume(self._on_message)
            self._consuming_on = channel
            log.info("consuming", extra={"queue": queue_name})
            await wait_for_trouble(channel, self.broker.lost, self.stopping_event, cancelled)
            if self.stopping and not channel.is_closed and not cancelled.is_set():
                # Stop taking new work; what is in flight finishes before the channel closes.
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
            elif cancelled.is_set():
                trouble = f"consumer of {queue_name} cancelled by the broker"
            elif self.broker.lost.is_set():
                trouble = f"consumer of {queue_name} lost the broker connection"
            elif channel.is_closed:
                trouble = f"consumer channel of {queue_name} closed by the broker"
        except Exception as exc:
            trouble = f"consumer channel of {queue_name} failed: {exc!r}"
        finally:
            self._consuming_on = None
            # A channel closing cancels its deliveries' handlers (aiormq), so their transactions
            # roll back and the broker redelivers them; a handler that committed just before
            # cannot acknowledge, and the inbox skips its redelivery. On stop, handlers finish.
            await self._drain()
            await close_channel(channel)
        return trouble

    async def _drain(self, grace_seconds: float = 25.0) -> None:
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace_seconds)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except ValidationError as exc:
            CONSUMED.labels(type=message.routing_key or "unknown", outcome="poison").inc()
            log.error(
                "unparseable event dead-lettered",
                extra={"message_id": message.message_id, "reason": str(exc)[:2000]},
            )
            await message.reject(requeue=False)
            return
        handler = self.handlers.get(event.type)
        token = correlation_id_var.set(event.correlationid)
        started = time.perf_counter()
        try:
            handled = await self._handle_until_done(event, handler, message)
        except Exception as exc:
            CONSUMED.labels(type=event.type, outcome="error").inc()
            log.warning(
                "event handling failed, requeued",
                exc_info=True,
                extra={
                    "event_id": event.id,
                    "type": event.type,
                    "delivery_count": (message.headers or {}).get("x-delivery-count", 0),
                    "reason": repr(exc),
                },
            )
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        finally:
            HANDLE_SECONDS.labels(type=event.type).observe(time.perf_counter() - started)
            correlation_id_var.reset(token)
        if not handled:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        CONSUMED.labels(type=event.type, outcome="processed").inc()
        try:
            await message.ack()
        except Exception as exc:
            # Committed but not acknowledged (the channel closed meanwhile): the broker
            # redelivers it and the inbox skips it. Not a handling failure, so no nack.
            log.warning(
                "acknowledgement failed after commit, the redelivery will be skipped",
                extra={"event_id": event.id, "type": event.type, "reason": repr(exc)},
            )
        if self.after_commit is not None:
            self.after_commit(event)

    async def _handle_until_done(
        self, event: Event, handler: Handler | None, message: AbstractIncomingMessage
    ) -> bool:
        """Handle the event, retrying in place while it fails on a transient error. The message
        stays unacknowledged meanwhile, so its delivery count does not move and the prefetch
        bounds how many wait. Returns True once handled; False when it should be requeued
        unhandled, because the service stops or the failure outlasted `hold_limit`. Raises any
        other error, and a timeout on reaching `timeout_attempts`."""
        backoff = Backoff(self.retry_backoff)
        held_since = time.monotonic()
        timeouts = 0
        while True:
            # Failures before a connection is held are the database's, whatever they say:
            # asyncpg's connect timeout is the same TimeoutError as its command timeout.
            connected = False
            try:
                if isinstance(handler, WakeUp):
                    handler.wake()
                elif handler is not None:
                    async with self.engine.connect() as conn:
                        connected = True
                        await self._handle_in(conn, event, handler)
                return True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if connected and is_timeout(exc):
                    timeouts += 1
                    if timeouts >= self.timeout_attempts:
                        raise
                failure = exc
            held = time.monotonic() - held_since
            if not self.stopping and held < self.hold_limit:
                delay = min(backoff.next_delay(), self.hold_limit - held)
                CONSUMED.labels(type=event.type, outcome="retried").inc()
                log.warning(
                    "event handling failed on a transient error, retrying",
                    extra={
                        "event_id": event.id,
                        "type": event.type,
                        "attempt": backoff.attempt,
                        "retry_in_s": round(delay, 2),
                        "reason": repr(failure),
                    },
                )
                await backoff.sleep(self.stopping_event, delay)
                if not self.stopping:
                    continue
            CONSUMED.labels(type=event.type, outcome="requeued").inc()
            log.warning(
                "stopping while the event waits for a transient failure to pass, requeued"
                if self.stopping
                else "event still failing on a transient error after the hold limit, requeued",
                extra={
                    "event_id": event.id,
                    "type": event.type,
                    "held_s": round(time.monotonic() - held_since, 1),
                    "delivery_count": (message.headers or {}).get("x-delivery-count", 0),
                    "reason": repr(failure),
                },
            )
            return False

    async def _handle_in(
        self, conn: AsyncConnection, event: Event, handler: HandlerFunction
    ) -> None:
        """One attempt in one transaction: a transient failure rolls it all back, the inbox
        row included, so the retry starts clean; a commit whose answer was lost is skipped by
        the inbox on the retry."""
        async with conn.begin():
            if await record_processed(conn, self.service, inbox_id(event.id)):
                await handler(conn, event)
            else:
                CONSUMED.labels(type=event.type, outcome="duplicate").inc()
                log.info("duplicate event skipped", extra={"event_id": event.id})
