"""A sync-worker runner in the test's event loop against the run's real database, the
segment-api in process, and vendor fakes served on loopback: only the vendors are fake."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.db.engine import create_engine
from segments_shared.jobs.runner import JobRunner
from segments_shared.secrets import SecretBox
from sync_worker.runner import SyncRuns, sync_runner
from sync_worker.settings import SyncWorkerSettings
from tests.support.waiting import eventually

T = TypeVar("T")
FINISHED = ("succeeded", "partial", "failed")


def worker_settings(service_env: dict[str, str], **overrides: Any) -> SyncWorkerSettings:
    values: dict[str, Any] = {
        "database_url": service_env["SEGMENTS_DATABASE_URL"],
        "amqp_url": service_env["SEGMENTS_AMQP_URL"],
        "bus_prefix": service_env["SEGMENTS_BUS_PREFIX"],
        "secret_key": service_env["SEGMENTS_SECRET_KEY"],
        "allow_private_destinations": service_env["SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"],
        # Short waits keep fault tests quick; the behaviour is the same.
        "sync_lease_seconds": 5.0,
        "sync_retry_attempts": 6,
        "sync_retry_base_seconds": 0.01,
        "sync_retry_cap_seconds": 0.2,
        "sync_request_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return SyncWorkerSettings(**values)


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


async def start_worker(service_env: dict[str, str], **overrides: Any) -> Worker:
    settings = worker_settings(service_env, **overrides)
    engine = create_engine(settings, pool_size=6)
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    runner, runs = sync_runner(engine, settings, SecretBox(secret), f"test-{uuid.uuid4().hex[:8]}")
    return Worker(runner, runs, asyncio.create_task(runner.run()), engine)


@dataclass
class Harness:
    """Drives the API as a user would and waits for the worker."""

    api: httpx.AsyncClient
    worker: Worker
    engine: AsyncEngine

    async def customers(self, *customers: dict[str, Any]) -> None:
        for start in range(0, len(customers), 10_000):
            response = await self.api.post(
                "/v1/customers/bulk", json={"customers": list(customers[start : start + 10_000])}
            )
            assert response.status_code == 200, response.text

    async def segment(self, name: str, external_ids: list[str] | None = None) -> str:
        response = await self.api.post("/v1/segments", json={"name": name})
        assert response.status_code == 201, response.text
        segment_id: str = response.json()["id"]
        if external_ids:
            await self.add(segment_id, external_ids)
        return segment_id

    async def add(self, segment_id: str, external_ids: list[str]) -> None:
        for start in range(0, len(external_ids), 10_000):
            response = await self.api.post(
                f"/v1/segments/{segment_id}/members",
                json={"external_ids": external_ids[start : start + 10_000]},
            )
            assert response.status_code == 200, response.text

    async def remove(self, segment_id: str, external_ids: list[str]) -> None:
        response = await self.api.post(
            f"/v1/segments/{segment_id}/members/remove", json={"external_ids": external_ids}
        )
        assert response.status_code == 200, response.text

    async def destination(self, destination_type: str, config: dict[str, Any]) -> str:
        response = await self.api.post(
            "/v1/destinations",
            json={
                "name": f"{destination_type} {uuid.uuid4().hex[:6]}",
                "type": destination_type,
                "config": config,
            },
        )
        assert response.status_code == 201, response.text
        destination_id: str = response.json()["id"]
        return destination_id

    async def wait(self, run_id: str, within: float = 60.0) -> dict[str, Any]:
        self.worker.runner.wake()

        async def status() -> dict[str, Any]:
            body: dict[str, Any] = (await self.api.get(f"/v1/syncs/{run_id}")).json()
            return body

        run = await eventually(status, lambda r: r["status"] in FINISHED, within)
        assert run["status"] in FINISHED, run
        return run

    async def sync(
        self, segment_id: str, destination_id: str, within: float = 60.0
    ) -> dict[str, Any]:
        started = await self.api.post(
            f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
        )
        assert started.status_code == 202, started.text
        return await self.wait(started.json()["id"], within)

    async def promote(self, segment_id: str, source: str, target: str) -> dict[str, Any]:
        started = await self.api.post(
            f"/v1/segments/{segment_id}/promotions",
            json={"from_destination_id": source, "to_destination_id": target},
        )
        assert started.status_code == 202, started.text
        assert started.json()["kind"] == "promotion"
        return await self.wait(started.json()["id"])

    async def held(self, segment_id: str, destination_id: str) -> set[str]:
        """What the destination holds by the worker's record."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT member_key FROM destination_members "
                    "WHERE segment_id = :s AND destination_id = :d"
                ),
                {"s": segment_id, "d": destination_id},
            )
            return {row.member_key for row in rows}


@pytest_asyncio.fixture
async def harness(
    api: httpx.AsyncClient, service_env: dict[str, str], clean_db: AsyncEngine
) -> AsyncIterator[Harness]:
    worker = await start_worker(service_env)
    try:
        yield Harness(api, worker, clean_db)
    finally:
        await worker.stop()


async def run_row(engine: AsyncEngine, run_id: str) -> Any:
    """The run's row with its job as the worker sees it: `attempts` (the job's while it has
    one, the run's record of its latest claim after), `lease_owner`, `lease_expires_at`."""
    async with engine.connect() as conn:
        statement = text(
            "SELECT r.*, coalesce(j.attempts, r.attempts) AS attempts, j.lease_owner, "
            "j.lease_expires_at, j.lease_expires_at < now() AS expired "
            "FROM sync_runs r LEFT JOIN jobs j ON j.queue = 'sync_run' AND j.sync_run_id = r.id "
            "WHERE r.id = :id"
        )
        return (await conn.execute(statement, {"id": run_id})).one()


def people(count: int, *, prefix: str = "c", status: str = "subscribed") -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"{prefix}{i}",
            "email": f"{prefix}{i}@example.com",
            "email_status": status,
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
        }
        for i in range(count)
    ]


SYNC_TABLES = (
    "destinations",
    "sync_runs",
    "destination_segments",
    "destination_members",
    "sync_run_plan",
    "outbox",
)


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows of every table a destination or sync request could write: a refusal changes
    none of them."""
    async with engine.connect() as conn:
        return {
            table: int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
            for table in SYNC_TABLES
        }
