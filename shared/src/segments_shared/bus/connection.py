"""A broker connection that knows when it is lost, and the channel supervision built on it.

We supervise connections ourselves instead of relying on aio-pika's robust reconnection: the
relay and consumers need to know the moment a connection dies (to back off, to report
readiness) and to start from a clean channel afterwards. Both are `WorkerLoop`s
(segments_shared/loop.py): a failed step is retried after the suite's back-off.

The broker can also close a single channel and leave its connection open (a consumer
acknowledgement timeout, PRECONDITION_FAILED, NOT_FOUND after a queue or exchange was deleted,
any channel-level error), and it cancels a consumer whose queue was deleted. The connection's
close callbacks never hear of either, so the relay and consumers also watch their channel
(`wait_for_trouble`) and open a new one, with backoff, when it goes.

`SEGMENTS_AMQP_URL` may name several nodes of one cluster (bus/addresses.py). A connection
tries them in turn, each with a short timeout; a new one starts at a random node, so that
replicas spread over the cluster, and a reconnection starts at the node after the one it lost,
so that it fails over rather than waiting for a dead node. The step that reconnects also opens
a fresh channel and consumer (or relay channel), so they follow it to the new node.
"""

import asyncio
import logging
import random
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from segments_shared.bus.addresses import BrokerAddress, attempt_order, parse_broker_addresses
from segments_shared.loop import Trouble

log = logging.getLogger(__name__)

CHANNEL_OPEN_TIMEOUT = 10.0
# Per address: a node that does not answer in this time is skipped for the next one.
CONNECT_TIMEOUT = 5.0


class BrokerUnreachable(Trouble, ConnectionError):
    """No address of the broker answered."""


async def wait_for_trouble(channel: AbstractChannel, *events: asyncio.Event) -> None:
    """Return once the channel is closed (by the broker, by us, or with its connection) or any
    of `events` is set."""
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(channel.closed())]
    waiters += [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        # Cancelling `closed()` only cancels its shield: the channel's own future is untouched.
        await asyncio.gather(*waiters, return_exceptions=True)


async def close_channel(channel: AbstractChannel) -> None:
    """Close a channel we are done with; one the broker already closed needs nothing."""
    if channel.is_closed:
        return
    try:
        await asyncio.wait_for(channel.close(), 5)
    except Exception:  # its connection may be dying; the channel is gone either way
        log.debug("error while closing broker channel", exc_info=True)


def amqp_url_with_defaults(url: str, *, heartbeat: int = 30) -> str:
    """Heartbeats notice a dead TCP connection in seconds rather than minutes."""
    if "heartbeat=" in url:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}heartbeat={heartbeat}"


def broker_addresses(url: str) -> list[BrokerAddress]:
    """The addresses of a `SEGMENTS_AMQP_URL` value, with our connection defaults."""
    return [
        BrokerAddress(amqp_url_with_defaults(address.url), address.where)
        for address in parse_broker_addresses(url)
    ]


async def connect_first(
    addresses: Sequence[BrokerAddress],
    name: str,
    *,
    start: int = 0,
    seconds_each: float = CONNECT_TIMEOUT,
) -> tuple[AbstractConnection, int]:
    """Connect to the first address that answers, trying each once from `start`; returns the
    connection and the index of its address."""
    failures = []
    for index in attempt_order(len(addresses), start):
        address = addresses[index]
        try:
            connection = await aio_pika.connect(
                address.url, client_properties={"connection_name": name}, timeout=seconds_each
            )
        except Exception as exc:
            failures.append(f"{address.where}: {exc!r}")
            continue
        return connection, index
    raise BrokerUnreachable(f"no broker address answered ({'; '.join(failures)})")


class BrokerConnection:
    def __init__(self, url: str, name: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.addresses = broker_addresses(url)
        self.name = name
        self.connect_timeout = connect_timeout
        self.connection: AbstractConnection | None = None
        self.connected_to: str | None = None  # host:port of the node in use
        self.lost = asyncio.Event()
        self._start = random.randrange(len(self.addresses))

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def connect(self) -> AbstractConnection:
        self.lost.clear()
        connection, index = await connect_first(
            self.addresses, self.name, start=self._start, seconds_each=self.connect_timeout
        )
        # Once this connection is lost, the next one tries the other nodes first.
        self._start = (index + 1) % len(self.addresses)
        connection.close_callbacks.add(self._on_close)
        self.connection = connection
        self.connected_to = self.addresses[index].where
        log.info(
            "connected to the broker",
            extra={"connection": self.name, "broker": self.connected_to},
        )
        return connection

    def _on_close(self, *_: object) -> None:
        self.lost.set()

    async def channel(
        self, *, publisher_confirms: bool = True, on_return_raises: bool = False
    ) -> AbstractChannel:
        """Open a channel. A connection that cannot open one in time is not usable: raising
        here makes the caller drop and re-establish it."""
        if self.connection is None or self.connection.is_closed:
            raise RuntimeError("not connected")
        channel = self.connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
        )
        await asyncio.wait_for(channel.initialize(), CHANNEL_OPEN_TIMEOUT)
        return channel

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5)
            except Exception:  # closing a dying connection may fail; it is gone either way
                log.debug("error while closing broker connection", exc_info=True)
