"""The worker's connections to vendors (sync_worker/connectors/transport.py): the host is
resolved where the connection opens and the socket goes to a checked address, so a name
that resolves into our network is refused however it resolved when the destination was
saved; redirects are answers, never followed, and a followed one would be checked too."""

import ipaddress
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from starlette.types import Receive, Scope, Send

from segments_shared.netguard import AllowList, BlockedDestination, IPAddress
from sync_worker.connectors import webhook
from sync_worker.connectors.base import ConnectorError
from sync_worker.connectors.http import VendorHttp
from sync_worker.connectors.transport import GuardedTransport
from tests.fakes.server import serve
from tests.unit.sync.memory_limiter import MemoryLimiter
from tests.unit.sync.vendors import ACCOUNT, POLICY

LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)
LOOPBACK = AllowList.parse("127.0.0.1")


class Recorder:
    """An HTTP server that answers `status` (with `location`) and keeps each request's
    path and Host header."""

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        self.status = status
        self.location = location
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append((scope["path"], headers.get("host", "")))
        extra = [(b"location", self.location.encode())] if self.location else []
        await send({"type": "http.response.start", "status": self.status, "headers": extra})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest_asyncio.fixture
async def internal() -> AsyncIterator[tuple[Recorder, str]]:
    """A server inside 'our network': 127.0.0.2, which LOOPBACK does not cover."""
    recorder = Recorder()
    async with serve(recorder, host="127.0.0.2") as url:
        yield recorder, url


class FixedDns:
    """A resolver with fixed answers, standing in for DNS (an address stands for itself);
    keeps the names asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        return [ipaddress.ip_address(self.answers.get(host, host))]


@pytest.mark.asyncio
async def test_the_socket_goes_to_the_checked_address_under_the_urls_name() -> None:
    recorder = Recorder()
    resolve = FixedDns({"vendor.test": "127.0.0.1"})
    async with (
        serve(recorder) as url,
        httpx.AsyncClient(transport=GuardedTransport(LOOPBACK, LIMITS, resolve)) as client,
    ):
        port = httpx.URL(url).port
        response = await client.get(f"http://vendor.test:{port}/3.0/lists")
    assert response.status_code == 200
    # Resolved by the guard (no DNS knows vendor.test), connected to its answer, and the
    # request still names the URL's host.
    assert resolve.asked == ["vendor.test"]
    assert recorder.seen == [("/3.0/lists", f"vendor.test:{port}")]


@pytest.mark.asyncio
async def test_a_listed_host_name_is_trusted_whatever_it_resolves_to() -> None:
    recorder = Recorder()
    resolve = FixedDns({"sandbox.internal": "127.0.0.1"})
    allow = AllowList.parse("sandbox.internal")
    async with (
        serve(recorder) as url,
        httpx.AsyncClient(transport=GuardedTransport(allow, LIMITS, resolve)) as client,
    ):
        port = httpx.URL(url).port
        assert (await client.get(f"http://sandbox.internal:{port}/api")).status_code == 200
        with pytest.raises(BlockedDestination):
            await client.get(f"http://127.0.0.1:{port}/api")  # the address alone is not listed
    assert len(recorder.seen) == 1


@pytest.mark.asyncio
async def test_a_name_resolving_into_our_network_is_refused_when_connecting() -> None:
    recorder = Recorder()
    # Saved when it resolved to a public address; now DNS answers with a private one.
    resolve = FixedDns({"rebound.example": "127.0.0.1"})
    async with (
        serve(recorder) as url,
        httpx.AsyncClient(transport=GuardedTransport(AllowList(), LIMITS, resolve)) as client,
    ):
        port = httpx.URL(url).port
        with pytest.raises(
            BlockedDestination, match=re.escape("rebound.example resolves to 127.0.0.1")
        ):
            await client.get(f"http://rebound.example:{port}/hook")
    assert recorder.seen == []


@pytest.mark.asyncio
async def test_vendor_requests_refuse_a_private_address_for_good(
    limiter: MemoryLimiter,
) -> None:
    recorder = Recorder()
    async with serve(recorder) as url:
        http = VendorHttp(
            "webhook",
            httpx.Timeout(5.0),
            POLICY,
            limiter,
            ACCOUNT,
            webhook.CAPABILITIES,
            base_url=url,
            allow=AllowList(),
        )
        try:
            with pytest.raises(ConnectorError) as refused:
                await http.request("POST", f"{url}/hook", content=b"{}", describe="batch 1")
        finally:
            await http.aclose()
    message = str(refused.value)
    assert "127.0.0.1 is not a public address" in message
    assert "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS" in message
    # Not retried: a refused address stays refused.
    assert recorder.seen == []


@pytest.mark.asyncio
async def test_a_redirect_into_our_network_is_not_followed(
    limiter: MemoryLimiter, internal: tuple[Recorder, str]
) -> None:
    inside, inside_url = internal
    vendor = Recorder(302, location=f"{inside_url}/admin")
    async with serve(vendor) as url:
        http = VendorHttp(
            "webhook",
            httpx.Timeout(5.0),
            POLICY,
            limiter,
            ACCOUNT,
            webhook.CAPABILITIES,
            base_url=url,
            allow=LOOPBACK,
        )
        try:
            response = await http.request("POST", f"{url}/hook", content=b"{}", describe="b")
        finally:
            await http.aclose()
    assert response.status_code == 302
    assert len(vendor.seen) == 1
    assert inside.seen == []


@pytest.mark.asyncio
async def test_a_followed_redirect_would_be_checked_at_each_hop(
    internal: tuple[Recorder, str],
) -> None:
    inside, inside_url = internal
    vendor = Recorder(302, location=f"{inside_url}/admin")
    async with (
        serve(vendor) as url,
        httpx.AsyncClient(
            transport=GuardedTransport(LOOPBACK, LIMITS), follow_redirects=True
        ) as client,
    ):
        with pytest.raises(
            BlockedDestination, match=re.escape("127.0.0.2 is not a public address")
        ):
            await client.get(f"{url}/hook")
    assert len(vendor.seen) == 1
    assert inside.seen == []


@pytest.mark.asyncio
async def test_user_information_in_a_url_is_refused(limiter: MemoryLimiter) -> None:
    http = VendorHttp(
        "mailchimp",
        httpx.Timeout(5.0),
        POLICY,
        limiter,
        ACCOUNT,
        webhook.CAPABILITIES,
        base_url="http://user:pass@127.0.0.1:9/3.0",
        allow=LOOPBACK,
    )
    try:
        with pytest.raises(ConnectorError, match=r"user information \(user:pass@\)"):
            await http.request("GET", "/lists", describe="read the lists")
    finally:
        await http.aclose()
