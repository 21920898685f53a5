"""Running a worker: its tasks until SIGTERM or SIGINT, then a graceful stop within 30 s."""

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 25.0


def freeze_startup_objects() -> None:
    """Move what start-up created (modules, the app, numpy and scikit-learn) out of the
    collector's reach: otherwise every full collection walks all of it, a pause of tens of
    milliseconds in the middle of requests, seen as the p99 of a busy API. Young collections
    run every 50,000 allocations instead of 700: the services allocate many short-lived
    objects per request and message, few cycles (docs/benchmarks.md has the figures)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_until_stopped(
    tasks: dict[str, Callable[[], Coroutine[Any, Any, None]]],
    stop_callbacks: list[Callable[[], None]],
    stopping: asyncio.Event,
) -> None:
    """Run the named coroutines; on a signal, call the stop callbacks and wait for them.

    A task that ends early with an error stops the service: a worker without its consumer
    would look alive while doing nothing.
    """
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = {asyncio.create_task(factory(), name=name) for name, factory in tasks.items()}
    stop_waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait(running | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in done - {stop_waiter}:
        if task.exception() is not None:
            log.error("task failed, stopping", exc_info=task.exception())
    log.info("stopping")
    stopping.set()
    for callback in stop_callbacks:
        callback()
    _, pending = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
    for task in pending:
        log.warning("task did not stop in time, cancelling", extra={"task": task.get_name()})
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    stop_waiter.cancel()
