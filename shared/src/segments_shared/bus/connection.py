"""A broker connection that knows when it is lost.

We supervise connections ourselves instead of relying on aio-pika's robust reconnection: the
relay and consumers need to know the moment a connection dies (to back off, to report
readiness) and to start from a clean channel afterwards.
"""

import asyncio
import logging
import random

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger(__name__)


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
        if self.connection is None:
            raise RuntimeError("not connected")
        return await self.connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
        )

    async def connect_with_backoff(self, stopping: asyncio.Event) -> AbstractConnection | None:
        """Connect, retrying with full-jitter backoff until connected or stopping."""
        attempt = 0
        while not stopping.is_set():
            try:
                return await self.connect()
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                delay = random.uniform(0, min(10.0, 0.2 * 2**attempt))
                attempt += 1
                log.warning(
                    "broker unreachable, retrying",
                    extra={"error": repr(exc), "retry_in_s": round(delay, 2)},
                )
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                except TimeoutError:
                    pass
        return None

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5)
            except Exception:  # closing a dying connection may fail; it is gone either way
                log.debug("error while closing broker connection", exc_info=True)
