"""Asynchronous vendor jobs (SendGrid imports and exports, Klaviyo bulk imports).

A job's effects happen once, `delay` seconds after it was accepted, on the event loop; a poll
that arrives after that moment and finds it not yet run (the loop was busy) runs it first, so
a client never sees a job still pending past its due time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class DelayedWork:
    def __init__(self, delay: float, work: Callable[[], None]) -> None:
        self.due = time.monotonic() + delay
        self.done = False
        self._work = work
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self.run)

    def run(self) -> None:
        if not self.done:
            self.done = True
            self._timer.cancel()
            self._work()

    def settle(self) -> bool:
        """Run it if it is due; whether it has run."""
        if not self.done and time.monotonic() >= self.due:
            self.run()
        return self.done
