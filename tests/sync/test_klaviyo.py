"""The Klaviyo connector against the fake, which checks every request against Klaviyo's
official OpenAPI documents: lists, bulk import jobs, relationship removals, rate windows."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fakes import klaviyo
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[klaviyo.KlaviyoState, str]]:
    state = klaviyo.KlaviyoState()
    async with serve(klaviyo.create_app(state)) as url:
        yield state, url


async def destination(harness: Harness, url: str) -> str:
    return await harness.destination(
        "klaviyo",
        {"api_key": klaviyo.DEFAULT_API_KEY, "revision": "2026-07-15", "base_url": f"{url}/api"},
    )


def list_members(state: klaviyo.KlaviyoState, name: str) -> set[str]:
    found = state.lists_named(name)
    assert len(found) == 1, f"{len(found)} lists named {name!r}"
    return found[0].members


@pytest.mark.asyncio
async def test_sync_imports_profiles_and_removes_relationships(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(5), {"external_id": "p0", "email": "p0@example.com"})
    segment_id = await harness.segment("Loyal", [f"c{i}" for i in range(5)] + ["p0"])
    destination_id = await destination(harness, url)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == 5
    assert run["stats"]["skipped_unreachable"] == 1
    assert list_members(state, "Loyal") == {f"c{i}@example.com" for i in range(5)}
    assert state.profiles["c4@example.com"].attributes["first_name"] == "First4"
    assert all("subscriptions" not in p.attributes for p in state.profiles.values())

    await harness.remove(segment_id, ["c1", "c3"])
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["removed"] == 2
    assert list_members(state, "Loyal") == {"c0@example.com", "c2@example.com", "c4@example.com"}
    assert len(state.profiles) == 5  # removed from the list, not deleted


@pytest.mark.asyncio
async def test_existing_list_is_matched_by_name_and_reconciled(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    state, url = fake
    target = klaviyo.KlaviyoList("AbC123", 'Say "hi" \\ VIPs')
    state.lists[target.id] = target
    for email in ("c0@example.com", "gone@example.com"):
        profile = klaviyo.Profile(klaviyo.profile_id(), email)
        state.profiles[email] = state.profiles_by_id[profile.id] = profile
        target.members.add(email)
    await harness.customers(*people(2))
    segment_id = await harness.segment('Say "hi" \\ VIPs', ["c0", "c1"])
    destination_id = await destination(harness, url)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (1, 1)
    assert target.members == {"c0@example.com", "c1@example.com"}
    assert len(state.lists) == 1


@pytest.mark.asyncio
async def test_throttling_and_import_errors(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Throttled", ["c0", "c1", "c2"])
    destination_id = await destination(harness, url)
    state.fail_next(429, retry_after=1, path="/api/profile-bulk-import-jobs")
    state.reject("c2@example.com", message="profile refused")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    assert run["failed_records"] == [
        {"record": "c2@example.com", "operation": "add", "reason": "profile refused"}
    ]
    assert list_members(state, "Throttled") == {"c0@example.com", "c1@example.com"}
    assert state.stats.statuses[429] == 1
