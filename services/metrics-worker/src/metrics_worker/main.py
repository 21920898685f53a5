"""metrics-worker: recomputes segment KPIs and RFM scores after every relevant change."""

import asyncio
import socket
import uuid

from metrics_worker.handlers import after_commit, build_handlers
from metrics_worker.recompute import Folding, KpiRecomputer
from metrics_worker.rfm import RfmRecomputer
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
    # KPI recomputations, the RFM run, the consumer, the relay and the health checks.
    engine = create_engine(settings, pool_size=settings.metrics_concurrency + 4)
    worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    topology = Topology(settings.bus_prefix)
    amqp_url = settings.amqp_url.get_secret_value()
    kpis = KpiRecomputer(
        engine,
        worker_id,
        folding=Folding(settings.metrics_debounce_seconds, settings.metrics_max_delay_seconds),
        concurrency=settings.metrics_concurrency,
    )
    rfm = RfmRecomputer(engine, worker_id, period=settings.rfm_period_seconds)
    consumer = EventConsumer(
        engine,
        amqp_url,
        topology,
        SERVICE,
        build_handlers(kpis.wake, rfm_debounce=settings.rfm_debounce_seconds),
        after_commit=after_commit(rfm.wake),
    )
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
                "kpis": kpis.run,
                "rfm": rfm.run,
                "relay": relay.run,
                "health": lambda: serve_health(health, settings.metrics_worker_port, stopping),
            },
            [consumer.stop, kpis.stop, rfm.stop, relay.stop],
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
