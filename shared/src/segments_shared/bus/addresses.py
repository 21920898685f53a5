"""The broker's addresses: `SEGMENTS_AMQP_URL` names one node, or several nodes of one cluster
separated by commas (docs/operations.md#a-rabbitmq-cluster).

The first element is a full URL. Each later one is a full URL too, or only `host[:port]`,
which takes everything else from the first URL (scheme, user, password, virtual host, query
options) and its port when it names none:

    amqp://segments:secret@rabbit-0:5672/prod,rabbit-1,rabbit-2:5673

A comma in a password is percent-encoded (`%2C`), like any reserved character of a URL.
Errors and logs name an address by `host:port` only: the URL holds the password.
"""

from dataclasses import dataclass

from yarl import URL

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class BrokerAddress:
    url: str
    where: str  # host:port, safe to log


def parse_broker_addresses(value: str) -> list[BrokerAddress]:
    """Every address of a `SEGMENTS_AMQP_URL` value, in the order given."""
    elements = [element.strip() for element in value.split(",")]
    elements = [element for element in elements if element]
    if not elements:
        raise ValueError("SEGMENTS_AMQP_URL is empty: give at least one amqp:// URL")
    if "://" not in elements[0]:
        raise ValueError(
            "SEGMENTS_AMQP_URL must start with a full URL (amqp://user:password@host:port/vhost)"
        )
    first = _full_url(elements[0], 1)
    addresses = [BrokerAddress(elements[0], _where(first))]
    for number, element in enumerate(elements[1:], start=2):
        if "://" in element:
            # Kept as written: re-encoding it could change a password's escapes.
            addresses.append(BrokerAddress(element, _where(_full_url(element, number))))
        else:
            url = _inherit(first, element, number)
            addresses.append(BrokerAddress(str(url), _where(url)))
    return addresses


def attempt_order(count: int, start: int) -> list[int]:
    """Indexes of `count` addresses, each once, from `start` round to the one before it."""
    return [(start + offset) % count for offset in range(count)]


def _full_url(element: str, number: int) -> URL:
    try:
        url = URL(element)
    except ValueError:
        raise ValueError(f"address {number} of SEGMENTS_AMQP_URL is not a valid URL") from None
    if url.scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"address {number} of SEGMENTS_AMQP_URL has scheme {url.scheme!r}, not amqp or amqps"
        )
    if not url.host:
        raise ValueError(f"address {number} of SEGMENTS_AMQP_URL names no host")
    return url


def _inherit(first: URL, element: str, number: int) -> URL:
    if "@" in element or "/" in element or "?" in element:
        # Credentials or a virtual host of its own: only a full URL can say that.
        raise ValueError(
            f"address {number} of SEGMENTS_AMQP_URL is neither host[:port] nor a full URL"
        )
    try:
        short = URL(f"//{element}")
        port = short.port
    except ValueError:
        raise ValueError(
            f"address {number} of SEGMENTS_AMQP_URL ({element}) is not host[:port]"
        ) from None
    if not short.host:
        raise ValueError(f"address {number} of SEGMENTS_AMQP_URL names no host")
    url = first.with_host(short.host)
    return url.with_port(port) if port is not None else url


def _where(url: URL) -> str:
    host = f"[{url.host}]" if url.host and ":" in url.host else url.host
    return f"{host}:{url.port or DEFAULT_PORTS[url.scheme]}"
