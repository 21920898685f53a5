"""What counts as an attempt of a run, and runs that must not be carried out: a graceful
hand-over (SIGTERM) and a worker's own late renewal are not failed deliveries; a run queued
for a segment deactivated since fails without sending anything."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sync_worker.execution import INACTIVE
from tests.fakes import commerce, webhook
from tests.fakes.server import serve
from tests.support.waiting import eventually
from tests.sync.conftest import Harness, people, run_row, start_worker

FIND_GROUP = "/rest/admin/v2/member-groups/by-name-and-usage"


@pytest_asyncio.fixture
async def store() -> AsyncIterator[tuple[commerce.CommerceState, str]]:
    state = commerce.CommerceState()
    async with serve(commerce.create_app(state)) as url:
        yield state, url


def store_config(url: str) -> dict[str, Any]:
    return {
        "base_url": f"{url}/rest/admin/v2",
        "environment": "production",
        "store_id": "1",
        "token": commerce.DEFAULT_TOKEN,
    }


async def request_sync(harness: Harness, segment_id: str, destination_id: str) -> str:
    started = await harness.api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    assert started.status_code == 202, started.text
    run_id: str = started.json()["id"]
    return run_id


async def held_at_the_store(harness: Harness, state: commerce.CommerceState, run_id: str) -> None:
    """Until the run's worker waits for the store's answer to its first request."""
    harness.worker.runner.wake()
    await eventually(lambda: run_row(harness.engine, run_id), lambda r: r.status == "running")

    async def in_flight() -> int:
        return state.stats.in_flight

    assert await eventually(in_flight, lambda n: n > 0) > 0


@pytest.mark.asyncio
async def test_a_graceful_hand_over_is_not_an_attempt(
    api: httpx.AsyncClient,
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    store: tuple[commerce.CommerceState, str],
) -> None:
    state, url = store
    first = Harness(api, await start_worker(service_env), clean_db)
    try:
        await first.customers(*people(10))
        segment_id = await first.segment("Handed over", [f"c{i}" for i in range(10)])
        destination_id = await first.destination("commerce", store_config(url))
        # The store holds the worker's first request while the worker is told to stop.
        state.delay_next(3.0, when="before", method="GET", path=FIND_GROUP)
        run_id = await request_sync(first, segment_id, destination_id)
        await held_at_the_store(first, state, run_id)
    finally:
        await first.worker.stop()  # as on SIGTERM: the run is handed back at a round's start
    handed = await run_row(clean_db, run_id)
    assert (handed.status, handed.lease_owner) == ("running", None)  # claimable at once
    assert handed.attempts == 0

    second = Harness(api, await start_worker(service_env), clean_db)
    try:
        run = await second.wait(run_id)
    finally:
        await second.worker.stop()
    assert run["status"] == "succeeded", run
    assert (await run_row(clean_db, run_id)).attempts == 1
    group = state.group_named("Handed over")
    assert group is not None
    assert group.included() == {f"c{i}" for i in range(10)}


@pytest.mark.asyncio
async def test_taking_back_its_own_run_is_not_an_attempt(
    api: httpx.AsyncClient,
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    store: tuple[commerce.CommerceState, str],
) -> None:
    state, url = store
    # A long lease: nothing but a claim renews it while the store holds the request.
    harness = Harness(api, await start_worker(service_env, sync_lease_seconds=60.0), clean_db)
    try:
        await harness.customers(*people(10))
        segment_id = await harness.segment("Late renewal", [f"c{i}" for i in range(10)])
        destination_id = await harness.destination("commerce", store_config(url))
        state.delay_next(3.0, when="before", method="GET", path=FIND_GROUP)
        run_id = await request_sync(harness, segment_id, destination_id)
        await held_at_the_store(harness, state, run_id)
        # The lease runs out before a renewal gets through: the worker does not claim its
        # own run again (no second attempt); its renewal, which still holds, comes.
        async with clean_db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE jobs SET lease_expires_at = now() - interval '1 second' "
                    "WHERE sync_run_id = :id"
                ),
                {"id": run_id},
            )
        harness.worker.runner.wake()
        run = await harness.wait(run_id)
    finally:
        await harness.worker.stop()
    assert run["status"] == "succeeded", run
    assert (await run_row(clean_db, run_id)).attempts == 1


@pytest.mark.asyncio
async def test_a_run_of_a_segment_deactivated_since_fails_without_sending(
    api: httpx.AsyncClient, service_env: dict[str, str], clean_db: AsyncEngine
) -> None:
    state = webhook.WebhookState()
    async with serve(webhook.create_app(state)) as url:
        response = await api.post("/v1/customers/bulk", json={"customers": people(3)})
        assert response.status_code == 200, response.text
        segment = await api.post("/v1/segments", json={"name": "Paused"})
        segment_id = segment.json()["id"]
        await api.post(
            f"/v1/segments/{segment_id}/members", json={"external_ids": ["c0", "c1", "c2"]}
        )
        hook = await api.post(
            "/v1/destinations",
            json={
                "name": "Hook",
                "type": "webhook",
                "config": {"url": f"{url}/hook", "secret": webhook.DEFAULT_SECRET},
            },
        )
        destination_id = hook.json()["id"]
        # Queued while no worker runs, then the segment is deactivated.
        started = await api.post(
            f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
        )
        assert started.status_code == 202, started.text
        deactivated = await api.post(f"/v1/segments/{segment_id}/deactivate")
        assert deactivated.status_code == 200, deactivated.text
        harness = Harness(api, await start_worker(service_env), clean_db)
        try:
            run = await harness.wait(started.json()["id"])
        finally:
            await harness.worker.stop()
    assert run["status"] == "failed", run
    assert run["error"] == INACTIVE == "the segment is inactive: activate it before syncing it"
    assert run["stats"]["added"] == 0
    assert state.stats.total == 0
    assert await harness.held(segment_id, destination_id) == set()
    view = (await api.get(f"/v1/segments/{segment_id}")).json()
    assert [d["state"] for d in view["delivery"]] == ["failed"]
    # The API refuses a new sync of it, with the same words.
    refused = await api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == INACTIVE
