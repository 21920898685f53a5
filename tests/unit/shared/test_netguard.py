"""Where a destination may point (segments_shared/netguard.py): every address that is not
publicly routable is refused unless SEGMENTS_ALLOW_PRIVATE_DESTINATIONS lists the host or a
range holding it; saving accepts a name that does not resolve (the worker checks again)."""

import ipaddress

import pytest

from segments_shared.config import DestinationSettings
from segments_shared.netguard import (
    AllowList,
    BlockedDestination,
    check_addresses,
    check_host,
    has_user_info,
    is_public,
)

BLOCKED = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "169.254.169.254",
    "fe80::1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "fd00::1",
    "fc00::1",
    "100.64.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 (RFC 8215) of 169.254.169.254
    "64:ff9b:1:abcd::a00:1",  # the same block, of 10.0.0.1
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "fec0::1",  # site-local, deprecated
    "fec0::808:808",
    "224.0.0.1",
    "ff02::1",
    "ff0e::1",  # global-scope multicast
    "ff05::808:808",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.10",
]
PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "2606:4700:4700::1111",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "64:ff9b:1:abcd::5db8:d822",  # local-use NAT64 of it, as DNS64 answers
]


@pytest.mark.parametrize("address", BLOCKED)
def test_addresses_outside_public_space_are_refused(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert not is_public(parsed)
    with pytest.raises(BlockedDestination, match="SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"):
        check_addresses(address, [parsed], AllowList())


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert is_public(parsed)
    check_addresses(address, [parsed], AllowList())


def test_one_blocked_answer_refuses_the_name() -> None:
    answers = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")]
    with pytest.raises(BlockedDestination) as refused:
        check_addresses("mixed.example", answers, AllowList())
    assert "mixed.example resolves to 10.1.2.3" in str(refused.value)


def test_the_allow_list_takes_hosts_addresses_and_ranges() -> None:
    allow = AllowList.parse(" Fakes.Internal. , 127.0.0.1, 10.20.0.0/16,fd00::/8, ::1 ,")
    assert allow.hosts == frozenset({"fakes.internal"})
    loopback = ipaddress.ip_address("127.0.0.1")
    # A listed host is trusted whatever it resolves to.
    check_addresses("FAKES.internal", [ipaddress.ip_address("192.168.9.9")], allow)
    check_addresses("other.internal", [loopback], allow)
    check_addresses("localhost", [ipaddress.ip_address("::ffff:127.0.0.1")], allow)
    check_addresses("[::1]", [ipaddress.ip_address("::1")], allow)
    check_addresses("svc", [ipaddress.ip_address("10.20.255.1")], allow)
    check_addresses("svc", [ipaddress.ip_address("fd12::1")], allow)
    for outside in ("127.0.0.2", "10.21.0.1", "169.254.169.254", "fe80::1"):
        with pytest.raises(BlockedDestination):
            check_addresses("svc", [ipaddress.ip_address(outside)], allow)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "300.1.2.3/8", "fd00::/8/8", "bad host"])
def test_a_mistyped_entry_stops_the_service(entry: str) -> None:
    with pytest.raises(ValueError, match="SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"):
        AllowList.parse(entry)
    with pytest.raises(ValueError, match="SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"):
        DestinationSettings(allow_private_destinations=entry)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENTS_ALLOW_PRIVATE_DESTINATIONS", raising=False)
    assert DestinationSettings().destination_allow_list == AllowList()
    monkeypatch.setenv("SEGMENTS_ALLOW_PRIVATE_DESTINATIONS", "127.0.0.1,sandbox.local")
    allow = DestinationSettings().destination_allow_list
    assert allow.hosts == frozenset({"sandbox.local"})
    assert allow.networks == (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.asyncio
async def test_saving_resolves_the_name() -> None:
    # `localhost` resolves to loopback on every machine: refused unless allowed.
    with pytest.raises(BlockedDestination, match="localhost resolves to"):
        await check_host("localhost", AllowList())
    await check_host("localhost", AllowList.parse("127.0.0.0/8,::1"))
    await check_host("localhost", AllowList.parse("localhost"))
    with pytest.raises(BlockedDestination):
        await check_host("[::1]", AllowList.parse("127.0.0.1"))
    await check_host("93.184.216.34", AllowList())


@pytest.mark.asyncio
async def test_a_name_that_does_not_resolve_is_left_to_the_worker() -> None:
    # `.invalid` never resolves (RFC 2606): the vendor may simply be unreachable from here.
    await check_host("vendor.invalid", AllowList())


@pytest.mark.parametrize(
    ("url", "carries"),
    [
        ("https://user:pass@api.example.com/v3", True),
        ("https://user@api.example.com/v3", True),
        ("https://:pass@api.example.com/v3", True),
        ("https://api.example.com/v3?email=a@b.com", False),
        ("https://api.example.com/users/a@b.com", False),
        ("http://[::1]:8080/hook", False),
    ],
)
def test_user_information_in_a_url(url: str, carries: bool) -> None:
    assert has_user_info(url) is carries
