"""The Klaviyo connector against the fake, which checks every request against Klaviyo's
official OpenAPI documents: lists, bulk import jobs, relationship removals, rate windows."""

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.destinations import KlaviyoConfig
from segments_shared.netguard import AllowList
from sync_worker.connectors import klaviyo as connector_module
from sync_worker.connectors.base import RunContext, SyncMember
from sync_worker.connectors.http import RetryPolicy
from sync_worker.connectors.registry import build_connector
from sync_worker.limiter import VendorLimiter
from tests.fakes import klaviyo
from tests.fakes.server import serve
from tests.fixtures.infra import FAKES_ALLOWED
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


@pytest.mark.asyncio
async def test_import_failures_that_name_no_profile_fail_the_batch(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    """The job says some profiles failed without saying which: none of the batch counts as
    added (the next sync sends them again), rather than all of it."""
    state, url = fake
    state.import_errors_name_profiles = False
    await harness.customers(*people(3))
    segment_id = await harness.segment("Unattributed", ["c0", "c1", "c2"])
    destination_id = await destination(harness, url)
    state.reject("c2@example.com", message="profile refused")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    assert (run["stats"]["added"], run["stats"]["failed_records"]) == (0, 3), run
    assert {f["record"] for f in run["failed_records"]} == {f"c{i}@example.com" for i in range(3)}
    assert "failed 1 profile(s) and did not name each one" in run["failed_records"][0]["reason"]
    assert await harness.held(segment_id, destination_id) == set()

    state.clear_faults()
    run = await harness.sync(segment_id, destination_id)
    assert (run["status"], run["stats"]["added"]) == ("succeeded", 3), run
    assert list_members(state, "Unattributed") == {f"c{i}@example.com" for i in range(3)}


@pytest.mark.asyncio
async def test_a_batch_over_5_mb_is_imported_in_several_jobs(
    clean_db: AsyncEngine, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    """10,000 profiles (a full batch) with long names weigh more than Klaviyo's 5 MB per
    import job (the fake answers 413 beyond it): the batch is split by size."""
    state, url = fake
    state.burst_limit, state.steady_limit = 1000, 100_000
    config = KlaviyoConfig(api_key=klaviyo.DEFAULT_API_KEY, base_url=f"{url}/api")
    limiter = VendorLimiter(clean_db)
    connector = build_connector(
        config,
        RunContext(sync_id="s", segment_id="g", segment_name="Heavy"),
        account="klaviyo-heavy",
        timeout=httpx.Timeout(30.0),
        policy=RetryPolicy(attempts=3, base_seconds=0.01, cap_seconds=0.1),
        limiter=limiter,
        allow=AllowList.parse(FAKES_ALLOWED),
    )
    members = [
        SyncMember(
            f"m{i:05d}@example.com",
            f"m{i}",
            f"m{i:05d}@example.com",
            first_name="F" * 250,
            last_name="L" * 250,
        )
        for i in range(connector_module.CAPABILITIES.batch_size)
    ]
    try:
        remote = await connector.find_or_create_segment("Heavy", None)
        result = await connector.add_members(remote, members)
    finally:
        await connector.aclose()
        await limiter.aclose()
    assert result.failed == {}
    assert len(state.jobs) == 2
    assert state.stats.statuses[413] == 0
    assert list_members(state, "Heavy") == {member.key for member in members}
    assert all(len(part) < 10_000 for part in connector_module.import_parts(members))


@pytest.mark.asyncio
async def test_a_list_create_that_timed_out_is_not_made_twice(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    """Klaviyo takes a second list of the same name: the worker looks before retrying."""
    state, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Slow", [f"c{i}" for i in range(3)])
    destination_id = await destination(harness, url)
    # Created, but answered after the worker's 2 s timeout.
    state.delay_next(2.5, method="POST", path="/api/lists")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert list_members(state, "Slow") == {f"c{i}@example.com" for i in range(3)}
    assert state.stats.requests["POST /api/lists"] == 1  # the retry found it instead


@pytest.mark.asyncio
async def test_a_create_turned_away_with_429_after_a_timeout_is_looked_for_again(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(2))
    segment_id = await harness.segment("Turned away", ["c0", "c1"])
    destination_id = await destination(harness, url)
    # The first create times out and is done 2.3 s after it arrived, after the first look
    # found nothing; the second meets a 429; the look after that finds the list.
    state.delay_next(2.3, when="before", method="POST", path="/api/lists")
    state.fail_next(429, retry_after=1, method="POST", path="/api/lists")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert list_members(state, "Turned away") == {"c0@example.com", "c1@example.com"}
    assert state.stats.requests["POST /api/lists"] == 2


@pytest.mark.asyncio
async def test_a_create_whose_last_attempt_timed_out_is_looked_for_before_failing(
    harness: Harness, fake: tuple[klaviyo.KlaviyoState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(2))
    segment_id = await harness.segment("Last try", ["c0", "c1"])
    destination_id = await destination(harness, url)
    state.fail_next(503, count=5, method="POST", path="/api/lists")  # six attempts in all
    state.delay_next(2.5, method="POST", path="/api/lists")  # done, answered too late
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert list_members(state, "Last try") == {"c0@example.com", "c1@example.com"}
    assert state.stats.requests["POST /api/lists"] == 6
