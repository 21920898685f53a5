"""Each connector against its vendor's fake, in process: the remote segment is found or
created, members are added, read back and removed, and the vendor's state says so."""

from collections.abc import AsyncIterator

import pytest

from segments_shared.destinations import (
    CommerceConfig,
    KlaviyoConfig,
    WebhookConfig,
)
from sync_worker.connectors import commerce, klaviyo, webhook
from sync_worker.connectors.base import Connector, RemoteSegment, RunContext
from tests.fakes import commerce as commerce_fake
from tests.fakes import klaviyo as klaviyo_fake
from tests.fakes import mailchimp as mailchimp_fake
from tests.fakes import sendgrid as sendgrid_fake
from tests.fakes import webhook as webhook_fake
from tests.unit.sync.memory_limiter import MemoryLimiter
from tests.unit.sync.vendors import (
    esp_members,
    mailchimp_connector,
    sendgrid_connector,
    store_members,
    vendor_http,
)

SEGMENT_ID = "0190a0a0-0000-7000-8000-000000000001"
WEBHOOK_SECRET = "unit-webhook-secret-0123"


async def read_all(connector: Connector, remote: RemoteSegment) -> set[str]:
    found: set[str] = set()
    pages: AsyncIterator[list[str]] = connector.read_members(remote)
    async for page in pages:
        found |= set(page)
    return found


@pytest.mark.asyncio
async def test_mailchimp_static_segment_by_remembered_id_name_or_creation(
    limiter: MemoryLimiter,
) -> None:
    state = mailchimp_fake.MailchimpState()
    audience = state.add_list("list1")
    connector = await mailchimp_connector(state, limiter)
    try:
        created = await connector.find_or_create_segment("VIP", None)
        assert created.found_by == "created"
        assert await connector.find_or_create_segment("VIP", None) == RemoteSegment(
            created.id, "VIP", "name"
        )
        renamed = await connector.find_or_create_segment("VIP buyers", created.id)
        assert (renamed.id, renamed.found_by) == (created.id, "remembered")
        assert audience.segment_named("VIP") is None
        assert audience.segment_named("VIP buyers") is not None
    finally:
        await connector.aclose()


@pytest.mark.asyncio
async def test_mailchimp_members_join_the_audience_then_the_segment(
    limiter: MemoryLimiter,
) -> None:
    state = mailchimp_fake.MailchimpState()
    audience = state.add_list("list1")
    audience.add_member("kept@example.com", status="unsubscribed")
    state.reject("refused@example.com")
    connector = await mailchimp_connector(state, limiter)
    try:
        remote = await connector.find_or_create_segment("VIP", None)
        result = await connector.add_members(remote, esp_members("ada", "kept", "refused"))
        assert set(result.failed) == {"refused@example.com"}
        assert await read_all(connector, remote) == {"ada@example.com", "kept@example.com"}
        # A contact's subscription stays as Mailchimp has it.
        kept = audience.member("kept@example.com")
        assert kept is not None
        assert kept.status == "unsubscribed"
        assert state.status_changes == 0

        result = await connector.remove_members(remote, esp_members("ada"))
        assert result.failed == {}
        assert await read_all(connector, remote) == {"kept@example.com"}
    finally:
        await connector.aclose()


@pytest.mark.asyncio
async def test_sendgrid_list_through_import_and_removal(limiter: MemoryLimiter) -> None:
    state = sendgrid_fake.SendGridState()
    connector = await sendgrid_connector(state, limiter)
    try:
        remote = await connector.find_or_create_segment("Newsletter", None)
        assert remote.found_by == "created"
        result = await connector.add_members(remote, esp_members("ada", "bob", "cy"))
        assert result.failed == {}
        contact_list = state.list_named("Newsletter")
        assert contact_list is not None
        assert contact_list.members == {"ada@example.com", "bob@example.com", "cy@example.com"}

        result = await connector.remove_members(remote, esp_members("bob"))
        assert result.failed == {}
        assert contact_list.members == {"ada@example.com", "cy@example.com"}
        assert await read_all(connector, remote) == {"ada@example.com", "cy@example.com"}
    finally:
        await connector.aclose()


@pytest.mark.asyncio
async def test_klaviyo_list_through_bulk_import_and_relationships(limiter: MemoryLimiter) -> None:
    # Limits raised so that this test meets none of them.
    state = klaviyo_fake.KlaviyoState(burst_limit=1000, steady_limit=10_000)
    config = KlaviyoConfig(api_key=state.api_key, base_url="http://klaviyo.test/api")
    http = await vendor_http(
        klaviyo_fake.create_app(state),
        "klaviyo",
        klaviyo.CAPABILITIES,
        limiter,
        base_url=config.resolved_base_url(),
        headers={
            "Authorization": f"Klaviyo-API-Key {config.api_key}",
            "revision": config.revision,
            "Accept": klaviyo.JSON_API,
            "Content-Type": klaviyo.JSON_API,
        },
    )
    connector = klaviyo.KlaviyoConnector(config, http)
    try:
        remote = await connector.find_or_create_segment("Loyal", None)
        result = await connector.add_members(remote, esp_members("ada", "bob"))
        assert result.failed == {}
        (found,) = state.lists_named("Loyal")
        assert found.members == {"ada@example.com", "bob@example.com"}

        result = await connector.remove_members(remote, esp_members("ada"))
        assert result.failed == {}
        assert found.members == {"bob@example.com"}
    finally:
        await connector.aclose()


@pytest.mark.asyncio
async def test_commerce_member_group_includes_and_drops_members(limiter: MemoryLimiter) -> None:
    state = commerce_fake.CommerceState()
    config = CommerceConfig(
        base_url="http://store.test/rest/admin/v2",
        environment="production",
        store_id="10151",
        token=state.api_key,
    )
    http = await vendor_http(
        commerce_fake.create_app(state),
        "commerce",
        commerce.CAPABILITIES,
        limiter,
        base_url=config.resolved_base_url(),
        headers={"Authorization": f"Bearer {config.token}", "Accept": "application/json"},
    )
    connector = commerce.CommerceConnector(config, http)
    try:
        remote = await connector.find_or_create_segment("Gold", None)
        result = await connector.add_members(remote, store_members("c1", "c2", "c3"))
        assert result.failed == {}
        group = state.group_named("Gold")
        assert group is not None
        assert group.included() == {"c1", "c2", "c3"}

        result = await connector.remove_members(remote, store_members("c2"))
        assert result.failed == {}
        assert group.included() == {"c1", "c3"}
        assert await read_all(connector, remote) == {"c1", "c3"}
    finally:
        await connector.aclose()


@pytest.mark.asyncio
async def test_webhook_batches_are_signed_and_name_the_segment(limiter: MemoryLimiter) -> None:
    state = webhook_fake.WebhookState(secret=WEBHOOK_SECRET)
    config = WebhookConfig(url="http://hooks.test/segments", secret=WEBHOOK_SECRET)
    http = await vendor_http(
        webhook_fake.create_app(state),
        "webhook",
        webhook.CAPABILITIES,
        limiter,
        base_url=config.resolved_base_url(),
    )
    context = RunContext(sync_id="sync-1", segment_id=SEGMENT_ID, segment_name="Hooked")
    connector = webhook.WebhookConnector(config, config.secret, context, http)
    try:
        remote = await connector.find_or_create_segment("Hooked", None)
        assert remote.id == SEGMENT_ID
        assert (await connector.add_members(remote, store_members("c1", "c2"))).failed == {}
        assert (await connector.remove_members(remote, store_members("c1"))).failed == {}
        assert (state.bad_signatures, state.stale_signatures) == (0, 0)
        assert state.external_ids(SEGMENT_ID) == {"c2"}
        assert [len(batch["added"]) for batch in state.batches] == [2, 0]
        assert [batch["removed"][0]["external_id"] for batch in state.batches[1:]] == ["c1"]
        assert {batch["segment_name"] for batch in state.batches} == {"Hooked"}
        assert len({batch["batch"] for batch in state.batches}) == 2
    finally:
        await connector.aclose()
