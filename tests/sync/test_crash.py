"""Crash safety with the real processes: a sync-worker killed with SIGKILL in the middle of
a 20,000-member sync, and one whose broker connection is cut, both finish with the fake
Mailchimp (its own process) holding exactly the segment's members."""

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes import mailchimp
from tests.fixtures.infra import ADMIN_KEY, AMQP_URL
from tests.fixtures.processes import ServiceProcess, Suite, free_port, running_suite
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.rabbit import PrivateBroker
from tests.support.waiting import eventually
from tests.sync.conftest import people
from tests.sync.fake_process import FakeProcess, start_fake

pytestmark = pytest.mark.e2e

MEMBERS = 20_000
# Each fake answer is this late: a round of 10 batches takes about a second, so a kill
# lands mid-run.
DELAY = {"delay": 0.25, "count": 1_000_000}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeProcess]:
    process = await start_fake("mailchimp", "--list-id", "list1")
    yield process
    await process.stop()


@pytest_asyncio.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=suite["segment-api"].url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    ) as client:
        yield client


async def prepare(
    api: httpx.AsyncClient, fake: FakeProcess, name: str, prefix: str
) -> tuple[str, str]:
    customers = people(MEMBERS, prefix=prefix)
    for start in range(0, MEMBERS, 10_000):
        response = await api.post(
            "/v1/customers/bulk", json={"customers": customers[start : start + 10_000]}
        )
        assert response.status_code == 200, response.text
    segment = await api.post("/v1/segments", json={"name": name})
    segment_id: str = segment.json()["id"]
    for start in range(0, MEMBERS, 10_000):
        ids = [c["external_id"] for c in customers[start : start + 10_000]]
        added = await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ids})
        assert added.status_code == 200, added.text
    destination = await api.post(
        "/v1/destinations",
        json={
            "name": f"Mailchimp {name}",
            "type": "mailchimp",
            "config": {
                "api_key": mailchimp.DEFAULT_API_KEY,
                "list_id": "list1",
                "base_url": f"{fake.url}/3.0",
            },
        },
    )
    assert destination.status_code == 201, destination.text
    destination_id: str = destination.json()["id"]
    return segment_id, destination_id


async def start_sync(api: httpx.AsyncClient, segment_id: str, destination_id: str) -> str:
    response = await api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


async def run_of(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/v1/syncs/{run_id}")).json()
    return body


async def finished(api: httpx.AsyncClient, run_id: str, within: float = 120.0) -> dict[str, Any]:
    run = await eventually(
        lambda: run_of(api, run_id), lambda r: r["status"] not in ("queued", "running"), within
    )
    assert run["status"] not in ("queued", "running"), run
    return run


async def segment_at_fake(fake: FakeProcess, name: str) -> set[str]:
    state = await fake.state(members=True)
    for segment in state["data"]["lists"]["list1"]["segments"].values():
        if segment["name"] == name:
            return set(segment["members"])
    raise AssertionError(f"no segment {name!r} at the fake")


@pytest.mark.asyncio
async def test_sigkilled_worker_is_resumed_and_the_destination_ends_exact(
    suite: Suite, api: httpx.AsyncClient, fake: FakeProcess
) -> None:
    segment_id, destination_id = await prepare(api, fake, "Killed mid-run", "k")
    await fake.faults(DELAY)
    run_id = await start_sync(api, segment_id, destination_id)
    # Kill once some rounds are recorded and most are not.
    run = await eventually(
        lambda: run_of(api, run_id), lambda r: r["stats"]["added"] >= 5000, within=60
    )
    assert 0 < run["stats"]["added"] < MEMBERS, run
    worker = suite["sync-worker"]
    await worker.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    assert (await run_of(api, run_id))["status"] == "running"
    await worker.start()
    run = await finished(api, run_id)
    assert run["status"] == "succeeded", run
    # The lease (5 s here) had to run out before another worker took the run over.
    assert time.monotonic() - killed_at >= 4
    expected = {f"k{i}@example.com" for i in range(MEMBERS)}
    assert await segment_at_fake(fake, "Killed mid-run") == expected
    state = await fake.state()
    assert state["data"]["status_changes"] == 0
    assert state["data"]["lists"]["list1"]["member_count"] == MEMBERS
    # Rounds sent twice (in flight at the kill) were counted once.
    assert run["stats"]["added"] == MEMBERS
    assert run["stats"]["planned_add"] == MEMBERS
    assert '"sync run started"' in worker.logs()
    assert '"attempt": 2' in worker.logs()


@pytest.mark.asyncio
async def test_cut_broker_connection_during_a_sync(
    suite: Suite,
    api: httpx.AsyncClient,
    fake: FakeProcess,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> None:
    proxy = TcpProxy("127.0.0.1", int(AMQP_URL.rsplit(":", 1)[1].split("/")[0]))
    proxy_port = await proxy.start()
    # Replace the suite's worker with one that reaches RabbitMQ through the proxy.
    await suite["sync-worker"].stop()
    env = {
        **suite["sync-worker"].env,
        "SEGMENTS_AMQP_URL": AMQP_URL.replace(":5672", f":{proxy_port}"),
        "SEGMENTS_SYNC_WORKER_PORT": str(free_port()),
    }
    worker = ServiceProcess(
        "sync-worker", int(env["SEGMENTS_SYNC_WORKER_PORT"]), env, tmp_path / "proxied.log"
    )
    await worker.start()
    try:
        segment_id, destination_id = await prepare(api, fake, "Broker cut", "b")
        other_id, _ = await prepare_small(api)
        await fake.faults(DELAY)
        run_id = await start_sync(api, segment_id, destination_id)
        await eventually(
            lambda: run_of(api, run_id), lambda r: r["stats"]["added"] >= 2000, within=60
        )
        await proxy.cut()
        async with httpx.AsyncClient() as client:
            ready = await eventually(
                lambda: client.get(f"{worker.url}/readyz"), lambda r: r.status_code == 503, 20
            )
            assert ready.status_code == 503  # the worker knows the broker is gone
        # Requested while the worker cannot hear it: the runner finds it in the database.
        second_id = await start_sync(api, other_id, destination_id)
        await asyncio.sleep(2)
        await proxy.start(proxy_port)
        run = await finished(api, run_id)
        second = await finished(api, second_id)
        assert run["status"] == second["status"] == "succeeded", (run, second)
        expected = {f"b{i}@example.com" for i in range(MEMBERS)}
        assert await segment_at_fake(fake, "Broker cut") == expected
        assert await segment_at_fake(fake, "Small") == {f"s{i}@example.com" for i in range(3)}
        assert run["stats"]["added"] == MEMBERS

        # sync.completed waited in the outbox and went out once the broker was back.
        async def unpublished() -> int:
            async with clean_db.connect() as conn:
                return int(
                    (
                        await conn.execute(
                            text(
                                "SELECT count(*) FROM outbox WHERE published_at IS NULL "
                                "AND event_type = 'sync.completed'"
                            )
                        )
                    ).scalar_one()
                )

        assert await eventually(unpublished, lambda n: n == 0, within=30) == 0
        async with httpx.AsyncClient() as client:
            ready = await eventually(
                lambda: client.get(f"{worker.url}/readyz"), lambda r: r.status_code == 200, 30
            )
            assert ready.status_code == 200
    finally:
        await worker.stop()
        await proxy.cut()


async def prepare_small(api: httpx.AsyncClient) -> tuple[str, None]:
    response = await api.post("/v1/customers/bulk", json={"customers": people(3, prefix="s")})
    assert response.status_code == 200, response.text
    segment = await api.post("/v1/segments", json={"name": "Small"})
    segment_id: str = segment.json()["id"]
    await api.post(f"/v1/segments/{segment_id}/members", json={"external_ids": ["s0", "s1", "s2"]})
    return segment_id, None


@pytest.mark.asyncio
async def test_rabbitmq_restart_during_a_sync(
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    private_broker: PrivateBroker,
    fake: FakeProcess,
) -> None:
    """The whole broker goes down and comes back (a node of the test's own: the machine's
    is shared): the run finishes exact, and the services hear new requests afterwards."""
    env = {**service_env, "SEGMENTS_AMQP_URL": private_broker.url}
    async with (
        running_suite(env, tmp_path, request) as suite,
        httpx.AsyncClient(
            base_url=suite["segment-api"].url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        ) as api,
    ):
        segment_id, destination_id = await prepare(api, fake, "Broker restart", "r")
        await fake.faults(DELAY)
        run_id = await start_sync(api, segment_id, destination_id)
        await eventually(lambda: run_of(api, run_id), lambda r: r["stats"]["added"] >= 2000, 60)
        await private_broker.restart_app(down_for=3)
        run = await finished(api, run_id)
        assert run["status"] == "succeeded", run
        expected = {f"r{i}@example.com" for i in range(MEMBERS)}
        assert await segment_at_fake(fake, "Broker restart") == expected
        assert run["stats"]["added"] == MEMBERS
        # The services reconnect: a change made now reaches the sync-worker through the
        # broker (the run is requested by event), and its sync.completed is published.
        for service in ("segment-api", "sync-worker"):
            await suite[service].wait_ready(60)
        await fake.clear_faults()
        second = await finished(api, await start_sync(api, segment_id, destination_id))
        assert second["status"] == "succeeded", second
        assert second["stats"]["planned_add"] == second["stats"]["planned_remove"] == 0

        async def unpublished() -> int:
            async with clean_db.connect() as conn:
                query = text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                return int((await conn.execute(query)).scalar_one())

        assert await eventually(unpublished, lambda n: n == 0, within=30) == 0
