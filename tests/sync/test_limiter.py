"""Vendor limits hold per account across runs and worker replicas, through the database:
each `VendorLimiter` here stands for one replica (its own engine and connections)."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import create_engine
from sync_worker.connectors.base import Capabilities, RateWindow
from sync_worker.limiter import VendorLimiter
from tests.fakes import mailchimp
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people, start_worker


@pytest_asyncio.fixture
async def replicas(
    database_url: str, clean_db: AsyncEngine
) -> AsyncIterator[tuple[VendorLimiter, VendorLimiter]]:
    engines = [
        create_engine(DatabaseSettings(database_url=database_url), pool_size=3) for _ in range(2)
    ]
    limiters = (VendorLimiter(engines[0]), VendorLimiter(engines[1]))
    yield limiters
    for limiter, engine in zip(limiters, engines, strict=True):
        await limiter.aclose()
        await engine.dispose()


@pytest.mark.asyncio
async def test_concurrency_slots_are_shared_by_replicas(
    replicas: tuple[VendorLimiter, VendorLimiter],
) -> None:
    capabilities = Capabilities(batch_size=1, concurrency=3)
    inside = peak = 0

    async def request(limiter: VendorLimiter) -> None:
        nonlocal inside, peak
        async with limiter.request("acct-slots", capabilities):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.03)
            inside -= 1

    await asyncio.gather(*(request(replicas[i % 2]) for i in range(24)))
    assert peak == 3  # reached, never passed, though each replica alone would allow 3


@pytest.mark.asyncio
async def test_a_dead_replicas_slots_are_free_at_once(
    replicas: tuple[VendorLimiter, VendorLimiter],
) -> None:
    first, second = replicas
    capabilities = Capabilities(batch_size=1, concurrency=2)
    holding = asyncio.Event()
    never = asyncio.Event()

    async def hold() -> None:
        async with first.request("acct-dead", capabilities):
            holding.set()
            await never.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await holding.wait()
    await asyncio.sleep(0.05)

    async def one_more() -> None:
        async with second.request("acct-dead", capabilities):
            pass

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(one_more(), 0.3)
    # The replica dies: its connection closes, PostgreSQL drops its locks.
    assert first._conn is not None
    await first._conn.invalidate()
    started = time.monotonic()
    async with second.request("acct-dead", capabilities):
        pass
    assert time.monotonic() - started < 0.5
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


@pytest.mark.asyncio
async def test_rate_windows_hold_across_replicas(
    replicas: tuple[VendorLimiter, VendorLimiter],
) -> None:
    window = RateWindow(5, 1.0)
    capabilities = Capabilities(batch_size=1, concurrency=10, rate_windows=(window,))
    sent: list[float] = []

    async def request(limiter: VendorLimiter) -> None:
        async with limiter.request("acct-rate", capabilities):
            sent.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(request(replicas[i % 2]) for i in range(15)))
    sent.sort()
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] >= 1.0, sent  # never 6 in one second
    assert time.monotonic() - started >= 2.0
    # The vendor says wait: both replicas hold back.
    await replicas[0].pause("acct-rate", 1.0)
    paused = time.monotonic()
    await request(replicas[1])
    assert sent[-1] - paused >= 0.9


@pytest.mark.asyncio
async def test_two_workers_never_exceed_mailchimps_connections(
    harness: Harness, service_env: dict[str, str]
) -> None:
    state = mailchimp.MailchimpState()
    state.add_list("list1")
    # Every answer is late, so that the batches of both runs overlap at the fake.
    state.delay_next(0.2, count=100_000)
    await harness.customers(*people(10_000))
    ids = [f"c{i}" for i in range(10_000)]
    segments = [await harness.segment("Even", ids[::2]), await harness.segment("Odd", ids[1::2])]
    await harness.worker.stop()
    # Two replicas, one run each: only the database can keep them to 10 connections.
    workers = [await start_worker(service_env, sync_concurrency=1) for _ in range(2)]
    try:
        async with serve(mailchimp.create_app(state)) as url:
            destination_id = await harness.destination(
                "mailchimp",
                {
                    "api_key": mailchimp.DEFAULT_API_KEY,
                    "list_id": "list1",
                    "base_url": f"{url}/3.0",
                },
            )
            started = [
                (
                    await harness.api.post(
                        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
                    )
                ).json()["id"]
                for segment_id in segments
            ]
            for worker in workers:
                worker.runner.wake()
            runs = [await harness.wait(run_id) for run_id in started]
    finally:
        for worker in workers:
            await worker.stop()
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"], runs
    first, second = runs
    assert first["started_at"] < second["finished_at"]
    assert second["started_at"] < first["finished_at"]
    assert state.stats.statuses[429] == 0
    assert state.stats.max_concurrency == 10
    audience = state.lists["list1"]
    assert len(audience.segment_named("Even").members) == 5000  # type: ignore[union-attr]
    assert len(audience.segment_named("Odd").members) == 5000  # type: ignore[union-attr]
