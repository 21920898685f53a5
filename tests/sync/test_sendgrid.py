"""The SendGrid connector against the fake, which checks every request against SendGrid's
official OpenAPI documents: lists, import and removal jobs, exports, rate limits."""

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fakes import sendgrid
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[sendgrid.SendGridState, str]]:
    state = sendgrid.SendGridState()
    async with serve(sendgrid.create_app(state)) as url:
        yield state, url


async def destination(harness: Harness, url: str, key: str = sendgrid.DEFAULT_API_KEY) -> str:
    return await harness.destination("sendgrid", {"api_key": key, "base_url": f"{url}/v3"})


def list_members(state: sendgrid.SendGridState, name: str) -> set[str]:
    found = state.list_named(name)
    assert found is not None, f"no list {name!r} at the fake"
    return found.members


@pytest.mark.asyncio
async def test_sync_adds_and_removes_through_jobs(
    harness: Harness, fake: tuple[sendgrid.SendGridState, str]
) -> None:
    state, url = fake
    await harness.customers(
        *people(6), {"external_id": "u0", "email": "u0@example.com", "email_status": "cleaned"}
    )
    segment_id = await harness.segment("Newsletter", [f"c{i}" for i in range(6)] + ["u0"])
    destination_id = await destination(harness, url)

    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == 6
    assert run["stats"]["skipped_unreachable"] == 1
    assert list_members(state, "Newsletter") == {f"c{i}@example.com" for i in range(6)}
    assert state.contacts["c2@example.com"].fields["first_name"] == "First2"
    # No subscription status travels: SendGrid keeps its own unsubscribes.
    assert all("status" not in c.fields for c in state.contacts.values())

    await harness.remove(segment_id, ["c0", "c5"])
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert (run["stats"]["planned_remove"], run["stats"]["removed"]) == (2, 2)
    assert list_members(state, "Newsletter") == {f"c{i}@example.com" for i in range(1, 5)}
    assert {job.job_type for job in state.jobs.values()} == {"upsert", "delete"}


@pytest.mark.asyncio
async def test_existing_list_is_read_through_an_export_and_reconciled(
    harness: Harness, fake: tuple[sendgrid.SendGridState, str]
) -> None:
    state, url = fake
    listed = sendgrid.ContactList("0f6b3a8e-6a8f-4c37-9f5b-0c6e2f1f4a11", "Buyers")
    state.lists[listed.id] = listed
    for email in ("c0@example.com", "old@example.com"):
        contact = sendgrid.Contact(f"id-{email}", email, list_ids={listed.id})
        state.contacts[email] = state.contacts_by_id[contact.id] = contact
        listed.members.add(email)
    await harness.customers(*people(3))
    segment_id = await harness.segment("Buyers", ["c0", "c1", "c2"])
    destination_id = await destination(harness, url)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (2, 1)
    assert listed.members == {"c0@example.com", "c1@example.com", "c2@example.com"}
    assert len(state.exports) == 1


@pytest.mark.asyncio
async def test_rate_limit_reset_is_waited_for_and_job_errors_are_per_record(
    harness: Harness, fake: tuple[sendgrid.SendGridState, str]
) -> None:
    state, url = fake
    await harness.customers(*people(4))
    segment_id = await harness.segment("Limited", [f"c{i}" for i in range(4)])
    destination_id = await destination(harness, url)
    state.rate_limit = 3  # a 429 comes with X-RateLimit-Reset, seconds away
    state.rate_window = 2.0
    state.reject("c1@example.com", message="invalid contact")
    started = time.monotonic()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    assert run["failed_records"] == [
        {"record": "c1@example.com", "operation": "add", "reason": "invalid contact"}
    ]
    assert list_members(state, "Limited") == {"c0@example.com", "c2@example.com", "c3@example.com"}
    assert state.stats.statuses[429] >= 1
    assert time.monotonic() - started >= 1.0


@pytest.mark.asyncio
async def test_a_revoked_key_fails_the_run(
    harness: Harness, fake: tuple[sendgrid.SendGridState, str]
) -> None:
    _state, url = fake
    await harness.customers(*people(1))
    segment_id = await harness.segment("Nope", ["c0"])
    destination_id = await destination(harness, url, key="SG.revoked")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed"
    assert "sendgrid refused the credentials (401)" in run["error"]
