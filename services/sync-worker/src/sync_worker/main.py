"""sync-worker: pushes segment membership to ESPs, webhooks and commerce stores."""

from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.secrets import SecretBox
from segments_shared.worker import Worker, new_worker_id, worker_main
from sync_worker.handlers import build_handlers
from sync_worker.runner import sync_runner
from sync_worker.settings import SyncWorkerSettings

SERVICE = "sync-worker"


def build_worker(engine: AsyncEngine, settings: SyncWorkerSettings) -> Worker:
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    secret_box = SecretBox(secret) if secret else None
    runner, runs = sync_runner(engine, settings, secret_box, new_worker_id())
    return Worker(
        runner, build_handlers(runner.wake), port=settings.sync_worker_port, close=runs.aclose
    )


def main() -> None:
    settings = SyncWorkerSettings()
    pool_size = settings.sync_concurrency * 2 + 4
    worker_main(SERVICE, settings, build_worker, pool_size=pool_size)


if __name__ == "__main__":
    main()
