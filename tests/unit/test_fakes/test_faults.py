"""Fault injection and the `/_fake/*` control endpoints, over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.fakes import commerce, klaviyo, mailchimp, sendgrid, webhook
from tests.fakes.state import FakeState
from tests.unit.test_fakes.running import KLAVIYO_REVISION, Running, basic, running

CommerceFake = Running[commerce.CommerceState]
MailchimpFake = Running[mailchimp.MailchimpState]


@dataclass(frozen=True)
class Vendor:
    state: Callable[[], FakeState]
    app: Callable[[Any], Starlette]
    root: str
    headers: Callable[[FakeState], dict[str, str]]
    method: str
    path: str
    shape: Callable[[dict[str, Any]], bool]


VENDORS = {
    "mailchimp": Vendor(
        mailchimp.MailchimpState,
        mailchimp.create_app,
        "/3.0",
        lambda state: {"Authorization": basic(state.api_key)},
        "GET",
        "/ping",
        lambda body: {"type", "title", "status", "detail", "instance"} <= set(body),
    ),
    "sendgrid": Vendor(
        sendgrid.SendGridState,
        sendgrid.create_app,
        "",
        lambda state: {"Authorization": f"Bearer {state.api_key}"},
        "GET",
        "/v3/marketing/lists",
        lambda body: {"message", "field"} <= set(body["errors"][0]),
    ),
    "klaviyo": Vendor(
        klaviyo.KlaviyoState,
        klaviyo.create_app,
        "",
        lambda state: {
            "Authorization": f"Klaviyo-API-Key {state.api_key}",
            "revision": KLAVIYO_REVISION,
        },
        "GET",
        "/api/lists",
        lambda body: {"id", "code", "title", "detail", "source"} <= set(body["errors"][0]),
    ),
    "commerce": Vendor(
        commerce.CommerceState,
        commerce.create_app,
        "/rest/admin/v2",
        lambda state: {"Authorization": f"Bearer {state.api_key}"},
        "GET",
        "/member-groups",
        lambda body: {"errorKey", "errorCode", "errorMessage"} == set(body["errors"][0]),
    ),
    "webhook": Vendor(
        webhook.WebhookState,
        webhook.create_app,
        "",
        lambda state: {},
        "POST",
        "/hook",
        lambda body: "error" in body,
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(VENDORS))
async def test_status_faults_answer_in_the_vendor_shape(name: str) -> None:
    vendor = VENDORS[name]
    state = vendor.state()
    async with running(vendor.app(state), state, vendor.root, vendor.headers(state)) as fake:
        before = await fake.client.request(vendor.method, vendor.path)
        state.fail_next(503)
        state.fail_next(429, retry_after=7)
        state.fail_next(429)
        state.fail_next(500, count=2)
        state.fail_next(401)
        answers = [await fake.client.request(vendor.method, vendor.path) for _ in range(7)]

    statuses = [answer.status_code for answer in answers]
    assert statuses[:6] == [503, 429, 429, 500, 500, 401]
    assert statuses[6] == before.status_code  # faults used up: the real answer again
    assert all(vendor.shape(answer.json()) for answer in answers[:6])
    assert answers[1].headers["Retry-After"] == "7"
    assert "retry-after" not in answers[2].headers
    assert state.faults.pending == []


@pytest.mark.asyncio
async def test_retry_after_can_be_an_http_date(mailchimp_fake: MailchimpFake) -> None:
    mailchimp_fake.state.fail_next(429, retry_after_date=30)
    mailchimp_fake.state.fail_next(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")

    dated = await mailchimp_fake.client.get("/ping")
    verbatim = await mailchimp_fake.client.get("/ping")

    moment = parsedate_to_datetime(dated.headers["Retry-After"]).timestamp()
    assert time.time() + 25 <= moment <= time.time() + 35
    assert verbatim.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.asyncio
async def test_faults_match_method_and_path(mailchimp_fake: MailchimpFake) -> None:
    mailchimp_fake.state.fail_next(500, count=2, method="post", path="/3.0/lists/*/segments")
    segment = {"name": "S", "static_segment": []}

    read = await mailchimp_fake.client.get("/lists/list1/segments")
    other_post = await mailchimp_fake.client.post("/lists/list1", json={"members": []})
    failed = [
        await mailchimp_fake.client.post("/lists/list1/segments", json=segment) for _ in range(2)
    ]
    created = await mailchimp_fake.client.post("/lists/list1/segments", json=segment)

    assert (read.status_code, other_post.status_code) == (200, 200)
    assert [each.status_code for each in failed] == [500, 500]
    assert created.status_code == 200
    assert len(mailchimp_fake.state.lists["list1"].segments) == 1


@pytest.mark.asyncio
async def test_a_slow_answer_times_the_client_out_after_the_change(
    commerce_fake: CommerceFake,
) -> None:
    state = commerce_fake.state
    state.delay_next(0.6, method="POST", path="/rest/admin/v2/member-groups")

    with pytest.raises(httpx.ReadTimeout):
        await commerce_fake.client.post(
            "/member-groups",
            params={"storeId": "1"},
            json={"name": "Slow", "usage": ["CustomerSegment"]},
            timeout=0.2,
        )

    assert state.group_named("Slow") is not None  # processed, only the answer was late


@pytest.mark.asyncio
async def test_a_delay_before_processing_holds_the_change_back(
    commerce_fake: CommerceFake,
) -> None:
    state = commerce_fake.state
    state.delay_next(0.4, when="before")

    with pytest.raises(httpx.ReadTimeout):
        await commerce_fake.client.post(
            "/member-groups",
            params={"storeId": "1"},
            json={"name": "Later", "usage": ["CustomerSegment"]},
            timeout=0.1,
        )

    assert state.group_named("Later") is None
    await asyncio.sleep(0.5)
    assert state.group_named("Later") is not None


@pytest.mark.asyncio
async def test_faults_and_state_over_http(commerce_fake: CommerceFake) -> None:
    async with httpx.AsyncClient(base_url=commerce_fake.url) as control:
        added = await control.post(
            "/_fake/faults",
            json=[
                {"status": 503, "count": 2, "path": "/rest/admin/v2/member-groups*"},
                {"reject": ["m1"], "message": "locked"},
            ],
        )
        pending = (await control.get("/_fake/state")).json()
        first = await commerce_fake.client.get("/member-groups")
        cleared = await control.delete("/_fake/faults")
        second = await commerce_fake.client.get("/member-groups")
        invalid = await control.post("/_fake/faults", json={"status": 200})
        unknown = await control.post("/_fake/faults", json={"status": 500, "colour": "red"})
        summary = (await control.get("/_fake/state")).json()

    assert added.status_code == 201
    assert pending["faults"]["pending"][0]["count"] == 2
    assert pending["faults"]["rejected"] == ["m1"]
    assert first.status_code == 503
    assert cleared.status_code == 204
    assert second.status_code == 200
    assert (invalid.status_code, unknown.status_code) == (400, 400)
    assert summary["faults"] == {"pending": [], "rejected": []}
    assert summary["stats"]["requests"] == {"GET /rest/admin/v2/member-groups": 2}
    assert summary["stats"]["statuses"] == {"503": 1, "200": 1}
    assert summary["vendor"] == "commerce"


@pytest.mark.asyncio
async def test_slow_and_rejecting_faults_over_http(mailchimp_fake: MailchimpFake) -> None:
    async with httpx.AsyncClient(base_url=mailchimp_fake.url) as control:
        await control.post("/_fake/faults", json={"delay": 0.3, "delay_when": "before"})
        await control.post("/_fake/faults", json={"reject": ["No@Example.com"]})
        started = time.monotonic()
        answer = await mailchimp_fake.client.post(
            "/lists/list1",
            json={"members": [{"email_address": "no@example.com", "status_if_new": "subscribed"}]},
        )

    assert time.monotonic() - started >= 0.3
    assert answer.json()["errors"][0]["email_address"] == "no@example.com"


@pytest.mark.asyncio
async def test_config_and_stats_over_http(mailchimp_fake: MailchimpFake) -> None:
    await mailchimp_fake.client.get("/ping")
    async with httpx.AsyncClient(base_url=mailchimp_fake.url) as control:
        tuned = await control.patch("/_fake/config", json={"max_concurrent": 3})
        wrong = await control.patch("/_fake/config", json={"api_key": "x"})
        reset = await control.delete("/_fake/stats")

    assert tuned.json() == {"max_concurrent": 3}
    assert mailchimp_fake.state.max_concurrent == 3
    assert wrong.status_code == 400
    assert reset.status_code == 204
    assert mailchimp_fake.state.stats.total == 0


@pytest.mark.asyncio
async def test_requests_are_counted_per_endpoint(mailchimp_fake: MailchimpFake) -> None:
    await mailchimp_fake.client.get("/lists/list1/segments")
    await mailchimp_fake.client.get("/lists/list1/segments")
    await mailchimp_fake.client.get("/no/such/path")

    requests = mailchimp_fake.state.stats.requests
    assert requests["GET /3.0/lists/{list_id}/segments"] == 2
    assert requests["UNMATCHED"] == 1
    assert mailchimp_fake.state.stats.statuses[404] == 1
