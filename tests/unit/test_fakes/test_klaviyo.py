"""The fake Klaviyo over HTTP: lists, bulk import jobs, list membership, rate limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.fakes.klaviyo import JSON_API, KlaviyoState, parse_filter
from tests.unit.test_fakes.running import KLAVIYO_REVISION, Running, requires_specs

Fake = Running[KlaviyoState]


async def create_list(fake: Fake, name: str) -> str:
    answer = await fake.client.post(
        "/api/lists", json={"data": {"type": "list", "attributes": {"name": name}}}
    )
    assert answer.status_code == 201, answer.text
    list_id: str = answer.json()["data"]["id"]
    return list_id


def import_body(list_id: str, emails: list[str]) -> dict[str, Any]:
    return {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {
                "profiles": {
                    "data": [
                        {"type": "profile", "attributes": {"email": email, "first_name": "Ann"}}
                        for email in emails
                    ]
                }
            },
            "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
        }
    }


async def bulk_import(fake: Fake, list_id: str, *emails: str) -> dict[str, Any]:
    answer = await fake.client.post(
        "/api/profile-bulk-import-jobs", json=import_body(list_id, list(emails))
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["data"]["id"]
    for _ in range(200):
        job: dict[str, Any] = (
            await fake.client.get(f"/api/profile-bulk-import-jobs/{job_id}")
        ).json()
        if job["data"]["attributes"]["status"] == "complete":
            return job
        await asyncio.sleep(0.01)
    raise AssertionError("the import job never completed")


def assert_errors(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(JSON_API)
    error: dict[str, Any] = answer.json()["errors"][0]
    assert set(error) >= {"id", "code", "title", "detail", "source"}
    assert "pointer" in error["source"]
    return error


@pytest.mark.asyncio
async def test_key_and_revision_are_required(klaviyo_fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=klaviyo_fake.url) as bare:
        no_key = await bare.get("/api/lists", headers={"revision": KLAVIYO_REVISION})
        wrong_key = await bare.get(
            "/api/lists",
            headers={"revision": KLAVIYO_REVISION, "Authorization": "Klaviyo-API-Key pk_nope"},
        )
        no_revision = await bare.get(
            "/api/lists", headers={"Authorization": f"Klaviyo-API-Key {klaviyo_fake.state.api_key}"}
        )
    assert assert_errors(no_key, 401)["code"] == "not_authenticated"
    assert_errors(wrong_key, 401)
    assert assert_errors(no_revision, 400)["source"]["parameter"] == "revision"


@pytest.mark.asyncio
async def test_burst_window_answers_429_with_retry_after(klaviyo_fake: Fake) -> None:
    await klaviyo_fake.client.get("/api/lists")  # loads the OpenAPI documents, which is slow
    klaviyo_fake.state.burst_windows.clear()
    klaviyo_fake.state.burst_limit = 10
    klaviyo_fake.state.steady_limit = 150

    answers = [await klaviyo_fake.client.get("/api/lists") for _ in range(11)]

    assert [answer.status_code for answer in answers] == [200] * 10 + [429]
    assert answers[0].headers["RateLimit-Limit"] == "10"
    assert answers[0].headers["RateLimit-Remaining"] == "9"
    assert int(answers[0].headers["RateLimit-Reset"]) in (0, 1)
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1"
    assert "RateLimit-Remaining" not in refused.headers
    assert assert_errors(refused, 429)["code"] == "throttled"


@pytest.mark.asyncio
async def test_steady_window_asks_for_a_longer_wait(klaviyo_fake: Fake) -> None:
    klaviyo_fake.state.steady_limit = 3

    answers = [await klaviyo_fake.client.get("/api/lists") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[2].headers["RateLimit-Limit"] == "3"
    assert answers[2].headers["RateLimit-Remaining"] == "0"
    assert 55 <= int(answers[-1].headers["Retry-After"]) <= 60


@pytest.mark.asyncio
async def test_lists_are_found_by_name(klaviyo_fake: Fake) -> None:
    wanted = await create_list(klaviyo_fake, 'Say "hi"')
    await create_list(klaviyo_fake, "Other")

    answer = await klaviyo_fake.client.get(
        "/api/lists", params={"filter": 'equals(name,"Say \\"hi\\"")'}
    )

    assert [each["id"] for each in answer.json()["data"]] == [wanted]
    everything = await klaviyo_fake.client.get("/api/lists")
    assert len(everything.json()["data"]) == 2
    bad = await klaviyo_fake.client.get("/api/lists", params={"filter": "contains(name,'x')"})
    assert assert_errors(bad, 400)["source"]["parameter"] == "filter"


def test_filters_parse_as_klaviyo_writes_them() -> None:
    assert parse_filter('equals(name,"VIP")') == ("name", ["VIP"])
    assert parse_filter("equals(email,['a@x.io'])") == ("email", ["a@x.io"])
    assert parse_filter('any(email,["a@x.io", "b@x.io"])') == ("email", ["a@x.io", "b@x.io"])
    assert parse_filter("equals(name,'It\\'s')") == ("name", ["It's"])
    assert parse_filter('equals(name,"a","b")') is None
    assert parse_filter("greater-than(updated,2024-01-01)") is None


@pytest.mark.asyncio
async def test_bulk_import_adds_profiles_to_the_list(klaviyo_fake: Fake) -> None:
    list_id = await create_list(klaviyo_fake, "Imported")

    job = await bulk_import(klaviyo_fake, list_id, "Ann@Example.com", "bob@example.com")

    attributes = job["data"]["attributes"]
    assert (
        attributes["total_count"],
        attributes["completed_count"],
        attributes["failed_count"],
    ) == (2, 2, 0)
    assert klaviyo_fake.state.lists[list_id].members == {"ann@example.com", "bob@example.com"}
    members = await klaviyo_fake.client.get(f"/api/lists/{list_id}/profiles")
    assert {each["attributes"]["email"] for each in members.json()["data"]} == {
        "ann@example.com",
        "bob@example.com",
    }


@pytest.mark.asyncio
async def test_import_errors_name_rejected_profiles(klaviyo_fake: Fake) -> None:
    list_id = await create_list(klaviyo_fake, "Partial")
    klaviyo_fake.state.reject("bad@example.com", message="suppressed")

    job = await bulk_import(klaviyo_fake, list_id, "good@example.com", "bad@example.com")

    assert job["data"]["attributes"]["failed_count"] == 1
    listed = await klaviyo_fake.client.get(
        f"/api/profile-bulk-import-jobs/{job['data']['id']}/import-errors"
    )
    error = listed.json()["data"][0]
    assert error["type"] == "import-error"
    assert error["attributes"]["detail"] == "suppressed"
    assert error["attributes"]["source"]["pointer"] == "/data/attributes/profiles/data/1"
    assert klaviyo_fake.state.lists[list_id].members == {"good@example.com"}


@pytest.mark.asyncio
async def test_profiles_leave_a_list_by_profile_id(klaviyo_fake: Fake) -> None:
    list_id = await create_list(klaviyo_fake, "Leavers")
    await bulk_import(klaviyo_fake, list_id, "a@example.com", "b@example.com", "c@example.com")

    found = await klaviyo_fake.client.get(
        "/api/profiles", params={"filter": 'any(email,["a@example.com","B@example.com"])'}
    )
    ids = [each["id"] for each in found.json()["data"]]
    assert len(ids) == 2
    answer = await klaviyo_fake.client.request(
        "DELETE",
        f"/api/lists/{list_id}/relationships/profiles",
        content=json.dumps({"data": [{"type": "profile", "id": each} for each in ids]}),
    )

    assert answer.status_code == 204
    assert klaviyo_fake.state.lists[list_id].members == {"c@example.com"}


@pytest.mark.asyncio
async def test_limits_per_request(klaviyo_fake: Fake) -> None:
    list_id = await create_list(klaviyo_fake, "Limits")
    too_many_ids = {"data": [{"type": "profile", "id": f"P{index}"} for index in range(1001)]}
    too_many_profiles = import_body(list_id, [f"u{index}@example.com" for index in range(10_001)])
    padding = "x" * 500
    too_big = import_body(list_id, [f"u{index}@example.com" for index in range(9_000)])
    for profile in too_big["data"]["attributes"]["profiles"]["data"]:
        profile["attributes"]["properties"] = {"note": padding}

    removal = await klaviyo_fake.client.request(
        "DELETE", f"/api/lists/{list_id}/relationships/profiles", content=json.dumps(too_many_ids)
    )
    counted = await klaviyo_fake.client.post(
        "/api/profile-bulk-import-jobs", json=too_many_profiles
    )
    sized = await klaviyo_fake.client.post("/api/profile-bulk-import-jobs", json=too_big)

    assert_errors(removal, 400)
    assert_errors(counted, 400)
    assert_errors(sized, 413)
    assert klaviyo_fake.state.jobs == {}


@requires_specs
@pytest.mark.asyncio
async def test_requests_are_checked_against_the_openapi_document(klaviyo_fake: Fake) -> None:
    wrong_type = await klaviyo_fake.client.post(
        "/api/lists", json={"data": {"type": "segment", "attributes": {"name": "x"}}}
    )
    no_name = await klaviyo_fake.client.post(
        "/api/lists", json={"data": {"type": "list", "attributes": {}}}
    )
    plain_json = await klaviyo_fake.client.post(
        "/api/lists",
        json={"data": {"type": "list", "attributes": {"name": "x"}}},
        headers={"Content-Type": "application/json"},
    )
    big_page = await klaviyo_fake.client.get("/api/lists", params={"page[size]": 11})

    assert assert_errors(wrong_type, 400)["source"]["pointer"] == "/data/type"
    assert assert_errors(no_name, 400)["source"]["pointer"] == "/data/attributes"
    assert "application/vnd.api+json" in assert_errors(plain_json, 400)["detail"]
    assert assert_errors(big_page, 400)["source"]["parameter"] == "page[size]"
    assert klaviyo_fake.state.lists == {}
    await create_list(klaviyo_fake, "Well formed")
