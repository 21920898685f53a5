"""Waiting for a vendor's asynchronous job (SendGrid imports and exports, Klaviyo bulk
imports): poll with a growing interval, each poll a request that counts against the
account's rate windows like any other."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sync_worker.connectors.base import ConnectorError

T = TypeVar("T")


async def poll_until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    describe: str,
    within: float = 900.0,
    first_wait: float = 0.05,
    max_wait: float = 2.0,
) -> T:
    deadline = time.monotonic() + within
    wait = first_wait
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise ConnectorError(f"{describe} did not finish within {within:.0f} s")
        await asyncio.sleep(wait)
        wait = min(wait * 2, max_wait)
