"""Connectors against the vendor fakes in this process: the fake's ASGI app behind the
connector's own `VendorHttp` (credentials, retries, the limiter), no sockets, no database."""

import httpx
from starlette.types import ASGIApp

from sync_worker.connectors.base import Capabilities, SyncMember
from sync_worker.connectors.http import RetryPolicy, VendorHttp
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
        headers=headers,
        auth=auth,
    )
    # The one change from the worker's: requests reach the fake's app in this process.
    await http.client.aclose()
    http.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return http


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
