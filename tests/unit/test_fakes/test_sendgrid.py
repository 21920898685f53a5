"""The fake SendGrid over HTTP: lists, asynchronous upserts, removals, rate limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.fakes.sendgrid import SendGridState
from tests.unit.test_fakes.running import Running, requires_specs

Fake = Running[SendGridState]


async def create_list(fake: Fake, name: str) -> str:
    answer = await fake.client.post("/v3/marketing/lists", json={"name": name})
    assert answer.status_code == 201, answer.text
    list_id: str = answer.json()["id"]
    return list_id


async def wait_for_job(fake: Fake, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        answer = await fake.client.get(f"/v3/marketing/contacts/imports/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if job["status"] != "pending":
            return job
        await asyncio.sleep(0.01)
    raise AssertionError("the job never finished")


async def upsert(fake: Fake, list_id: str, *emails: str) -> dict[str, Any]:
    contacts = [{"email": email, "first_name": "Ann", "last_name": "Lee"} for email in emails]
    answer = await fake.client.put(
        "/v3/marketing/contacts", json={"list_ids": [list_id], "contacts": contacts}
    )
    assert answer.status_code == 202, answer.text
    return await wait_for_job(fake, answer.json()["job_id"])


def assert_errors(answer: httpx.Response, status: int) -> list[dict[str, Any]]:
    assert answer.status_code == status, answer.text
    found: list[dict[str, Any]] = answer.json()["errors"]
    assert found
    assert all("message" in error and "field" in error for error in found)
    return found


@pytest.mark.asyncio
async def test_bearer_key_is_required(sendgrid_fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=sendgrid_fake.url) as anonymous:
        missing = await anonymous.get("/v3/marketing/lists")
        wrong = await anonymous.get(
            "/v3/marketing/lists", headers={"Authorization": "Bearer SG.wrong"}
        )
    assert assert_errors(missing, 401)[0]["message"] == "authorization required"
    assert_errors(wrong, 401)


@pytest.mark.asyncio
async def test_every_answer_carries_rate_limit_headers(sendgrid_fake: Fake) -> None:
    sendgrid_fake.state.rate_limit = 5
    first = await sendgrid_fake.client.get("/v3/marketing/lists")
    second = await sendgrid_fake.client.get("/v3/marketing/lists/missing")

    for answer, remaining in ((first, "4"), (second, "3")):
        assert answer.headers["X-RateLimit-Limit"] == "5"
        assert answer.headers["X-RateLimit-Remaining"] == remaining
        reset = int(answer.headers["X-RateLimit-Reset"])
        assert time.time() - 1 <= reset <= time.time() + 61
    assert second.status_code == 404


@pytest.mark.asyncio
async def test_requests_beyond_the_window_get_429(sendgrid_fake: Fake) -> None:
    sendgrid_fake.state.rate_limit = 3
    sendgrid_fake.state.rate_window = 0.5

    answers = [await sendgrid_fake.client.get("/v3/marketing/lists") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json() == {"errors": [{"field": None, "message": "too many requests"}]}
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) >= int(time.time())
    await asyncio.sleep(0.6)
    assert (await sendgrid_fake.client.get("/v3/marketing/lists")).status_code == 200


@pytest.mark.asyncio
async def test_lists_are_created_and_found_by_paging(sendgrid_fake: Fake) -> None:
    ids = {await create_list(sendgrid_fake, name): name for name in ("One", "Two", "Three")}

    found: dict[str, str] = {}
    url: str | None = "/v3/marketing/lists?page_size=2"
    while url:
        page = (await sendgrid_fake.client.get(url)).json()
        found.update({each["id"]: each["name"] for each in page["result"]})
        url = page["_metadata"].get("next")
        assert page["_metadata"]["count"] == 3

    assert found == ids
    duplicate = await sendgrid_fake.client.post("/v3/marketing/lists", json={"name": "One"})
    assert assert_errors(duplicate, 400)[0]["field"] == "name"


@pytest.mark.asyncio
async def test_upsert_is_a_job_that_puts_contacts_on_the_list(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Buyers")
    sendgrid_fake.state.job_delay = 0.2

    answer = await sendgrid_fake.client.put(
        "/v3/marketing/contacts",
        json={"list_ids": [list_id], "contacts": [{"email": "Ann@Example.com"}]},
    )
    job_id = answer.json()["job_id"]
    pending = (await sendgrid_fake.client.get(f"/v3/marketing/contacts/imports/{job_id}")).json()
    assert pending["status"] == "pending"
    assert sendgrid_fake.state.lists[list_id].members == set()

    job = await wait_for_job(sendgrid_fake, job_id)
    assert job["status"] == "completed"
    assert job["job_type"] == "upsert"
    assert job["results"]["created_count"] == 1
    assert sendgrid_fake.state.lists[list_id].members == {"ann@example.com"}
    listed = await sendgrid_fake.client.get(f"/v3/marketing/lists/{list_id}")
    assert listed.json()["contact_count"] == 1


@pytest.mark.asyncio
async def test_contacts_leave_a_list_by_id(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Leavers")
    await upsert(sendgrid_fake, list_id, "a@example.com", "b@example.com")

    search = await sendgrid_fake.client.post(
        "/v3/marketing/contacts/search/emails",
        json={"emails": ["A@example.com", "missing@example.com"]},
    )
    result = search.json()["result"]
    assert result["missing@example.com"] == {"error": "contact not found"}
    contact_id = result["a@example.com"]["contact"]["id"]
    answer = await sendgrid_fake.client.delete(
        f"/v3/marketing/lists/{list_id}/contacts", params={"contact_ids": contact_id}
    )
    assert answer.status_code == 202
    await wait_for_job(sendgrid_fake, answer.json()["job_id"])

    assert sendgrid_fake.state.lists[list_id].members == {"b@example.com"}
    unknown = await sendgrid_fake.client.delete(
        f"/v3/marketing/lists/{list_id}/contacts", params={"contact_ids": "no-such-id"}
    )
    assert_errors(unknown, 404)


@pytest.mark.asyncio
async def test_search_finds_nobody_is_a_404_and_over_100_is_a_400(sendgrid_fake: Fake) -> None:
    nobody = await sendgrid_fake.client.post(
        "/v3/marketing/contacts/search/emails", json={"emails": ["nobody@example.com"]}
    )
    too_many = await sendgrid_fake.client.post(
        "/v3/marketing/contacts/search/emails",
        json={"emails": [f"user{index}@example.com" for index in range(101)]},
    )
    assert_errors(nobody, 404)
    assert assert_errors(too_many, 400)[0]["field"] == "emails"


@pytest.mark.asyncio
async def test_rejected_contacts_are_job_errors(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Partial")
    sendgrid_fake.state.reject("bad@example.com", message="suppressed")

    job = await upsert(sendgrid_fake, list_id, "good@example.com", "bad@example.com")

    assert job["status"] == "errored"
    assert job["results"]["errored_count"] == 1
    assert job["results"]["created_count"] == 1
    details = await sendgrid_fake.client.get(job["results"]["errors_url"])
    assert details.json()["errors"] == [{"email": "bad@example.com", "message": "suppressed"}]
    assert sendgrid_fake.state.lists[list_id].members == {"good@example.com"}


@pytest.mark.asyncio
async def test_upsert_limits(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Limits")
    over_count = [{"email": f"user{index}@example.com"} for index in range(30_001)]
    padding = "x" * 50
    over_size = [
        {"email": f"user{index}@example.com", "custom_fields": {"w1": padding}}
        for index in range(90_000)
    ]

    counted = await sendgrid_fake.client.put(
        "/v3/marketing/contacts", json={"list_ids": [list_id], "contacts": over_count}
    )
    sized = await sendgrid_fake.client.put(
        "/v3/marketing/contacts", json={"list_ids": [list_id], "contacts": over_size}
    )

    assert_errors(counted, 400)
    assert_errors(sized, 413)
    assert sendgrid_fake.state.jobs == {}


@pytest.mark.asyncio
async def test_unknown_list_in_an_upsert_is_refused(sendgrid_fake: Fake) -> None:
    answer = await sendgrid_fake.client.put(
        "/v3/marketing/contacts",
        json={
            "list_ids": ["0b0e3c5e-52c4-4a47-9d5c-6f0d4a0a1b2c"],
            "contacts": [{"email": "a@example.com"}],
        },
    )
    assert assert_errors(answer, 404)[0]["field"] == "list_ids[0]"


@pytest.mark.asyncio
async def test_export_lists_the_members(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Exported")
    await upsert(sendgrid_fake, list_id, "a@example.com", "b@example.com")

    started = await sendgrid_fake.client.post(
        "/v3/marketing/contacts/exports", json={"list_ids": [list_id], "file_type": "json"}
    )
    assert started.status_code == 202
    export_id = started.json()["id"]
    for _ in range(100):
        status = (
            await sendgrid_fake.client.get(f"/v3/marketing/contacts/exports/{export_id}")
        ).json()
        if status["status"] == "ready":
            break
        await asyncio.sleep(0.01)
    download = await sendgrid_fake.client.get(status["urls"][0])

    rows = [line for line in download.text.splitlines() if line]
    assert len(rows) == 2
    assert '"email": "a@example.com"' in rows[0]


@requires_specs
@pytest.mark.asyncio
async def test_requests_are_checked_against_the_openapi_document(sendgrid_fake: Fake) -> None:
    list_id = await create_list(sendgrid_fake, "Validated")

    long_email = await sendgrid_fake.client.put(
        "/v3/marketing/contacts",
        json={"list_ids": [list_id], "contacts": [{"email": "a" * 250 + "@example.com"}]},
    )
    not_uuid = await sendgrid_fake.client.put(
        "/v3/marketing/contacts",
        json={"list_ids": ["list-1"], "contacts": [{"email": "a@example.com"}]},
    )
    bad_page = await sendgrid_fake.client.get("/v3/marketing/lists", params={"page_size": 0})
    empty_name = await sendgrid_fake.client.post("/v3/marketing/lists", json={"name": ""})

    assert assert_errors(long_email, 400)[0]["field"] == "contacts[0].email"
    assert assert_errors(not_uuid, 400)[0]["field"] == "list_ids[0]"
    assert assert_errors(bad_page, 400)[0]["field"] == "page_size"
    assert assert_errors(empty_name, 400)[0]["field"] == "name"
    fine = await sendgrid_fake.client.put(
        "/v3/marketing/contacts",
        json={"list_ids": [list_id], "contacts": [{"email": "a@example.com", "first_name": "A"}]},
    )
    assert fine.status_code == 202
