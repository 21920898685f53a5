"""`SEGMENTS_AMQP_URL` with several nodes of one cluster: how it is read, in what order a
connection tries the nodes, and that no password reaches what is logged."""

import pytest
from yarl import URL

from segments_shared.bus.addresses import attempt_order, parse_broker_addresses
from segments_shared.bus.connection import BrokerConnection, broker_addresses


def test_one_url_is_one_address() -> None:
    [address] = parse_broker_addresses("amqp://guest:guest@localhost:5672/")
    assert address.url == "amqp://guest:guest@localhost:5672/"
    assert address.where == "localhost:5672"


def test_full_urls_are_kept_as_written() -> None:
    value = "amqp://a:one@rabbit-0:5672/prod, amqps://b:two%2Cthree@rabbit-1/other"
    first, second = parse_broker_addresses(value)
    assert first.url == "amqp://a:one@rabbit-0:5672/prod"
    assert second.url == "amqps://b:two%2Cthree@rabbit-1/other"
    assert second.where == "rabbit-1:5671"


def test_host_and_port_take_everything_else_from_the_first_url() -> None:
    value = "amqp://segments:p%40ss%2Cword@rabbit-0:5673/prod?heartbeat=10,rabbit-1,rabbit-2:5674"
    addresses = parse_broker_addresses(value)
    assert [address.where for address in addresses] == [
        "rabbit-0:5673",
        "rabbit-1:5673",
        "rabbit-2:5674",
    ]
    for address, host in zip(addresses, ("rabbit-0", "rabbit-1", "rabbit-2"), strict=True):
        url = URL(address.url)
        assert (url.scheme, url.user, url.password) == ("amqp", "segments", "p@ss,word")
        assert url.host == host
        assert url.path == "/prod"
        assert url.query["heartbeat"] == "10"


def test_an_ipv6_host_and_the_default_port() -> None:
    first, second = parse_broker_addresses("amqp://u:p@[::1]/,[::1]:5680")
    assert first.where == "[::1]:5672"
    assert second.where == "[::1]:5680"
    assert URL(second.url).password == "p"


@pytest.mark.parametrize(
    "value",
    [
        "",
        " , ",
        "rabbit-0:5672",  # the first must be a full URL: it gives the credentials
        "http://u:p@rabbit-0/",
        "amqp://u:p@rabbit-0/,user@rabbit-1",
        "amqp://u:p@rabbit-0/,rabbit-1/vhost",
        "amqp://u:p@rabbit-0/,rabbit-1:port",
        "amqp://u:p@rabbit-0/,redis://rabbit-1",
    ],
)
def test_what_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="SEGMENTS_AMQP_URL"):
        parse_broker_addresses(value)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError, match="address 2") as refused:
        parse_broker_addresses("amqp://u:s3cret@rabbit-0/,rabbit-1:port")
    assert "s3cret" not in str(refused.value)


def test_every_address_gets_a_heartbeat_unless_it_sets_one() -> None:
    addresses = broker_addresses("amqp://u:p@a/,b,amqp://u:p@c/?heartbeat=5")
    assert [URL(address.url).query["heartbeat"] for address in addresses] == ["30", "30", "5"]


@pytest.mark.parametrize(
    ("count", "start", "order"),
    [(1, 0, [0]), (3, 0, [0, 1, 2]), (3, 1, [1, 2, 0]), (3, 2, [2, 0, 1])],
)
def test_each_address_is_tried_once_from_the_start(
    count: int, start: int, order: list[int]
) -> None:
    assert attempt_order(count, start) == order


def test_connections_start_at_different_nodes() -> None:
    """Replicas spread over the cluster instead of all connecting to the first node."""
    url = "amqp://u:p@a/,b,c"
    starts = {BrokerConnection(url, "test")._start for _ in range(200)}
    assert starts == {0, 1, 2}
