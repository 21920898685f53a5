"""The commerce connector against two fake stores (production and staging): export modes,
naming, member ids, and promotions from production to staging."""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from sync_worker.connectors.commerce import CAPABILITIES
from tests.fakes import commerce
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people, run_row


@dataclass
class Store:
    state: commerce.CommerceState
    url: str

    def config(self, environment: str, **extra: Any) -> dict[str, Any]:
        return {
            "base_url": f"{self.url}/rest/admin/v2",
            "environment": environment,
            "store_id": "10151",
            "token": commerce.DEFAULT_TOKEN,
            **extra,
        }

    def included(self, name: str) -> set[str]:
        group = self.state.group_named(name)
        assert group is not None, f"no member group {name!r}"
        return group.included()


@pytest_asyncio.fixture
async def stores() -> AsyncIterator[tuple[Store, Store]]:
    production, staging = commerce.CommerceState(), commerce.CommerceState()
    async with (
        serve(commerce.create_app(production)) as production_url,
        serve(commerce.create_app(staging)) as staging_url,
    ):
        yield Store(production, production_url), Store(staging, staging_url)


@pytest.mark.asyncio
async def test_replace_leaves_exactly_the_members_and_ignores_reachability(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, _ = stores
    await harness.customers(*people(4), {"external_id": "n0", "first_name": "No email"})
    segment_id = await harness.segment("Gold", ["c0", "c1", "c2", "c3", "n0"])
    destination_id = await harness.destination("commerce", production.config("production"))
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["skipped_unreachable"] == 0
    assert production.included("Gold") == {"c0", "c1", "c2", "c3", "n0"}
    assert production.state.group_named("Gold").usage == ["CustomerSegment"]  # type: ignore[union-attr]

    await harness.remove(segment_id, ["c0", "n0"])
    run = await harness.sync(segment_id, destination_id)
    assert (run["stats"]["removed"], run["status"]) == (2, "succeeded"), run
    assert production.included("Gold") == {"c1", "c2", "c3"}


@pytest.mark.asyncio
async def test_append_only_adds_to_the_group_of_the_same_name(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, _ = stores
    existing = commerce.MemberGroup(77, "Silver", "10151", ["CustomerSegment"])
    existing.memberships = {"legacy": "0", "c1": "0"}
    production.state.groups[existing.id] = existing
    await harness.customers(*people(3))
    segment_id = await harness.segment("Silver", ["c0", "c1"])
    config = production.config("production", export_mode="append")
    destination_id = await harness.destination("commerce", config)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (1, 0)
    assert existing.included() == {"legacy", "c0", "c1"}  # the union

    await harness.remove(segment_id, ["c0"])
    await harness.add(segment_id, ["c2"])
    run = await harness.sync(segment_id, destination_id)
    assert (run["stats"]["added"], run["stats"]["removed"]) == (1, 0), run
    assert existing.included() == {"legacy", "c0", "c1", "c2"}
    assert len(production.state.groups) == 1


@pytest.mark.asyncio
async def test_timestamped_naming_creates_a_new_group_every_run(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, _ = stores
    await harness.customers(*people(2))
    segment_id = await harness.segment("Bronze", ["c0", "c1"])
    config = production.config("production", naming="timestamped", report_name="Weekly")
    destination_id = await harness.destination("commerce", config)
    await harness.sync(segment_id, destination_id)
    await harness.remove(segment_id, ["c1"])
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    groups = sorted(production.state.groups.values(), key=lambda g: g.id)
    assert len(groups) == 2
    pattern = r"Weekly - Bronze - \d{4}-\d{2}-\d{2} - \d{6}"
    assert all(re.fullmatch(pattern, group.name) for group in groups), [g.name for g in groups]
    assert groups[0].included() == {"c0", "c1"}
    assert groups[1].included() == {"c0"}  # a new group holds the current members
    view = (
        await harness.api.get(f"/v1/segments/{segment_id}/destinations/{destination_id}")
    ).json()
    assert view["remote_name"] == groups[1].name
    assert view["member_count"] == 1


@pytest.mark.asyncio
async def test_store_answers_per_member(harness: Harness, stores: tuple[Store, Store]) -> None:
    production, _ = stores
    group = commerce.MemberGroup(90, "Picky", "10151", ["CustomerSegment"])
    group.memberships = {"c0": "0", "c1": "1"}  # c0 already in, c1 excluded by hand
    production.state.groups[group.id] = group
    production.state.add_customers("c0", "c1", "c2")  # c3 is unknown to the store
    await harness.customers(*people(4))
    segment_id = await harness.segment("Picky", ["c0", "c1", "c2", "c3"])
    destination_id = await harness.destination("commerce", production.config("production"))
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    reasons = {f["record"]: f["reason"] for f in run["failed_records"]}
    assert set(reasons) == {"c1", "c3"}
    assert "excludes this member" in reasons["c1"]
    assert "_ERR_MEMBER_NOT_FOUND" in reasons["c3"]
    assert group.included() == {"c0", "c2"}


@pytest.mark.asyncio
async def test_promotion_copies_what_production_holds_not_the_segment(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, staging = stores
    await harness.customers(*people(5))
    segment_id = await harness.segment("Launch", ["c0", "c1", "c2"])
    production_id = await harness.destination("commerce", production.config("production"))
    staging_id = await harness.destination("commerce", staging.config("staging"))
    # Staging already has a group of that name with someone production does not hold.
    stale = commerce.MemberGroup(5, "Launch", "10151", ["CustomerSegment"])
    stale.memberships = {"c4": "0", "c0": "0"}
    staging.state.groups[stale.id] = stale

    refused = await harness.api.post(
        f"/v1/segments/{segment_id}/promotions",
        json={"from_destination_id": production_id, "to_destination_id": staging_id},
    )
    assert refused.status_code == 409, refused.text  # production never synced it

    await harness.sync(segment_id, production_id)
    # The segment moves on; production is not synced again.
    await harness.remove(segment_id, ["c2"])
    await harness.add(segment_id, ["c3"])

    run = await harness.promote(segment_id, production_id, staging_id)
    assert run["status"] == "succeeded", run
    assert run["from_destination_id"] == production_id
    assert run["destination_id"] == staging_id
    assert stale.included() == {"c0", "c1", "c2"}
    assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (2, 1)
    assert len(staging.state.groups) == 1
    view = (await harness.api.get(f"/v1/segments/{segment_id}/destinations/{staging_id}")).json()
    assert view["remote_name"] == "Launch"
    assert view["member_count"] == 3
    assert view["last_run"]["kind"] == "promotion"

    # A staging store is not synced directly.
    direct = await harness.api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": staging_id}
    )
    assert direct.status_code == 409, direct.text


@pytest.mark.asyncio
async def test_promotion_waits_for_a_production_sync_in_progress(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, staging = stores
    await harness.customers(*people(3))
    segment_id = await harness.segment("Wait", ["c0"])
    production_id = await harness.destination("commerce", production.config("production"))
    staging_id = await harness.destination("commerce", staging.config("staging"))
    await harness.sync(segment_id, production_id)
    await harness.add(segment_id, ["c1", "c2"])
    # Production's next sync is slow; the promotion asked meanwhile copies its result.
    production.state.delay_next(1.5, method="POST", path="/rest/admin/v2/member-group-memberships")
    started = await harness.api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": production_id}
    )
    harness.worker.runner.wake()
    promoted = await harness.api.post(
        f"/v1/segments/{segment_id}/promotions",
        json={"from_destination_id": production_id, "to_destination_id": staging_id},
    )
    assert promoted.status_code == 202, promoted.text
    sync_run = await harness.wait(started.json()["id"])
    run = await harness.wait(promoted.json()["id"])
    assert sync_run["status"] == run["status"] == "succeeded", (sync_run, run)
    assert staging.included("Wait") == {"c0", "c1", "c2"}


MEMBERSHIPS = "/rest/admin/v2/member-group-memberships"


def assert_record_matches_the_store(store: set[str], held: set[str]) -> None:
    """The first 250 memberships went through, spread over the round's batches, none of
    which completed: what the store answered is recorded all the same. Only requests in
    flight when their batch failed (at most the store's concurrency) can be at the store
    without the worker knowing; the next sync sends them again."""
    assert len(store) >= 250
    assert held <= store
    assert len(store - held) < CAPABILITIES.concurrency, len(store - held)


@pytest.mark.asyncio
async def test_refused_token_mid_run_fails_the_run_at_once(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    """A 401 on one member request of a batch (of concurrent per-member requests) fails the
    run at once with the store's reason, instead of leaving it to be retried."""
    production, _ = stores
    await harness.customers(*people(1000))
    segment_id = await harness.segment("Revoked", [f"c{i}" for i in range(1000)])
    destination_id = await harness.destination("commerce", production.config("production"))
    production.state.fail_next(401, after=250, count=1_000_000, method="POST", path=MEMBERSHIPS)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("commerce refused the credentials (401) on add member"), run
    assert (await run_row(harness.engine, run["id"])).attempts == 1
    assert_record_matches_the_store(
        production.included("Revoked"), await harness.held(segment_id, destination_id)
    )
    assert run["stats"]["added"] == len(await harness.held(segment_id, destination_id))


@pytest.mark.asyncio
async def test_retries_exhausted_mid_run_fail_the_run_with_the_reason(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, _ = stores
    await harness.customers(*people(1000))
    segment_id = await harness.segment("Broken store", [f"c{i}" for i in range(1000)])
    destination_id = await harness.destination("commerce", production.config("production"))
    production.state.fail_next(500, after=250, count=1_000_000, method="POST", path=MEMBERSHIPS)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("commerce kept failing after 6 attempts: add member"), run
    assert "HTTP 500" in run["error"]
    assert (await run_row(harness.engine, run["id"])).attempts == 1
    assert_record_matches_the_store(
        production.included("Broken store"), await harness.held(segment_id, destination_id)
    )


@pytest.mark.asyncio
async def test_promotion_after_a_failed_production_sync_is_refused(
    harness: Harness, stores: tuple[Store, Store]
) -> None:
    production, staging = stores
    await harness.customers(*people(3))
    segment_id = await harness.segment("Failed first", ["c0"])
    production_id = await harness.destination("commerce", production.config("production"))
    staging_id = await harness.destination("commerce", staging.config("staging"))
    assert (await harness.sync(segment_id, production_id))["status"] == "succeeded"
    await harness.add(segment_id, ["c1", "c2"])
    production.state.fail_next(401, count=1_000_000, method="POST", path=MEMBERSHIPS)
    assert (await harness.sync(segment_id, production_id))["status"] == "failed"
    refused = await harness.api.post(
        f"/v1/segments/{segment_id}/promotions",
        json={"from_destination_id": production_id, "to_destination_id": staging_id},
    )
    assert refused.status_code == 409, refused.text
    assert "last sync of this segment failed" in refused.json()["detail"]
    assert staging.state.groups == {}
