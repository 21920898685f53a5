"""Running a worker service: its job runner, the NOTIFY listener that wakes it, its event
consumer, the outbox relay, the gauges of what is waiting and the health endpoints, until
SIGTERM or SIGINT."""

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.bus.consumer import EventConsumer, Handler
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology
from segments_shared.config import ServiceSettings
from segments_shared.db.engine import create_engine, session_url
from segments_shared.db.notify import Listener
from segments_shared.gauges import WaitingGauges
from segments_shared.health import (
    Dependency,
    create_health_app,
    database_check,
    flag_check,
    serve_health,
)
from segments_shared.jobs.runner import JobRunner
from segments_shared.jobs.store import NOTIFY_CHANNEL
from segments_shared.lifecycle import run_until_stopped
from segments_shared.observability import configure_logging

S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class Worker:
    """What a worker service runs besides the parts every worker has: its job runner, the
    handlers of its events, its health port, and what to close once it stopped."""

    runner: JobRunner
    handlers: Mapping[str, Handler]
    port: int
    close: Callable[[], Awaitable[None]] | None = None


def worker_main(
    service: str,
    settings: S,
    build: Callable[[AsyncEngine, S], Worker],
    *,
    pool_size: int,
) -> None:
    """A worker's console command: logs as `service`, builds the worker on a database pool
    of `pool_size` and runs it until SIGTERM or SIGINT."""
    configure_logging(service, settings.log_level)

    async def serve() -> None:
        engine = create_engine(settings, pool_size=pool_size)
        worker = build(engine, settings)
        try:
            await run_worker(
                service,
                settings,
                engine,
                port=worker.port,
                runner=worker.runner,
                handlers=worker.handlers,
            )
        finally:
            if worker.close is not None:
                await worker.close()
            await engine.dispose()

    asyncio.run(serve())


def new_worker_id() -> str:
    """This process among the workers, as job leases name their holder."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def run_worker(
    service: str,
    settings: ServiceSettings,
    engine: AsyncEngine,
    *,
    port: int,
    runner: JobRunner,
    handlers: Mapping[str, Handler],
    channels: Mapping[str, Callable[[str], None]] | None = None,
) -> None:
    """`channels`: NOTIFY channels that wake something besides the runner's own requests."""
    topology = Topology(settings.bus_prefix)
    amqp_url = settings.amqp_url.get_secret_value()
    listener = Listener(session_url(settings), name=f"{service}-notifications")
    listener.on(NOTIFY_CHANNEL, runner.wake_for)
    for channel, callback in (channels or {}).items():
        listener.on(channel, callback)
    consumer = EventConsumer(engine, amqp_url, topology, service, handlers)
    relay = OutboxRelay(
        engine, amqp_url, topology, name=f"{service}-relay", session_url=session_url(settings)
    )
    stopping = asyncio.Event()
    dependencies = [
        Dependency("database", database_check(engine)),
        Dependency("broker", flag_check(lambda: consumer.broker_connected)),
    ]
    health = create_health_app(dependencies)
    gauges = WaitingGauges(service, engine, amqp_url, topology, dependencies)
    await run_until_stopped(
        {
            "consumer": consumer.run,
            "jobs": runner.run,
            "notifications": listener.run,
            "relay": relay.run,
            "gauges": gauges.run,
            "health": lambda: serve_health(health, settings.bind_host, port, stopping),
        },
        [consumer.stop, runner.stop, listener.stop, relay.stop, gauges.stop],
        stopping,
    )
