"""The fake Mailchimp over HTTP: audiences, batch subscribe, static segments, limits."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest

from tests.fakes.mailchimp import MailchimpState, subscriber_hash
from tests.unit.test_fakes.running import Running

Fake = Running[MailchimpState]


def member(email: str, first: str = "Ann", last: str = "Lee") -> dict[str, Any]:
    return {
        "email_address": email,
        "status_if_new": "subscribed",
        "merge_fields": {"FNAME": first, "LNAME": last},
    }


async def subscribe(fake: Fake, *emails: str) -> dict[str, Any]:
    answer = await fake.client.post(
        "/lists/list1",
        json={"members": [member(email) for email in emails], "update_existing": True},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def create_segment(fake: Fake, name: str) -> int:
    answer = await fake.client.post(
        "/lists/list1/segments", json={"name": name, "static_segment": []}
    )
    assert answer.status_code == 200, answer.text
    segment_id: int = answer.json()["id"]
    return segment_id


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    assert body["status"] == status
    return body


@pytest.mark.asyncio
async def test_credentials_are_checked(mailchimp_fake: Fake) -> None:
    fake = mailchimp_fake
    async with httpx.AsyncClient(base_url=fake.url + "/3.0") as anonymous:
        missing = await anonymous.get("/ping")
        wrong = await anonymous.get("/ping", auth=("user", "not-the-key-us1"))
        right = await anonymous.get("/ping", auth=("whoever", fake.state.api_key))
    assert assert_problem(missing, 401)["title"] == "API Key Missing"
    assert assert_problem(wrong, 401)["title"] == "API Key Invalid"
    assert right.status_code == 200


@pytest.mark.asyncio
async def test_batch_subscribe_adds_members_keyed_by_subscriber_hash(mailchimp_fake: Fake) -> None:
    body = await subscribe(mailchimp_fake, "Ann.Lee@Example.com", "bob@example.com")

    assert body["total_created"] == 2
    assert body["total_updated"] == 0
    assert body["error_count"] == 0
    assert body["errors"] == []
    digest = hashlib.md5(b"ann.lee@example.com").hexdigest()
    assert subscriber_hash("Ann.Lee@Example.com") == digest
    audience = mailchimp_fake.state.lists["list1"]
    assert audience.members[digest].status == "subscribed"
    assert audience.members[digest].merge_fields == {"FNAME": "Ann", "LNAME": "Lee"}
    answer = await mailchimp_fake.client.get(f"/lists/list1/members/{digest}")
    assert answer.json()["email_address"] == "Ann.Lee@Example.com"


@pytest.mark.asyncio
async def test_status_if_new_never_changes_an_existing_member(mailchimp_fake: Fake) -> None:
    audience = mailchimp_fake.state.lists["list1"]
    audience.add_member("gone@example.com", status="unsubscribed")

    body = await subscribe(mailchimp_fake, "gone@example.com")

    assert body["total_updated"] == 1
    assert audience.members[subscriber_hash("gone@example.com")].status == "unsubscribed"
    assert mailchimp_fake.state.status_changes == 0
    explicit = {"email_address": "gone@example.com", "status": "subscribed"}
    answer = await mailchimp_fake.client.post(
        "/lists/list1", json={"members": [explicit], "update_existing": True}
    )
    assert answer.json()["total_updated"] == 1
    assert audience.members[subscriber_hash("gone@example.com")].status == "subscribed"
    assert mailchimp_fake.state.status_changes == 1


@pytest.mark.asyncio
async def test_per_member_errors_come_in_a_200_answer(mailchimp_fake: Fake) -> None:
    mailchimp_fake.state.lists["list1"].add_member("old@example.com")
    mailchimp_fake.state.reject("Refused@example.com", message="blocked by the test")

    answer = await mailchimp_fake.client.post(
        "/lists/list1",
        json={
            "members": [
                member("new@example.com"),
                member("not-an-email"),
                member("refused@example.com"),
                member("old@example.com"),
                {"email_address": "nostatus@example.com"},
            ]
        },
    )

    assert answer.status_code == 200
    body = answer.json()
    assert body["total_created"] == 1
    assert body["error_count"] == 4
    codes = {error["email_address"]: error["error_code"] for error in body["errors"]}
    assert codes == {
        "not-an-email": "ERROR_GENERIC",
        "refused@example.com": "ERROR_GENERIC",
        "old@example.com": "ERROR_CONTACT_EXISTS",
        "nostatus@example.com": "ERROR_GENERIC",
    }
    assert "blocked by the test" in {error["error"] for error in body["errors"]}
    assert mailchimp_fake.state.lists["list1"].member("refused@example.com") is None


@pytest.mark.asyncio
async def test_more_than_500_members_is_a_400(mailchimp_fake: Fake) -> None:
    emails = [f"user{index}@example.com" for index in range(501)]
    answer = await mailchimp_fake.client.post(
        "/lists/list1", json={"members": [member(email) for email in emails]}
    )

    assert "at most 500" in assert_problem(answer, 400)["detail"]
    assert mailchimp_fake.state.lists["list1"].members == {}


@pytest.mark.asyncio
async def test_unknown_list_is_a_404(mailchimp_fake: Fake) -> None:
    answer = await mailchimp_fake.client.post("/lists/nope", json={"members": []})
    assert_problem(answer, 404)


@pytest.mark.asyncio
async def test_static_segments_are_found_by_paging(mailchimp_fake: Fake) -> None:
    ids = [await create_segment(mailchimp_fake, f"Segment {index}") for index in range(3)]

    names: dict[str, int] = {}
    offset = 0
    while True:
        answer = await mailchimp_fake.client.get(
            "/lists/list1/segments", params={"type": "static", "count": 2, "offset": offset}
        )
        page = answer.json()
        assert page["total_items"] == 3
        names.update({each["name"]: each["id"] for each in page["segments"]})
        assert all(each["type"] == "static" for each in page["segments"])
        offset += 2
        if offset >= page["total_items"]:
            break

    assert names == {f"Segment {index}": ids[index] for index in range(3)}
    duplicate = await mailchimp_fake.client.post(
        "/lists/list1/segments", json={"name": "Segment 1", "static_segment": []}
    )
    assert_problem(duplicate, 400)
    too_many = await mailchimp_fake.client.get("/lists/list1/segments", params={"count": 1001})
    assert_problem(too_many, 400)


@pytest.mark.asyncio
async def test_segment_holds_only_audience_members(mailchimp_fake: Fake) -> None:
    await subscribe(mailchimp_fake, "a@example.com", "b@example.com", "c@example.com")
    segment_id = await create_segment(mailchimp_fake, "VIP")

    answer = await mailchimp_fake.client.post(
        f"/lists/list1/segments/{segment_id}",
        json={"members_to_add": ["A@example.com", "b@example.com", "stranger@example.com"]},
    )

    body = answer.json()
    assert answer.status_code == 200
    assert body["total_added"] == 2
    assert body["error_count"] == 1
    assert body["errors"][0]["email_addresses"] == ["stranger@example.com"]
    segment = mailchimp_fake.state.lists["list1"].segments[segment_id]
    assert segment.members == {"a@example.com", "b@example.com"}

    answer = await mailchimp_fake.client.post(
        f"/lists/list1/segments/{segment_id}",
        json={"members_to_add": ["c@example.com"], "members_to_remove": ["a@example.com"]},
    )
    assert (answer.json()["total_added"], answer.json()["total_removed"]) == (1, 1)
    assert segment.members == {"b@example.com", "c@example.com"}
    found = await mailchimp_fake.client.get(f"/lists/list1/segments/{segment_id}")
    assert found.json()["member_count"] == 2


@pytest.mark.asyncio
async def test_segment_arrays_hold_at_most_500(mailchimp_fake: Fake) -> None:
    segment_id = await create_segment(mailchimp_fake, "Big")
    emails = [f"user{index}@example.com" for index in range(501)]

    answer = await mailchimp_fake.client.post(
        f"/lists/list1/segments/{segment_id}", json={"members_to_remove": emails}
    )

    assert "members_to_remove" in assert_problem(answer, 400)["detail"]


@pytest.mark.asyncio
async def test_rejected_email_fails_in_the_segment_errors(mailchimp_fake: Fake) -> None:
    await subscribe(mailchimp_fake, "ok@example.com", "bad@example.com")
    segment_id = await create_segment(mailchimp_fake, "Rejections")
    mailchimp_fake.state.reject("bad@example.com", message="nope")

    answer = await mailchimp_fake.client.post(
        f"/lists/list1/segments/{segment_id}",
        json={"members_to_add": ["ok@example.com", "bad@example.com"]},
    )

    assert answer.json()["errors"] == [{"email_addresses": ["bad@example.com"], "error": "nope"}]
    assert mailchimp_fake.state.lists["list1"].segments[segment_id].members == {"ok@example.com"}


@pytest.mark.asyncio
async def test_segment_members_page_and_rename(mailchimp_fake: Fake) -> None:
    emails = [f"user{index}@example.com" for index in range(25)]
    await subscribe(mailchimp_fake, *emails)
    segment_id = await create_segment(mailchimp_fake, "Readers")
    await mailchimp_fake.client.post(
        f"/lists/list1/segments/{segment_id}", json={"members_to_add": emails}
    )

    seen: list[str] = []
    for offset in range(0, 25, 10):
        answer = await mailchimp_fake.client.get(
            f"/lists/list1/segments/{segment_id}/members", params={"count": 10, "offset": offset}
        )
        assert answer.json()["total_items"] == 25
        seen += [each["email_address"] for each in answer.json()["members"]]
    assert sorted(seen) == sorted(emails)

    renamed = await mailchimp_fake.client.patch(
        f"/lists/list1/segments/{segment_id}", json={"name": "Loyal readers"}
    )
    assert renamed.json()["name"] == "Loyal readers"
    assert mailchimp_fake.state.lists["list1"].segments[segment_id].members == set(emails)
    deleted = await mailchimp_fake.client.delete(f"/lists/list1/segments/{segment_id}")
    assert deleted.status_code == 204
    assert segment_id not in mailchimp_fake.state.lists["list1"].segments


@pytest.mark.asyncio
async def test_eleventh_concurrent_request_gets_429(mailchimp_fake: Fake) -> None:
    mailchimp_fake.state.delay_next(0.5, count=10, when="before")

    answers = await asyncio.gather(*(mailchimp_fake.client.get("/ping") for _ in range(11)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 10 + [429]
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert assert_problem(refused, 429)["title"] == "Too Many Requests"
    assert "retry-after" not in refused.headers
    assert mailchimp_fake.state.stats.max_concurrency == 11
    assert mailchimp_fake.state.connections == {}  # every slot was given back
    assert (await mailchimp_fake.client.get("/ping")).status_code == 200


@pytest.mark.asyncio
async def test_ten_concurrent_requests_are_fine(mailchimp_fake: Fake) -> None:
    mailchimp_fake.state.delay_next(0.2, count=10, when="before")

    answers = await asyncio.gather(*(mailchimp_fake.client.get("/ping") for _ in range(10)))

    assert [answer.status_code for answer in answers] == [200] * 10
    assert mailchimp_fake.state.stats.max_concurrency == 10


@pytest.mark.asyncio
async def test_control_endpoints_seed_lists_and_members(mailchimp_fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=mailchimp_fake.url) as control:
        created = await control.post("/_fake/lists", json={"id": "list2", "name": "Second"})
        seeded = await control.post(
            "/_fake/lists/list2/members",
            json={"members": [{"email_address": "x@example.com", "status": "cleaned"}]},
        )
        summary = (await control.get("/_fake/state", params={"members": "true"})).json()

    assert (created.status_code, seeded.status_code) == (201, 201)
    assert summary["data"]["lists"]["list2"]["members"] == {"x@example.com": "cleaned"}
    assert mailchimp_fake.state.lists["list2"].member("X@example.com") is not None
