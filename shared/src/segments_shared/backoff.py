"""The one back-off of the suite: full-jitter exponential, from tenacity.

Every retry waits `random(0, min(cap, base * 2 ** attempt))` seconds (attempt counted from
0), tenacity's `wait_random_exponential`: the broker and database reconnections, worker
loops after an error, jobs that failed and vendor requests (which prefer the vendor's own
`Retry-After`, see sync_worker/connectors/http.py). docs/pitfalls.md says why jitter.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field

from tenacity import RetryCallState, wait_random_exponential


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` + 1 (attempt 0 is the first failure)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt + 1
        return float(wait_random_exponential(multiplier=self.base, max=self.cap)(state))


@dataclass
class Backoff:
    """A policy with its count of failures in a row; `reset()` after a success."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    attempt: int = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        delay = self.policy.delay(self.attempt)
        self.attempt += 1
        return delay

    async def sleep(self, stopping: asyncio.Event, delay: float | None = None) -> None:
        """Sleep the next delay (or `delay`), returning early when stopping."""
        seconds = self.next_delay() if delay is None else delay
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
