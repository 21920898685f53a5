"""The skeleton every background loop of the suite shares: the outbox relay, the event
consumers and every job runner.

A loop repeats `step()` until stopped. A step says how long to wait before the next one (it
is woken earlier by `wake()`: a NOTIFY, a message, a finished task); polling covers a
missed wake-up. A step that raises is logged and retried after a back-off, which resets once
a step succeeds or ran for `stable_seconds` before failing (a broker channel that worked for
a while and then dropped starts again quickly; one that fails at once backs off).
"""

import asyncio
import contextlib
import logging
import time

from segments_shared.backoff import Backoff, BackoffPolicy

log = logging.getLogger(__name__)


class WorkerLoop:
    def __init__(
        self,
        name: str,
        *,
        poll_seconds: float = 1.0,
        backoff: BackoffPolicy | None = None,
        stable_seconds: float = 10.0,
        min_interval: float = 0.0,
    ) -> None:
        self.name = name
        self.poll_seconds = poll_seconds
        # Steps at most this often: a stream of wake-ups (a NOTIFY per write) folds into one.
        self.min_interval = min_interval
        self.stable_seconds = stable_seconds
        self.backoff = Backoff(backoff or BackoffPolicy())
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def stopping_event(self) -> asyncio.Event:
        return self._stopping

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def step(self) -> float | None:
        """One round of work; the seconds until the next (None: the poll interval)."""
        raise NotImplementedError

    async def stopped(self) -> None:
        """After the last step: finish what is in flight, close what is open."""

    async def run(self) -> None:
        try:
            while not self.stopping:
                self._wake.clear()
                started = time.monotonic()
                try:
                    delay = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if time.monotonic() - started >= self.stable_seconds:
                        self.backoff.reset()
                    delay = self.backoff.next_delay()
                    log.warning(
                        "%s failed, retrying",
                        self.name,
                        exc_info=not isinstance(exc, Trouble),
                        extra={
                            "loop": self.name,
                            "error": repr(exc),
                            "retry_in_s": round(delay, 2),
                        },
                    )
                    await self._sleep(self._stopping, delay)
                    continue
                self.backoff.reset()
                seconds = self.poll_seconds if delay is None else min(delay, self.poll_seconds)
                if self.min_interval > 0:
                    await self._sleep(self._stopping, min(self.min_interval, seconds))
                await self._sleep(self._wake, seconds - self.min_interval)
        finally:
            await self.stopped()

    @staticmethod
    async def _sleep(until: asyncio.Event, seconds: float) -> None:
        if seconds <= 0 or until.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)


class Trouble(Exception):
    """An expected interruption (a broker channel closed, a connection lost): logged without
    a traceback, then retried after the back-off like any failure."""
