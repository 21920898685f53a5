"""The webhook connector against the fake receiver, which checks the signature of every
request it gets: batches of at most 1,000 members, a retry signed afresh, a refused batch,
a refused signature, removals, and a batch that fails for good while later ones succeed."""

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes import webhook
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people, run_row, start_worker

SECRET = webhook.DEFAULT_SECRET


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[webhook.WebhookState, str]]:
    state = webhook.WebhookState()
    async with serve(webhook.create_app(state)) as url:
        yield state, url


async def destination(harness: Harness, url: str, secret: str = SECRET) -> str:
    return await harness.destination("webhook", {"url": f"{url}/hooks/segments", "secret": secret})


def batch_members(state: webhook.WebhookState, field: str) -> list[dict[str, object]]:
    return [member for batch in state.batches for member in batch[field]]


@pytest.mark.asyncio
async def test_signed_batches_of_at_most_1000_and_removals_with_their_fields(
    harness: Harness, receiver: tuple[webhook.WebhookState, str]
) -> None:
    state, url = receiver
    await harness.customers(*people(2500))
    everyone = [f"c{i}" for i in range(2500)]
    segment_id = await harness.segment("Hooked", everyone)
    destination_id = await destination(harness, url)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == 2500
    sizes = [len(batch["added"]) + len(batch["removed"]) for batch in state.batches]
    assert sorted(sizes) == [500, 1000, 1000]
    assert (state.bad_signatures, state.stale_signatures) == (0, 0)
    assert {batch["segment_name"] for batch in state.batches} == {"Hooked"}
    assert {batch["sync_id"] for batch in state.batches} == {run["id"]}
    assert len({batch["batch"] for batch in state.batches}) == 3
    assert state.external_ids(segment_id) == set(everyone)
    assert await harness.held(segment_id, destination_id) == set(everyone)
    added = {m["external_id"]: m for m in batch_members(state, "added")}
    assert added["c7"] == {
        "external_id": "c7",
        "email": "c7@example.com",
        "first_name": "First7",
        "last_name": "Last7",
    }

    state.batches.clear()
    await harness.remove(segment_id, everyone[:1200])
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["removed"] == 1200
    assert sorted(len(batch["removed"]) for batch in state.batches) == [200, 1000]
    assert batch_members(state, "added") == []
    removed = batch_members(state, "removed")
    assert {m["external_id"] for m in removed} == set(everyone[:1200])
    # A removed member carries every field of a member: its id and the address the worker
    # recorded (the record keeps no names, so those are null).
    assert all(set(m) == {"external_id", "email", "first_name", "last_name"} for m in removed)
    assert all(m["email"] == f"{m['external_id']}@example.com" for m in removed)
    assert state.external_ids(segment_id) == set(everyone[1200:])
    assert await harness.held(segment_id, destination_id) == set(everyone[1200:])
    assert state.bad_signatures == 0


@pytest.mark.asyncio
async def test_a_retry_is_signed_afresh(
    api: httpx.AsyncClient,
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    receiver: tuple[webhook.WebhookState, str],
) -> None:
    state, url = receiver
    # The receiver takes signatures up to 1 s old; the retry comes 2 s after the first
    # attempt (Retry-After), so a signature computed once would be refused as stale.
    state.tolerance = 1.0
    state.fail_next(503, retry_after=2)
    worker = await start_worker(service_env, sync_retry_cap_seconds=1.0)
    harness = Harness(api, worker, clean_db)
    try:
        await harness.customers(*people(3))
        segment_id = await harness.segment("Retried", ["c0", "c1", "c2"])
        run = await harness.sync(segment_id, await destination(harness, url))
    finally:
        await worker.stop()
    assert run["status"] == "succeeded", run
    assert state.stats.statuses[503] == 1
    assert (state.bad_signatures, state.stale_signatures) == (0, 0)
    assert len(state.batches) == 1
    assert state.external_ids(segment_id) == {"c0", "c1", "c2"}


@pytest.mark.asyncio
async def test_a_refused_batch_fails_its_records_and_the_run_is_partial(
    harness: Harness, receiver: tuple[webhook.WebhookState, str]
) -> None:
    state, url = receiver
    await harness.customers(*people(1500))
    everyone = {f"c{i}" for i in range(1500)}
    segment_id = await harness.segment("Picky hook", sorted(everyone))
    destination_id = await destination(harness, url)
    state.reject("c1200", message="c1200 is on our block list")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    received = state.external_ids(segment_id)
    refused = everyone - received
    # The receiver refuses the whole batch (422): every member of it is a failed record.
    assert "c1200" in refused
    assert len(refused) in (500, 1000)
    assert run["stats"]["failed_records"] == len(refused)
    assert run["stats"]["added"] == len(received)
    assert len(run["failed_records"]) == 20
    assert all(f["operation"] == "add" for f in run["failed_records"])
    assert all("the webhook answered 422" in f["reason"] for f in run["failed_records"])
    assert await harness.held(segment_id, destination_id) == received

    # The next sync sends the refused batch's members again.
    state.clear_faults()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    assert run["stats"]["added"] == len(refused)
    assert state.external_ids(segment_id) == everyone


@pytest.mark.asyncio
async def test_a_refused_signature_fails_the_run_at_once(
    harness: Harness, receiver: tuple[webhook.WebhookState, str]
) -> None:
    state, url = receiver
    await harness.customers(*people(3))
    segment_id = await harness.segment("Wrong secret", ["c0", "c1", "c2"])
    destination_id = await destination(harness, url, secret="not-the-receiver-secret")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("webhook refused the credentials (401)"), run
    assert (await run_row(harness.engine, run["id"])).attempts == 1
    assert state.bad_signatures == 1  # not retried
    assert state.batches == []
    assert await harness.held(segment_id, destination_id) == set()


@pytest.mark.asyncio
async def test_batches_back_after_a_failed_one_are_recorded(
    harness: Harness, receiver: tuple[webhook.WebhookState, str]
) -> None:
    """A batch fails for good (401) while the batches sent with it (and any sent after it
    before the failure stopped the sending) succeed: all that came back is recorded, so the
    record is what the receiver holds."""
    state, url = receiver
    await harness.customers(*people(12_000))
    segment_id = await harness.segment("Half sent", [f"c{i}" for i in range(12_000)])
    destination_id = await destination(harness, url)
    # The first request is refused at once; the other three batches of its round (sent
    # together, four at a time) come back later, after the refusal is known.
    state.fail_next(401)
    state.delay_next(0.3, count=1_000_000)
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "failed", run
    assert "refused the credentials (401)" in run["error"]
    received = state.external_ids(segment_id)
    assert 3_000 <= len(received) <= 11_000
    assert await harness.held(segment_id, destination_id) == received
    assert run["stats"]["added"] == len(received)

    # The next sync sends only what the receiver lacks.
    state.clear_faults()
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    missing = 12_000 - len(received)
    assert (run["stats"]["planned_add"], run["stats"]["added"]) == (missing, missing)
    assert len(state.external_ids(segment_id)) == 12_000
