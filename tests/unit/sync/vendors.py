"""Connectors against the vendor fakes in this process: the fake's ASGI app behind the
connector's own `VendorHttp` (credentials, retries, the limiter), no sockets, no database."""

import httpx
from starlette.types import ASGIApp

from segments_shared.destinations import MailchimpConfig, SendgridConfig
from segments_shared.netguard import AllowList
from sync_worker.connectors import mailchimp, sendgrid
from sync_worker.connectors.base import Capabilities, SyncMember
from sync_worker.connectors.http import RetryPolicy, VendorHttp
from tests.fakes import mailchimp as mailchimp_fake
from tests.fakes import sendgrid as sendgrid_fake
from tests.unit.sync.memory_limiter import MemoryLimiter

ACCOUNT = "account-under-test"
# Retries as the worker makes them, only quicker.
POLICY = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.01)


async def vendor_http(
    app: ASGIApp,
    vendor: str,
    capabilities: Capabilities,
    limiter: MemoryLimiter,
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> VendorHttp:
    http = VendorHttp(
        vendor,
        httpx.Timeout(5.0),
        POLICY,
        limiter,
        ACCOUNT,
        capabilities,
        base_url=base_url,
        allow=AllowList(),
        headers=headers,
        auth=auth,
    )
    # The one change from the worker's: requests reach the fake's app in this process.
    await http.client.aclose()
    http.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return http


async def mailchimp_connector(
    state: mailchimp_fake.MailchimpState, limiter: MemoryLimiter, api_key: str | None = None
) -> mailchimp.MailchimpConnector:
    """A connector to the fake's audience `list1` (added by the caller)."""
    config = MailchimpConfig(
        api_key=api_key or state.api_key, list_id="list1", base_url="http://mc.test/3.0"
    )
    http = await vendor_http(
        mailchimp_fake.create_app(state),
        "mailchimp",
        mailchimp.CAPABILITIES,
        limiter,
        base_url=config.resolved_base_url(),
        auth=("segments", config.api_key),
    )
    return mailchimp.MailchimpConnector(config, http)


async def sendgrid_connector(
    state: sendgrid_fake.SendGridState, limiter: MemoryLimiter
) -> sendgrid.SendGridConnector:
    config = SendgridConfig(api_key=state.api_key, base_url="http://sg.test/v3")
    http = await vendor_http(
        sendgrid_fake.create_app(state),
        "sendgrid",
        sendgrid.CAPABILITIES,
        limiter,
        base_url=config.resolved_base_url(),
        headers={"Authorization": f"Bearer {config.api_key}"},
    )
    return sendgrid.SendGridConnector(config, http)


def esp_members(*names: str) -> list[SyncMember]:
    """Members as the worker sends them to an ESP: keyed by their lower-cased email."""
    return [
        SyncMember(
            key=f"{name}@example.com",
            external_id=name,
            email=f"{name}@example.com",
            first_name=name.title(),
            last_name="Tester",
        )
        for name in names
    ]


def store_members(*names: str) -> list[SyncMember]:
    """Members as the worker sends them to a store or a webhook: keyed by external id."""
    return [SyncMember(key=name, external_id=name, email=f"{name}@example.com") for name in names]
