"""Each fake served over real HTTP on a free port, with a client that speaks its auth scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakes import commerce, klaviyo, mailchimp, sendgrid, webhook
from tests.unit.test_fakes.running import KLAVIYO_REVISION, Running, basic, running


@pytest_asyncio.fixture
async def mailchimp_fake() -> AsyncIterator[Running[mailchimp.MailchimpState]]:
    state = mailchimp.MailchimpState()
    state.add_list("list1", "Shop")
    headers = {"Authorization": basic(state.api_key)}
    async with running(mailchimp.create_app(state), state, "/3.0", headers) as fake:
        yield fake


@pytest_asyncio.fixture
async def sendgrid_fake() -> AsyncIterator[Running[sendgrid.SendGridState]]:
    state = sendgrid.SendGridState()
    headers = {"Authorization": f"Bearer {state.api_key}"}
    async with running(sendgrid.create_app(state), state, "", headers) as fake:
        yield fake


@pytest_asyncio.fixture
async def klaviyo_fake() -> AsyncIterator[Running[klaviyo.KlaviyoState]]:
    # Limits raised so that only the rate-limit tests meet them.
    state = klaviyo.KlaviyoState(burst_limit=1000, steady_limit=10_000)
    headers = {
        "Authorization": f"Klaviyo-API-Key {state.api_key}",
        "revision": KLAVIYO_REVISION,
        "Content-Type": klaviyo.JSON_API,
        "Accept": klaviyo.JSON_API,
    }
    async with running(klaviyo.create_app(state), state, "", headers) as fake:
        yield fake


@pytest_asyncio.fixture
async def commerce_fake() -> AsyncIterator[Running[commerce.CommerceState]]:
    state = commerce.CommerceState()
    headers = {"Authorization": f"Bearer {state.api_key}"}
    async with running(commerce.create_app(state), state, "/rest/admin/v2", headers) as fake:
        yield fake


@pytest_asyncio.fixture
async def webhook_fake() -> AsyncIterator[Running[webhook.WebhookState]]:
    state = webhook.WebhookState(secret="whsec-test")
    async with running(webhook.create_app(state), state, "", {}) as fake:
        yield fake
