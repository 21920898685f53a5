"""sync-worker: pushes segment membership to ESPs, webhooks and commerce stores."""

import asyncio
import socket
import uuid

from segments_shared.bus.consumer import EventConsumer
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology
from segments_shared.db.engine import create_engine
from segments_shared.health import (
    Dependency,
    create_health_app,
    database_check,
    flag_check,
    serve_health,
)
from segments_shared.lifecycle import run_until_stopped
from segments_shared.observability import configure_logging
from segments_shared.secrets import SecretBox
from sync_worker.handlers import build_handlers
from sync_worker.runner import SyncRunner
from sync_worker.settings import SyncWorkerSettings

SERVICE = "sync-worker"


async def run(settings: SyncWorkerSettings) -> None:
    engine = create_engine(settings, pool_size=settings.sync_concurrency * 2 + 3)
    worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    topology = Topology(settings.bus_prefix)
    amqp_url = settings.amqp_url.get_secret_value()
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    runner = SyncRunner(engine, settings, SecretBox(secret) if secret else None, worker_id)
    consumer = EventConsumer(engine, amqp_url, topology, SERVICE, build_handlers(runner.wake))
    relay = OutboxRelay(engine, amqp_url, topology, name=f"{SERVICE}-relay")
    stopping = asyncio.Event()
    health = create_health_app(
        [
            Dependency("database", database_check(engine)),
            Dependency("broker", flag_check(lambda: consumer.broker_connected)),
        ]
    )
    try:
        await run_until_stopped(
            {
                "consumer": consumer.run,
                "runner": runner.run,
                "relay": relay.run,
                "health": lambda: serve_health(health, settings.sync_worker_port, stopping),
            },
            [consumer.stop, runner.stop, relay.stop],
            stopping,
        )
    finally:
        await engine.dispose()


def main() -> None:
    settings = SyncWorkerSettings()
    configure_logging(SERVICE, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
