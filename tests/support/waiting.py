"""Waiting for something that happens in the background: a worker, a relay, a refresher."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within: float = 30.0,
    every: float = 0.05,
) -> T:
    """Probe until `done` holds of the value or `within` seconds have passed, and return the
    last value either way: the caller asserts on it, so a failure shows what was seen."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Wait until `condition` holds; TimeoutError after `within` seconds."""
    if not await eventually(condition, bool, within):
        raise TimeoutError("condition not met in time")
