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
"""

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger(__name__)

CHANNEL_OPEN_TIMEOUT = 10.0


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


class BrokerConnection:
    def __init__(self, url: str, name: str) -> None:
        self.url = amqp_url_with_defaults(url)
        self.name = name
        self.connection: AbstractConnection | None = None
        self.lost = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def connect(self) -> AbstractConnection:
        self.lost.clear()
        connection = await aio_pika.connect(
            self.url, client_properties={"connection_name": self.name}, timeout=10
        )
        connection.close_callbacks.add(self._on_close)
        self.connection = connection
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
