"""Connections to vendors, opened only to addresses a destination may use
(docs/vendors.md#private-addresses).

The check is made where the connection is opened: the host is resolved here, every answer
checked (`segments_shared.netguard`), and the socket connected to a checked address. Checking
a name and letting the client resolve it again would let a DNS answer that changes in between
(DNS rebinding) reach our network. TLS still verifies, and SNI still names, the URL's host,
and the `Host` header is the URL's: only the address comes from here.

Redirects are not followed (`follow_redirects=False` on the client): a vendor's 3xx is an
answer like any other, and fails what asked for it. Were one followed, its connection would
come through here as well. Environment proxies are not used either: behind a proxy the
address connected to would be the proxy's, and the check would be blind.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from segments_shared.netguard import AllowList, IPAddress, check_addresses, resolve

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that resolves and checks before connecting. A refused
    address raises `netguard.BlockedDestination`, which httpx passes through unchanged."""

    def __init__(
        self,
        allow: AllowList,
        resolver: Resolver = resolve,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow = allow
        self.resolver = resolver
        self.backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        check_addresses(host, addresses, self.allow)
        failed: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                return await self.backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("destinations are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a `GuardedBackend`. httpx takes no network backend, so the
    connection pool it builds is replaced by one built the same way with ours (`_pool`, as in
    httpx 0.28; tests/unit/sync/test_transport.py fails if that stops working)."""

    def __init__(self, allow: AllowList, limits: httpx.Limits, resolver: Resolver = resolve):
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow, resolver),
        )
