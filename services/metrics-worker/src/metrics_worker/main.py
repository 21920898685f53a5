"""metrics-worker: keeps segment KPIs and RFM scores in step with every change."""

from sqlalchemy.ext.asyncio import AsyncEngine

from metrics_worker.handlers import build_handlers
from metrics_worker.jobs import SOURCE, kinds
from metrics_worker.settings import MetricsWorkerSettings
from segments_shared.jobs.runner import JobRunner
from segments_shared.worker import Worker, new_worker_id, worker_main


def build_worker(engine: AsyncEngine, settings: MetricsWorkerSettings) -> Worker:
    # The fold looks for changes every poll (they are rows, announced by nothing); events
    # wake it sooner.
    runner = JobRunner(
        engine,
        new_worker_id(),
        kinds(engine, settings),
        name="metrics jobs",
        poll_seconds=0.1,
        min_interval=0.05,
    )
    return Worker(runner, build_handlers(runner.wake), port=settings.metrics_worker_port)


def main() -> None:
    worker_main(SOURCE, MetricsWorkerSettings(), build_worker, pool_size=6)


if __name__ == "__main__":
    main()
