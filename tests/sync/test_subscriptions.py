"""Subscriptions (SPEC §6.1) through the API and a real sync-worker against vendor fakes:
validation, on_change runs with their trigger, the ceiling under a steady stream, pausing on
an inactive segment and after three authentication failures, deletion with the segment."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text

from tests.fakes import mailchimp
from tests.fakes.server import serve
from tests.support.waiting import eventually
from tests.sync.conftest import Harness, people, start_worker

KEY = mailchimp.DEFAULT_API_KEY


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[mailchimp.MailchimpState, str]]:
    state = mailchimp.MailchimpState()
    state.add_list("list1")
    async with serve(mailchimp.create_app(state)) as url:
        yield state, url


async def mailchimp_destination(harness: Harness, url: str, key: str = KEY) -> str:
    return await harness.destination(
        "mailchimp", {"api_key": key, "list_id": "list1", "base_url": f"{url}/3.0"}
    )


async def subscribe(harness: Harness, segment_id: str, destination_id: str, **schedule: Any) -> Any:
    response = await harness.api.post(
        f"/v1/segments/{segment_id}/subscriptions",
        json={"destination_id": destination_id, "schedule": schedule},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def runs_of(harness: Harness, subscription_id: str) -> list[dict[str, Any]]:
    response = await harness.api.get("/v1/syncs", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [r for r in response.json()["items"] if r["subscription_id"] == subscription_id]


async def finished_runs(harness: Harness, subscription_id: str, count: int) -> list[Any]:
    async def probe() -> list[dict[str, Any]]:
        return [
            r
            for r in await runs_of(harness, subscription_id)
            if r["status"] in ("succeeded", "partial", "failed")
        ]

    return await eventually(probe, lambda runs: len(runs) >= count, within=30)


@pytest.mark.asyncio
async def test_bad_schedules_conflicts_and_versions(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    _, url = fake
    segment_id = await harness.segment("Validated")
    destination_id = await mailchimp_destination(harness, url)
    path = f"/v1/segments/{segment_id}/subscriptions"
    bad = [
        ({"mode": "on_change", "debounce_seconds": 0}, "/schedule/debounce_seconds"),
        ({"mode": "on_change", "debounce_seconds": 3601}, "/schedule/debounce_seconds"),
        ({"mode": "interval", "every_minutes": 10081}, "/schedule/every_minutes"),
        ({"mode": "cron", "cron": "0 6 * * 1-5 2026"}, "/schedule/cron"),
        ({"mode": "cron", "cron": "61 * * * *"}, "/schedule/cron"),
    ]
    for schedule, pointer in bad:
        response = await harness.api.post(
            path, json={"destination_id": destination_id, "schedule": schedule}
        )
        assert response.status_code == 422, response.text
        assert [e["pointer"] for e in response.json()["errors"]] == [pointer], response.text
    async with harness.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM subscriptions"))).scalar_one()
    assert stored == 0

    created = await subscribe(harness, segment_id, destination_id, mode="on_change")
    assert created["schedule"] == {"mode": "on_change", "debounce_seconds": 5}
    assert created["active"] is True
    assert created["paused_reason"] is None
    assert created["last_run"] is None
    assert created["version"] == 1
    again = await harness.api.post(
        path, json={"destination_id": destination_id, "schedule": {"mode": "on_change"}}
    )
    assert again.status_code == 409, again.text

    staging = await harness.destination(
        "commerce",
        {"environment": "staging", "store_id": "s1", "token": "t", "base_url": f"{url}/rest"},
    )
    refused = await harness.api.post(
        path, json={"destination_id": staging, "schedule": {"mode": "on_change"}}
    )
    assert refused.status_code == 409, refused.text

    one = f"/v1/subscriptions/{created['id']}"
    read = await harness.api.get(one)
    assert read.headers["ETag"] == '"1"'
    assert (await harness.api.get(one, headers={"If-None-Match": '"1"'})).status_code == 304
    stale = await harness.api.patch(one, json={"active": False}, headers={"If-Match": '"7"'})
    assert stale.status_code == 412, stale.text
    patched = await harness.api.patch(
        one,
        json={"schedule": {"mode": "interval", "every_minutes": 60}},
        headers={"If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["version"] == 2
    assert patched.json()["next_run_at"] is not None
    listed = await harness.api.get(path)
    assert [s["id"] for s in listed.json()["items"]] == [created["id"]]
    assert (await harness.api.delete(one, headers={"If-Match": '"1"'})).status_code == 412
    assert (await harness.api.delete(one)).status_code == 204
    assert (await harness.api.get(one)).status_code == 404
    missing = await harness.api.post(
        "/v1/segments/00000000-0000-0000-0000-000000000000/subscriptions",
        json={"destination_id": destination_id, "schedule": {"mode": "on_change"}},
    )
    assert missing.status_code == 404


@pytest.mark.asyncio
async def test_a_change_runs_with_trigger_change_and_reaches_the_esp(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Live", ["c0"])
    destination_id = await mailchimp_destination(harness, url)
    subscription = await subscribe(
        harness, segment_id, destination_id, mode="on_change", debounce_seconds=1
    )
    await harness.add(segment_id, ["c1", "c2"])
    (run,) = await finished_runs(harness, subscription["id"], 1)
    assert run["trigger"] == "change", run
    assert run["status"] == "succeeded", run
    segment = state.lists["list1"].segment_named("Live")
    assert segment is not None
    assert len(segment.members) == 3
    # The operator's view filters by trigger.
    manual = await harness.api.get("/v1/syncs", params={"trigger": "manual"})
    assert manual.json()["items"] == []
    changed = await harness.api.get(
        "/v1/syncs", params={"trigger": "change", "segment_id": segment_id}
    )
    assert [r["id"] for r in changed.json()["items"]] == [run["id"]]
    read = await harness.api.get(f"/v1/subscriptions/{subscription['id']}")
    assert read.json()["last_run"]["id"] == run["id"]
    # Nothing changed since: no other run.
    await asyncio.sleep(2.5)
    assert len(await runs_of(harness, subscription["id"])) == 1


@pytest.mark.asyncio
async def test_a_steady_stream_still_runs_by_the_ceiling(
    harness: Harness, service_env: dict[str, str], fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    _, url = fake
    await harness.worker.stop()
    harness.worker = await start_worker(service_env, subscription_change_ceiling_seconds=2.0)
    await harness.customers(*people(20))
    segment_id = await harness.segment("Stream")
    destination_id = await mailchimp_destination(harness, url)
    # A quiet period of an hour never comes under the stream below: only the ceiling runs it.
    subscription = await subscribe(
        harness, segment_id, destination_id, mode="on_change", debounce_seconds=3600
    )
    for i in range(12):
        await harness.add(segment_id, [f"c{i}"])
        await asyncio.sleep(0.5)
        if await runs_of(harness, subscription["id"]):
            break
    runs = await runs_of(harness, subscription["id"])
    assert runs, "no run within the ceiling"
    assert runs[0]["trigger"] == "change"


@pytest.mark.asyncio
async def test_an_inactive_segment_pauses_and_activation_runs_once(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    _, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Paused", ["c0"])
    destination_id = await mailchimp_destination(harness, url)
    subscription = await subscribe(
        harness, segment_id, destination_id, mode="on_change", debounce_seconds=1
    )
    assert (await harness.api.post(f"/v1/segments/{segment_id}/deactivate")).status_code == 200
    read = await harness.api.get(f"/v1/subscriptions/{subscription['id']}")
    assert read.json()["paused_reason"] == "segment_inactive"
    await harness.add(segment_id, ["c1"])
    await asyncio.sleep(3)
    assert await runs_of(harness, subscription["id"]) == []
    assert (await harness.api.post(f"/v1/segments/{segment_id}/activate")).status_code == 200
    (run,) = await finished_runs(harness, subscription["id"], 1)
    assert run["trigger"] == "change"
    await asyncio.sleep(2)
    assert len(await runs_of(harness, subscription["id"])) == 1


@pytest.mark.asyncio
async def test_three_auth_failures_pause_until_activated(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    _, url = fake
    await harness.customers(*people(5))
    segment_id = await harness.segment("Refused")
    destination_id = await mailchimp_destination(harness, url, key="wrong-key-us1")
    subscription = await subscribe(
        harness, segment_id, destination_id, mode="on_change", debounce_seconds=1
    )
    one = f"/v1/subscriptions/{subscription['id']}"
    for i in range(3):
        await harness.add(segment_id, [f"c{i}"])
        runs = await finished_runs(harness, subscription["id"], i + 1)
        assert all(r["status"] == "failed" for r in runs)
    read = (await harness.api.get(one)).json()
    assert read["paused_reason"] == "auth_failed"
    assert read["active"] is False
    await harness.add(segment_id, ["c3"])
    await asyncio.sleep(2.5)
    assert len(await runs_of(harness, subscription["id"])) == 3
    resumed = await harness.api.patch(one, json={"active": True})
    assert resumed.json()["paused_reason"] is None
    assert resumed.json()["active"] is True
    await finished_runs(harness, subscription["id"], 4)


@pytest.mark.asyncio
async def test_deleting_the_segment_or_destination_deletes_its_subscriptions(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    _, url = fake
    first = await harness.segment("Gone")
    second = await harness.segment("Kept")
    destination_id = await mailchimp_destination(harness, url)
    other = await mailchimp_destination(harness, url)
    gone = await subscribe(harness, first, destination_id, mode="interval", every_minutes=5)
    kept = await subscribe(harness, second, destination_id, mode="cron", cron="0 6 * * *")
    dropped = await subscribe(harness, second, other, mode="on_change")
    assert (await harness.api.delete(f"/v1/segments/{first}")).status_code == 204
    assert (await harness.api.delete(f"/v1/destinations/{other}")).status_code == 204
    assert (await harness.api.get(f"/v1/subscriptions/{gone['id']}")).status_code == 404
    assert (await harness.api.get(f"/v1/subscriptions/{dropped['id']}")).status_code == 404
    assert (await harness.api.get(f"/v1/subscriptions/{kept['id']}")).status_code == 200
