"""Vendor requests through `VendorHttp` against a fake that fails on purpose: transient
answers are retried, a vendor's wait is shared through the limiter, refused credentials end
at once, and no more requests are out than the vendor allows."""

import asyncio

import pytest

from sync_worker.connectors import mailchimp
from sync_worker.connectors.base import AuthenticationFailed, ConnectorError
from tests.fakes import mailchimp as mailchimp_fake
from tests.fakes import sendgrid as sendgrid_fake
from tests.unit.sync.memory_limiter import MemoryLimiter
from tests.unit.sync.vendors import (
    ACCOUNT,
    POLICY,
    esp_members,
    mailchimp_connector,
    sendgrid_connector,
)

SEGMENTS = "GET /3.0/lists/{list_id}/segments"


@pytest.mark.asyncio
async def test_transient_answers_are_retried(limiter: MemoryLimiter) -> None:
    state = mailchimp_fake.MailchimpState()
    state.add_list("list1")
    connector = await mailchimp_connector(state, limiter)
    state.fail_next(503, method="GET", path="/3.0/lists/list1/segments")
    state.fail_next(500, method="GET", path="/3.0/lists/list1/segments")
    try:
        remote = await connector.find_or_create_segment("VIP", None)
    finally:
        await connector.aclose()
    assert remote.found_by == "created"
    assert state.stats.requests[SEGMENTS] == 3
    assert limiter.pauses == []  # only a 429 holds the account back


@pytest.mark.asyncio
async def test_a_vendor_that_keeps_failing_ends_the_run_after_the_attempts(
    limiter: MemoryLimiter,
) -> None:
    state = mailchimp_fake.MailchimpState()
    state.add_list("list1")
    connector = await mailchimp_connector(state, limiter)
    state.fail_next(500, count=POLICY.attempts, method="GET")
    try:
        with pytest.raises(ConnectorError, match=f"after {POLICY.attempts} attempts.*HTTP 500"):
            await connector.find_or_create_segment("VIP", None)
    finally:
        await connector.aclose()
    assert state.stats.requests[SEGMENTS] == POLICY.attempts


@pytest.mark.asyncio
async def test_refused_credentials_end_the_run_at_once(limiter: MemoryLimiter) -> None:
    state = mailchimp_fake.MailchimpState()
    state.add_list("list1")
    connector = await mailchimp_connector(state, limiter, api_key="wrong-key-us1")
    try:
        with pytest.raises(AuthenticationFailed, match="401"):
            await connector.find_or_create_segment("VIP", None)
    finally:
        await connector.aclose()
    assert state.stats.total == 1


@pytest.mark.asyncio
async def test_a_429s_wait_holds_the_account_back_through_the_limiter(
    limiter: MemoryLimiter,
) -> None:
    state = sendgrid_fake.SendGridState()
    connector = await sendgrid_connector(state, limiter)
    # Vendors send whole seconds; a fraction (read the same way) keeps the test quick.
    state.fail_next(429, retry_after="0.2", method="GET")
    try:
        started = asyncio.get_running_loop().time()
        remote = await connector.find_or_create_segment("Newsletter", None)
        waited = asyncio.get_running_loop().time() - started
    finally:
        await connector.aclose()
    assert remote.found_by == "created"
    assert limiter.pauses == [(ACCOUNT, 0.2)]
    assert waited >= 0.2


@pytest.mark.asyncio
async def test_no_more_requests_are_out_than_the_vendor_allows(limiter: MemoryLimiter) -> None:
    state = mailchimp_fake.MailchimpState()
    state.add_list("list1")
    connector = await mailchimp_connector(state, limiter)
    try:
        remote = await connector.find_or_create_segment("VIP", None)
        # Every answer held back a moment, so that requests pile up behind the limiter.
        state.delay_next(0.02, count=1000)
        batches = [esp_members(*(f"p{batch}x{i}" for i in range(3))) for batch in range(30)]
        results = await asyncio.gather(*(connector.add_members(remote, b) for b in batches))
    finally:
        await connector.aclose()
    assert all(result.failed == {} for result in results)
    assert limiter.most_in_flight[ACCOUNT] == mailchimp.CAPABILITIES.concurrency
    assert state.stats.max_concurrency <= mailchimp.CAPABILITIES.concurrency
    assert 429 not in state.stats.statuses
