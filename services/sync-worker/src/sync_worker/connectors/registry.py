"""Building the connector of a destination: its vendor's protocol over a `VendorHttp` that
carries the credentials, the shared limiter and the retry policy."""

import httpx

from segments_shared.destinations import (
    CommerceConfig,
    DestinationConfig,
    KlaviyoConfig,
    MailchimpConfig,
    SendgridConfig,
    WebhookConfig,
)
from segments_shared.netguard import AllowList
from sync_worker.connectors import commerce, klaviyo, mailchimp, sendgrid, webhook
from sync_worker.connectors.base import Capabilities, Connector, RunContext
from sync_worker.connectors.commerce import CommerceConnector
from sync_worker.connectors.http import RetryPolicy, VendorHttp
from sync_worker.connectors.klaviyo import KlaviyoConnector
from sync_worker.connectors.mailchimp import MailchimpConnector
from sync_worker.connectors.sendgrid import SendGridConnector
from sync_worker.connectors.webhook import WebhookConnector
from sync_worker.limiter import VendorLimiter


class UnsupportedDestination(Exception):
    pass


def build_connector(
    config: DestinationConfig,
    context: RunContext,
    *,
    account: str,
    timeout: httpx.Timeout,
    policy: RetryPolicy,
    limiter: VendorLimiter,
    allow: AllowList,
) -> Connector:
    """`allow`: the private hosts and ranges the connector may reach (netguard)."""

    def http(
        vendor: str,
        capabilities: Capabilities,
        *,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> VendorHttp:
        return VendorHttp(
            vendor,
            timeout,
            policy,
            limiter,
            account,
            capabilities,
            base_url=config.resolved_base_url(),
            allow=allow,
            headers=headers,
            auth=auth,
        )

    if isinstance(config, MailchimpConfig):
        auth = ("segments", config.api_key)
        return MailchimpConnector(config, http("mailchimp", mailchimp.CAPABILITIES, auth=auth))
    if isinstance(config, SendgridConfig):
        headers = {"Authorization": f"Bearer {config.api_key}"}
        return SendGridConnector(config, http("sendgrid", sendgrid.CAPABILITIES, headers=headers))
    if isinstance(config, KlaviyoConfig):
        headers = {
            "Authorization": f"Klaviyo-API-Key {config.api_key}",
            "revision": config.revision,
            "Accept": klaviyo.JSON_API,
            "Content-Type": klaviyo.JSON_API,
        }
        return KlaviyoConnector(config, http("klaviyo", klaviyo.CAPABILITIES, headers=headers))
    if isinstance(config, CommerceConfig):
        headers = {"Authorization": f"Bearer {config.token}", "Accept": "application/json"}
        return CommerceConnector(config, http("commerce", commerce.CAPABILITIES, headers=headers))
    if isinstance(config, WebhookConfig):
        return WebhookConnector(
            config, config.secret, context, http("webhook", webhook.CAPABILITIES)
        )
    raise UnsupportedDestination(f"no connector for {type(config).__name__}")
