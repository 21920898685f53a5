"""The retry policy's wait (docs/vendors.md#retries-and-backoff): `Retry-After` when the
vendor gives it; SendGrid's `X-RateLimit-Reset` on a 429 only; otherwise full-jitter
backoff."""

import logging
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from segments_shared.netguard import AllowList
from sync_worker.connectors import sendgrid as sendgrid_module
from sync_worker.connectors.http import RetryPolicy, VendorHttp, vendor_wait
from sync_worker.limiter import VendorLimiter
from tests.fakes import sendgrid
from tests.fakes.server import serve
from tests.fixtures.infra import FAKES_ALLOWED
from tests.sync.conftest import Harness, people


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_the_reset_time_is_a_429s_wait_only() -> None:
    reset = str(int(time.time()) + 3600)
    assert 3590 < (vendor_wait(answer(429, **{"X-RateLimit-Reset": reset})) or 0) <= 3600
    for status in (500, 502, 503, 504):
        assert vendor_wait(answer(status, **{"X-RateLimit-Reset": reset})) is None, status


def test_retry_after_wins_for_any_status() -> None:
    reset = str(int(time.time()) + 3600)
    assert vendor_wait(answer(503, **{"Retry-After": "7", "X-RateLimit-Reset": reset})) == 7.0
    assert vendor_wait(answer(429, **{"Retry-After": "2", "X-RateLimit-Reset": reset})) == 2.0
    dated = vendor_wait(answer(500, **{"Retry-After": formatdate(time.time() + 60, usegmt=True)}))
    assert dated is not None
    assert 55 < dated <= 60
    assert vendor_wait(answer(500)) is None


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[sendgrid.SendGridState, str]]:
    state = sendgrid.SendGridState()
    async with serve(sendgrid.create_app(state)) as url:
        yield state, url


@pytest.mark.asyncio
async def test_a_sendgrid_5xx_backs_off_instead_of_waiting_for_the_window(
    harness: Harness, fake: tuple[sendgrid.SendGridState, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Every SendGrid answer carries `X-RateLimit-Reset`, the end of the rate window (up to a
    minute away): a 500 without `Retry-After` is retried after the computed backoff."""
    state, url = fake
    await harness.customers(*people(2))
    segment_id = await harness.segment("Flaky", ["c0", "c1"])
    destination_id = await harness.destination(
        "sendgrid", {"api_key": sendgrid.DEFAULT_API_KEY, "base_url": f"{url}/v3"}
    )
    state.fail_next(500, count=2)
    caplog.set_level(logging.INFO, logger="sync_worker.connectors.http")
    run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "succeeded", run
    retried = [r for r in caplog.records if r.getMessage() == "vendor request retried"]
    assert len(retried) == 2
    assert all("HTTP 500" in getattr(r, "reason", "") for r in retried)
    cap = harness.worker.runs.policy.cap_seconds  # 0.2 s in these tests
    waits = [float(getattr(r, "wait_s", -1)) for r in retried]
    assert all(0 <= wait <= cap for wait in waits), waits


@pytest.mark.asyncio
async def test_credentials_go_only_to_the_vendors_own_origin(clean_db: AsyncEngine) -> None:
    """A vendor's links (SendGrid's export files, its error reports) may point at other
    storage: the API key is sent to the API root's origin only."""
    seen: list[dict[str, str]] = []

    async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limiter = VendorLimiter(clean_db)
    async with serve(recorder) as api, serve(recorder) as storage:
        client = VendorHttp(
            "sendgrid",
            httpx.Timeout(10.0),
            RetryPolicy(attempts=1),
            limiter,
            "sendgrid-origin-test",
            sendgrid_module.CAPABILITIES,
            base_url=f"{api}/v3",
            allow=AllowList.parse(FAKES_ALLOWED),
            headers={"Authorization": "Bearer SG.secret"},
        )
        try:
            await client.request("GET", "/marketing/lists", describe="lists")
            await client.request("GET", f"{api}/v3/exports/1", describe="same origin")
            await client.request("GET", f"{storage}/exports/1.csv", describe="export file")
        finally:
            await client.aclose()
            await limiter.aclose()
    assert [headers.get("authorization") for headers in seen] == [
        "Bearer SG.secret",
        "Bearer SG.secret",
        None,
    ]
