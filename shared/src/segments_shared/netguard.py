"""Where a destination may point (docs/vendors.md#private-addresses).

A destination's URL is chosen by whoever configures it, and the sync-worker sends credentials
and customer data there. Pointed at an address inside our network (a cloud metadata service,
a database, an admin port), it would make the worker a way in. So every address that is not
publicly routable is refused, unless SEGMENTS_ALLOW_PRIVATE_DESTINATIONS lists the URL's host
or a range that holds the address (sandboxes and tests, whose fakes listen on loopback).

segment-api checks a URL when a destination is saved (`check_host`); sync-worker checks the
address it actually connects to, every time (`check_addresses`), since a DNS answer can
change between the two.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"
# Saving a destination waits at most this long for DNS.
RESOLVE_SECONDS = 3.0
# IPv6 prefixes whose last 32 bits are an IPv4 address: NAT64's well-known prefix (RFC 6052,
# reached through a gateway), the local-use NAT64 block (RFC 8215: an operator's own
# prefixes, whose DNS64 answers a vendor's IPv4 address inside it) and the deprecated
# IPv4-compatible addresses (::/96, RFC 4291; some stacks still reach the IPv4 address).
# An operator's local-use prefix shorter than /96 would place the IPv4 address elsewhere
# (RFC 6052 section 2.2); the last 32 bits are what DNS64 deployments use.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
EMBEDDING_IPV4 = (NAT64, LOCAL_NAT64, IPV4_COMPATIBLE)
# Site-local (RFC 3879 deprecated it; Python before 3.12 counts it global).
SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")


class BlockedDestination(Exception):
    """The host is, or resolves to, an address destinations may not use."""

    def __init__(self, host: str, address: IPAddress) -> None:
        where = str(address) if literal_address(host) else f"{host} resolves to {address}, which"
        super().__init__(
            f"{where} is not a public address: destinations may not point at loopback, "
            f"private, link-local, unique-local or unspecified addresses unless {SETTING} "
            "lists the host or a range holding the address"
        )
        self.host = host
        self.address = address


def normal_host(host: str) -> str:
    """A host as the allow-list compares it: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normal_host(host))
    except ValueError:
        return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (`::ffff:127.0.0.1`, 6to4, NAT64, local-use
    NAT64, IPv4-compatible `::7f00:1`), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in EMBEDDING_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Publicly routable. Refused besides loopback, private (unique-local fc00::/7 included),
    link-local and unspecified space: shared (100.64.0.0/10), reserved, documentation,
    benchmarking, site-local (fec0::/10) and multicast (224.0.0.0/4, ff00::/8) addresses,
    none of which is a vendor's. An IPv6 address carrying an IPv4 one is judged by that."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    if address.is_multicast or address in SITE_LOCAL:
        return False
    return address.is_global


@dataclass(frozen=True)
class AllowList:
    """SEGMENTS_ALLOW_PRIVATE_DESTINATIONS: comma-separated host names, addresses and CIDR
    ranges (`localhost, 127.0.0.1, 10.20.0.0/16, fd00::/8`). A listed host name is trusted
    whatever it resolves to; an address is allowed when a listed range holds it."""

    hosts: frozenset[str] = field(default_factory=frozenset)
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "AllowList":
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"{SETTING}: {entry!r} is not a CIDR range") from None
            host = normal_host(entry)
            if not host or not all(part.isalnum() or part in "-_." for part in host):
                raise ValueError(f"{SETTING}: {entry!r} is not a host name")
            hosts.add(host)
        return cls(frozenset(hosts), tuple(networks))

    def lists_host(self, host: str) -> bool:
        return normal_host(host) in self.hosts

    def covers(self, address: IPAddress) -> bool:
        inner = embedded_ipv4(address)
        candidates = (address,) if inner is None else (address, inner)
        return any(a in network for network in self.networks for a in candidates)

    def allows(self, host: str, address: IPAddress) -> bool:
        return is_public(address) or self.lists_host(host) or self.covers(address)


def check_addresses(host: str, addresses: Iterable[IPAddress], allow: AllowList) -> None:
    """BlockedDestination unless every address `host` resolved to is allowed: one blocked
    answer is enough to refuse, since a client may pick any of them."""
    for address in addresses:
        if not allow.allows(host, address):
            raise BlockedDestination(host, address)


async def resolve(host: str, port: int | None = None) -> list[IPAddress]:
    """The addresses of `host`, in the resolver's order, each once. OSError (socket.gaierror)
    when it does not resolve."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    answers = await asyncio.get_running_loop().getaddrinfo(
        normal_host(host), port, type=socket.SOCK_STREAM
    )
    found: dict[IPAddress, None] = {}
    for *_, sockaddr in answers:
        found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(found)


async def check_host(host: str, allow: AllowList, wait_seconds: float = RESOLVE_SECONDS) -> None:
    """The check when a destination is saved: BlockedDestination if `host` is, or resolves
    to, an address that is not allowed. A name that does not resolve now (the vendor is not
    reachable from here, or DNS is slow) is accepted: the worker checks every connection."""
    if allow.lists_host(host):
        return
    try:
        async with asyncio.timeout(wait_seconds):
            addresses = await resolve(host)
    except (OSError, TimeoutError, UnicodeError):
        return
    check_addresses(host, addresses, allow)


def has_user_info(url: str) -> bool:
    """`user:pass@` (or `user@`) in the URL: credentials belong in the destination's secret
    settings, where they are encrypted and masked, never in a URL that is shown and logged."""
    return "@" in urlsplit(url).netloc
