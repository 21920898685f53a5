"""Building the connector of a destination type."""

from typing import Any

import httpx

from segments_shared.destinations import DestinationConfig, WebhookConfig
from sync_worker.connectors.base import Connector, RunContext
from sync_worker.connectors.http import RetryPolicy
from sync_worker.connectors.webhook import WebhookConnector


class UnsupportedDestination(Exception):
    pass


def build_connector(
    destination_type: str,
    config: DestinationConfig,
    secrets: dict[str, Any],
    context: RunContext,
    client: httpx.AsyncClient,
    policy: RetryPolicy,
) -> Connector:
    if destination_type == "webhook" and isinstance(config, WebhookConfig):
        return WebhookConnector(config, secrets["secret"], context, client, policy)
    raise UnsupportedDestination(f"no connector for destination type {destination_type!r}")
