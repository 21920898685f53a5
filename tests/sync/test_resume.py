"""A run taken away from its worker mid-plan (its lease lost, as when the worker dies) is
resumed from its checkpoint and ends with the destination exact, counting nothing twice;
two customers sharing an email are one contact."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text

from tests.fakes import commerce, mailchimp
from tests.fakes.server import serve
from tests.support.waiting import eventually
from tests.sync.conftest import Harness, people


@pytest_asyncio.fixture
async def store() -> AsyncIterator[tuple[commerce.CommerceState, str]]:
    state = commerce.CommerceState()
    async with serve(commerce.create_app(state)) as url:
        yield state, url


@pytest.mark.asyncio
async def test_incremental_run_resumes_after_losing_its_lease(
    harness: Harness, store: tuple[commerce.CommerceState, str]
) -> None:
    state, url = store
    await harness.customers(*people(3000))
    segment_id = await harness.segment("Resumed", [f"c{i}" for i in range(2000)])
    destination_id = await harness.destination(
        "commerce",
        {
            "base_url": f"{url}/rest/admin/v2",
            "environment": "production",
            "store_id": "1",
            "token": commerce.DEFAULT_TOKEN,
        },
    )
    await harness.sync(segment_id, destination_id)
    await harness.remove(segment_id, [f"c{i}" for i in range(1000)])
    await harness.add(segment_id, [f"c{i}" for i in range(2000, 3000)])
    state.delay_next(0.02, count=100_000)
    started = await harness.api.post(
        f"/v1/segments/{segment_id}/syncs", json={"destination_id": destination_id}
    )
    run_id = started.json()["id"]
    harness.worker.runner.wake()

    async def position() -> int:
        async with harness.engine.connect() as conn:
            value = (
                await conn.execute(
                    text("SELECT checkpoint->>'position' FROM sync_runs WHERE id = :id"),
                    {"id": run_id},
                )
            ).scalar_one()
            return int(value or 0)

    assert await eventually(position, lambda p: p > 0, within=30) > 0
    # Another worker "takes over" and dies: ours loses its lease mid-plan (its writes no
    # longer hold), and claims the run again once the ghost's lease has expired.
    async with harness.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE jobs SET lease_owner = 'ghost', generation = generation + 1, "
                "attempts = attempts + 1, lease_expires_at = now() + interval '1 second' "
                "WHERE sync_run_id = :id"
            ),
            {"id": run_id},
        )
    run = await harness.wait(run_id)
    assert run["status"] == "succeeded", run
    group = state.group_named("Resumed")
    assert group is not None
    assert group.included() == {f"c{i}" for i in range(1000, 3000)}
    assert (run["stats"]["added"], run["stats"]["removed"]) == (1000, 1000)
    async with harness.engine.connect() as conn:
        attempts = (
            await conn.execute(
                text("SELECT attempts FROM sync_runs WHERE id = :id"), {"id": run_id}
            )
        ).scalar_one()  # as of its latest claim: ours, the ghost's, ours again
        leftovers = (await conn.execute(text("SELECT count(*) FROM sync_run_plan"))).scalar_one()
    assert attempts == 3
    assert leftovers == 0


@pytest.mark.asyncio
async def test_customers_sharing_an_email_are_one_contact(harness: Harness) -> None:
    state = mailchimp.MailchimpState()
    state.add_list("list1")
    await harness.customers(
        {"external_id": "a", "email": "home@example.com", "email_status": "subscribed"},
        {"external_id": "b", "email": "home@example.com", "email_status": "subscribed"},
        {"external_id": "c", "email": "c@example.com", "email_status": "subscribed"},
    )
    segment_id = await harness.segment("Household", ["a", "b", "c"])
    async with serve(mailchimp.create_app(state)) as url:
        destination_id = await harness.destination(
            "mailchimp",
            {"api_key": mailchimp.DEFAULT_API_KEY, "list_id": "list1", "base_url": f"{url}/3.0"},
        )
        run = await harness.sync(segment_id, destination_id)
        assert run["status"] == "succeeded", run
        assert (run["stats"]["planned_add"], run["stats"]["added"]) == (2, 2)
        segment = state.lists["list1"].segment_named("Household")
        assert segment is not None
        assert segment.members == {"home@example.com", "c@example.com"}
        # One of the two leaves: the address stays, the other still wants it.
        await harness.remove(segment_id, ["a"])
        run = await harness.sync(segment_id, destination_id)
        assert (run["stats"]["planned_add"], run["stats"]["planned_remove"]) == (0, 0), run
        await harness.remove(segment_id, ["b"])
        run = await harness.sync(segment_id, destination_id)
        assert run["stats"]["removed"] == 1, run
        assert segment.members == {"c@example.com"}
