"""metrics-worker: recomputes segment KPIs (and RFM scores) after every relevant change."""

import asyncio
import socket
import uuid

from metrics_worker.handlers import build_handlers
from metrics_worker.recompute import KpiRecomputer
from metrics_worker.settings import MetricsWorkerSettings
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

SERVICE = "metrics-worker"


async def run(settings: MetricsWorkerSettings) -> None:
    engine = create_engine(settings, pool_size=settings.metrics_concurrency + 3)
    worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    topology = Topology(settings.bus_prefix)
    amqp_url = settings.amqp_url.get_secret_value()
    recomputer = KpiRecomputer(
        engine,
        worker_id,
        debounce=settings.metrics_debounce_seconds,
        concurrency=settings.metrics_concurrency,
    )
    consumer = EventConsumer(engine, amqp_url, topology, SERVICE, build_handlers(recomputer.wake))
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
                "kpis": recomputer.run,
                "relay": relay.run,
                "health": lambda: serve_health(health, settings.metrics_worker_port, stopping),
            },
            [consumer.stop, recomputer.stop, relay.stop],
            stopping,
        )
    finally:
        await engine.dispose()


def main() -> None:
    settings = MetricsWorkerSettings()
    configure_logging(SERVICE, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
