"""The Mailchimp connector against the fake: static segments, batch subscribe with
`status_if_new` only, reconciliation, renames, faults."""

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text

from sync_worker import planner
from tests.fakes import mailchimp
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people

KEY = mailchimp.DEFAULT_API_KEY


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[mailchimp.MailchimpState, str]]:
    state = mailchimp.MailchimpState()
    state.add_list("list1")
    async with serve(mailchimp.create_app(state)) as url:
        yield state, url


async def destination(harness: Harness, url: str, key: str = KEY) -> str:
    return await harness.destination(
        "mailchimp", {"api_key": key, "list_id": "list1", "base_url": f"{url}/3.0"}
    )


def segment_members(state: mailchimp.MailchimpState, name: str) -> set[str]:
    segment = state.lists["list1"].segment_named(name)
    assert segment is not None, f"no segment {name!r} at the fake"
    return segment.members


@pytest.mark.asyncio
async def test_first_then_incremental_sync_sends_only_reachable_changes(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    # Unsubscribed at Mailchimp though subscribed here: the sync must leave that alone.
    state.lists["list1"].add_member("c0@example.com", status="unsubscribed")
    await harness.customers(
        *people(6),
        {"external_id": "u0", "email": "u0@example.com", "email_status": "unsubscribed"},
        {"external_id": "p0", "email": "p0@example.com"},
        {"external_id": "n0", "first_name": "No email"},
    )
    segment_id = await harness.segment("VIP", [f"c{i}" for i in range(6)] + ["u0", "p0", "n0"])
    destination_id = await destination(harness, url)

    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"] == {
        "planned_add": 6,
        "planned_remove": 0,
        "added": 6,
        "removed": 0,
        "skipped_unreachable": 3,
        "failed_records": 0,
    }
    assert segment_members(state, "VIP") == {f"c{i}@example.com" for i in range(6)}
    assert state.status_changes == 0
    assert state.lists["list1"].member("c0@example.com").status == "unsubscribed"  # type: ignore[union-attr]
    assert state.lists["list1"].member("c3@example.com").merge_fields == {  # type: ignore[union-attr]
        "FNAME": "First3",
        "LNAME": "Last3",
    }

    # c1 leaves, c6 joins, c2 changes email: the old address goes, the new one comes.
    await harness.customers(*people(7)[6:])
    await harness.add(segment_id, ["c6"])
    await harness.remove(segment_id, ["c1"])
    changed = await harness.api.put("/v1/customers/c2", json={"email": "c2new@example.com"})
    assert changed.status_code == 200, changed.text
    state.stats.reset()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    stats = run["stats"]
    assert (stats["planned_add"], stats["planned_remove"]) == (2, 2)
    assert (stats["added"], stats["removed"]) == (2, 2)
    assert stats["skipped_unreachable"] == 3
    assert segment_members(state, "VIP") == {
        "c0@example.com",
        "c2new@example.com",
        "c3@example.com",
        "c4@example.com",
        "c5@example.com",
        "c6@example.com",
    }
    assert state.stats.requests["POST /3.0/lists/{list_id}"] == 1  # one subscribe batch
    assert await harness.held(segment_id, destination_id) == segment_members(state, "VIP")

    # The one who unsubscribed here leaves the ESP's segment (their status there stays).
    changed = await harness.api.put("/v1/customers/c5", json={"email_status": "unsubscribed"})
    assert changed.status_code == 200, changed.text
    state.stats.reset()
    run = await harness.sync(segment_id, destination_id)
    assert (run["stats"]["planned_remove"], run["stats"]["skipped_unreachable"]) == (1, 4)
    assert "c5@example.com" not in segment_members(state, "VIP")
    assert state.lists["list1"].member("c5@example.com").status == "subscribed"  # type: ignore[union-attr]

    state.stats.reset()
    run = await harness.sync(segment_id, destination_id)
    assert run["stats"]["planned_add"] == run["stats"]["planned_remove"] == 0
    assert state.stats.requests["POST /3.0/lists/{list_id}"] == 0
    assert state.stats.requests["POST /3.0/lists/{list_id}/segments/{segment_id}"] == 0
    assert state.status_changes == 0


@pytest.mark.asyncio
async def test_existing_segment_is_reconciled_and_a_new_one_starts_empty(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    audience = state.lists["list1"]
    for email in ("c0@example.com", "stranger@example.com"):
        audience.add_member(email)
    existing = mailchimp.Segment(
        501, "Returning", "list1", {"c0@example.com", "stranger@example.com"}
    )
    audience.segments[existing.id] = existing
    await harness.customers(*people(4))
    segment_id = await harness.segment("Returning", ["c0", "c1", "c2", "c3"])
    destination_id = await destination(harness, url)

    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    # Matched by name, read, reconciled: c0 was there, the stranger leaves.
    assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (3, 1)
    assert len(audience.segments) == 1
    assert existing.members == {f"c{i}@example.com" for i in range(4)}

    # Deleted at Mailchimp: the next sync creates it again and sends everyone.
    del audience.segments[existing.id]
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["planned_add"] == 4
    assert segment_members(state, "Returning") == {f"c{i}@example.com" for i in range(4)}


@pytest.mark.asyncio
async def test_remembered_segment_wins_over_the_name_and_follows_a_rename(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(2))
    segment_id = await harness.segment("Spring", ["c0", "c1"])
    destination_id = await destination(harness, url)
    await harness.sync(segment_id, destination_id)
    first = state.lists["list1"].segment_named("Spring")
    assert first is not None

    renamed = await harness.api.patch(f"/v1/segments/{segment_id}", json={"name": "Summer"})
    assert renamed.status_code == 200, renamed.text
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert [s.name for s in state.lists["list1"].segments.values()] == ["Summer"]
    assert first.name == "Summer"
    assert first.members == {"c0@example.com", "c1@example.com"}
    state_view = (
        await harness.api.get(f"/v1/segments/{segment_id}/destinations/{destination_id}")
    ).json()
    assert state_view["remote_id"] == str(first.id)
    assert state_view["remote_name"] == "Summer"
    assert state_view["member_count"] == 2
    assert state_view["last_run"]["id"] == run["id"]


@pytest.mark.asyncio
async def test_a_remote_segment_another_segment_syncs_to_is_not_taken_over(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    """A renamed segment keeps its remote segment (and its old name) until its next sync: a
    new segment with the old name must not adopt it, or the two would undo each other."""
    state, url = fake
    await harness.customers(*people(4))
    first_id = await harness.segment("Spring", ["c0", "c1"])
    destination_id = await destination(harness, url)
    assert (await harness.sync(first_id, destination_id))["status"] == "succeeded"
    renamed = await harness.api.patch(f"/v1/segments/{first_id}", json={"name": "Summer"})
    assert renamed.status_code == 200, renamed.text
    second_id = await harness.segment("Spring", ["c2", "c3"])

    refused = await harness.sync(second_id, destination_id)
    assert refused["status"] == "failed", refused
    assert "where segment 'Summer' syncs" in refused["error"]
    assert segment_members(state, "Spring") == {"c0@example.com", "c1@example.com"}

    assert (await harness.sync(first_id, destination_id))["status"] == "succeeded"
    assert (await harness.sync(second_id, destination_id))["status"] == "succeeded"
    assert segment_members(state, "Summer") == {"c0@example.com", "c1@example.com"}
    assert segment_members(state, "Spring") == {"c2@example.com", "c3@example.com"}


@pytest.mark.asyncio
async def test_a_customer_who_unsubscribes_after_the_plan_is_not_sent(
    harness: Harness,
    fake: tuple[mailchimp.MailchimpState, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan is written when a run starts; a long run reads it later. An addition is
    checked again when its round is read: consent withdrawn meanwhile is respected."""
    state, url = fake
    await harness.customers(*people(4))
    segment_id = await harness.segment("Consent", ["c0", "c1"])
    destination_id = await destination(harness, url)
    assert (await harness.sync(segment_id, destination_id))["status"] == "succeeded"
    await harness.add(segment_id, ["c2", "c3"])

    plan_sync = planner.plan_sync

    async def plan_then_unsubscribe(*args: Any, **kwargs: Any) -> planner.Plan:
        plan = await plan_sync(*args, **kwargs)
        async with harness.engine.begin() as conn:  # committed before the round is read
            await conn.execute(
                text("UPDATE customers SET email_status = 'unsubscribed' WHERE external_id = 'c3'")
            )
        return plan

    monkeypatch.setattr(planner, "plan_sync", plan_then_unsubscribe)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert (run["stats"]["planned_add"], run["stats"]["added"]) == (2, 1)
    assert segment_members(state, "Consent") == {f"c{i}@example.com" for i in range(3)}
    assert state.lists["list1"].member("c3@example.com") is None
    assert await harness.held(segment_id, destination_id) == {f"c{i}@example.com" for i in range(3)}


@pytest.mark.asyncio
async def test_transient_faults_are_retried(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(1200))
    segment_id = await harness.segment("Big", [f"c{i}" for i in range(1200)])
    destination_id = await destination(harness, url)
    state.fail_next(429, count=3)  # Mailchimp sends no Retry-After: back off with jitter
    state.fail_next(503, retry_after=1, path="/3.0/lists/list1")
    state.fail_next(500, count=2, path="/3.0/lists/list1/segments/*")
    # Slower than the worker's 2 s timeout: it gives up, retries, and the fake has the
    # request processed anyway (adding twice changes nothing).
    state.delay_next(2.5, method="POST", path="/3.0/lists/list1/segments/*")
    started = time.monotonic()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert len(segment_members(state, "Big")) == 1200
    assert state.stats.statuses[429] == 3
    assert state.stats.statuses[500] == 2
    assert run["stats"]["added"] == 1200


@pytest.mark.asyncio
async def test_rejected_records_make_the_run_partial_and_are_sent_again_next_time(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(5))
    segment_id = await harness.segment("Some", [f"c{i}" for i in range(5)])
    destination_id = await destination(harness, url)
    state.reject("c3@example.com", message="c3 looks fake")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    assert run["stats"]["failed_records"] == 1
    assert run["stats"]["added"] == 4
    assert run["failed_records"] == [
        {"record": "c3@example.com", "operation": "add", "reason": "ERROR_GENERIC: c3 looks fake"}
    ]
    assert "c3@example.com" not in segment_members(state, "Some")
    segment = (await harness.api.get(f"/v1/segments/{segment_id}")).json()
    assert segment["delivery"][0]["state"] == "synced"

    state.clear_faults()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == 1
    assert "c3@example.com" in segment_members(state, "Some")


@pytest.mark.asyncio
async def test_refused_credentials_fail_the_run_at_once(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Locked", ["c0", "c1", "c2"])
    destination_id = await destination(harness, url, key="wrong-key-us1")
    failed = {"status": "failed"}
    failed_before = REGISTRY.get_sample_value("segments_sync_runs_ended_total", failed)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert "refused the credentials (401)" in run["error"]
    assert state.stats.total == 1  # no retry of a 401
    # Counted for the `SegmentsSyncFailures` alert (deploy/prometheus/alerts.yml).
    failed_after = REGISTRY.get_sample_value("segments_sync_runs_ended_total", failed)
    assert failed_after == (failed_before or 0) + 1
    segment = (await harness.api.get(f"/v1/segments/{segment_id}")).json()
    assert segment["delivery"][0]["state"] == "failed"


@pytest.mark.asyncio
async def test_a_vendor_that_keeps_failing_fails_the_run(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(2))
    segment_id = await harness.segment("Down", ["c0", "c1"])
    destination_id = await destination(harness, url)
    state.fail_next(500, count=1000)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert "kept failing after 6 attempts" in run["error"]


@pytest.mark.asyncio
async def test_a_segment_create_that_timed_out_is_not_made_twice(
    harness: Harness, fake: tuple[mailchimp.MailchimpState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(3))
    segment_id = await harness.segment("Slow", [f"c{i}" for i in range(3)])
    destination_id = await destination(harness, url)
    # Created, but answered after the worker's 2 s timeout: it looks before retrying.
    state.delay_next(2.5, method="POST", path="/3.0/lists/list1/segments")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert [s.name for s in state.lists["list1"].segments.values()] == ["Slow"]
    assert segment_members(state, "Slow") == {f"c{i}@example.com" for i in range(3)}
    assert state.stats.requests["POST /3.0/lists/{list_id}/segments"] == 1
