"""What the sync benchmarks share: the store data set with every customer reachable, a fake
Mailchimp as its own process, a destination and runs written as segment-api writes them, and
a sync-worker runner in this process."""

import asyncio
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.dataset import DatasetSpec, clone, create_segment
from segments_shared.db.engine import asyncpg_dsn, create_engine
from segments_shared.destinations import MailchimpConfig, account_key, split_secrets
from segments_shared.jobs import store
from segments_shared.jobs.runner import JobRunner
from segments_shared.secrets import SecretBox
from sync_worker import runs
from sync_worker.runner import SyncRuns, sync_runner
from sync_worker.settings import SyncWorkerSettings

SECRET_KEY = "bench-secret-key"
API_KEY = "fake-mailchimp-key-us1"
LIST_ID = "list1"
BATCH = 500
CONCURRENCY = 10


async def reachable_store(database: str, every: int = 1) -> tuple[str, uuid.UUID]:
    """The benchmark data set (1,000,000 customers), every customer made reachable with an
    address of their own, and a segment of all of them (or of every `every`-th one)."""
    url = await clone(DatasetSpec(), database)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            "UPDATE customers SET email = 'customer' || id || '@example.com', "
            "email_status = 'subscribed'"
        )
        await conn.execute("VACUUM ANALYZE customers")
    finally:
        await conn.close()
    return url, await create_segment(url, "Everyone", every=every)


@dataclass
class Fake:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def start_fake() -> Fake:
    """A fake Mailchimp in its own process, so it never shares this event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes",
        "mailchimp",
        "--port",
        "0",
        "--api-key",
        API_KEY,
        "--list-id",
        LIST_ID,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        raise RuntimeError(f"the fake said {line!r}")
    return Fake(process, match.group(1))


async def add_destination(engine: AsyncEngine, fake_url: str) -> uuid.UUID:
    """A Mailchimp destination, stored as segment-api stores one."""
    config = MailchimpConfig.model_validate(
        {"api_key": API_KEY, "list_id": LIST_ID, "base_url": f"{fake_url}/3.0"}
    )
    public, secrets = split_secrets("mailchimp", config)
    destination_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO destinations (id, name, type, config, secrets, account_key) "
                "VALUES (:id, 'Bench', 'mailchimp', CAST(:config AS jsonb), :secrets, :account)"
            ),
            {
                "id": destination_id,
                "config": json.dumps(public),
                "secrets": SecretBox(SECRET_KEY).encrypt(secrets),
                "account": account_key("mailchimp", config, secrets),
            },
        )
    return destination_id


async def request_run(
    engine: AsyncEngine, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> uuid.UUID:
    run_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO sync_runs (id, segment_id, destination_id) "
                "VALUES (:id, :segment_id, :destination_id)"
            ),
            {"id": run_id, "segment_id": segment_id, "destination_id": destination_id},
        )
        # What segment-api does with a run it queues: the sync-worker's job engine takes it.
        await store.request(conn, runs.QUEUE, str(run_id), sync_run_id=run_id)
    return run_id


async def wait_run(engine: AsyncEngine, run_id: uuid.UUID, within: float = 900.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as conn:
            run = (
                await conn.execute(text("SELECT * FROM sync_runs WHERE id = :id"), {"id": run_id})
            ).one()
        if run.status not in ("queued", "running") or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.01)


@dataclass
class Worker:
    runner: JobRunner
    runs: SyncRuns
    task: "asyncio.Task[None]"
    engine: AsyncEngine

    async def stop(self) -> None:
        self.runner.stop()
        await self.task
        await self.runs.aclose()
        await self.engine.dispose()


def start_worker(url: str) -> Worker:
    # The fake listens on loopback, where destinations may not point otherwise.
    settings = SyncWorkerSettings(
        database_url=url, secret_key=SECRET_KEY, allow_private_destinations="127.0.0.1"
    )
    engine = create_engine(settings, pool_size=settings.sync_concurrency * 2 + 4)
    runner, kind = sync_runner(engine, settings, SecretBox(SECRET_KEY), "bench-worker")
    return Worker(runner, kind, asyncio.create_task(runner.run()), engine)


async def load() -> str:
    process = await asyncio.create_subprocess_exec("uptime", stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    return out.decode().strip()
