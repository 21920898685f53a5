"""The suite's one back-off: full jitter, `random(0, min(cap, base * 2 ** attempt))`."""

import asyncio
import time

import pytest

from segments_shared.backoff import Backoff, BackoffPolicy


@pytest.mark.parametrize("attempt", range(8))
def test_each_delay_is_drawn_from_zero_to_its_bound(attempt: int) -> None:
    policy = BackoffPolicy(base=0.5, cap=20.0)
    bound = min(policy.cap, policy.base * 2**attempt)
    delays = [policy.delay(attempt) for _ in range(300)]
    assert all(0 <= delay <= bound for delay in delays)
    # Full jitter: spread over the whole range, not bunched at its top.
    assert min(delays) < 0.25 * bound < 0.75 * bound < max(delays)


def test_a_long_run_of_failures_waits_at_most_the_cap() -> None:
    policy = BackoffPolicy(base=0.2, cap=10.0)
    assert all(0 <= policy.delay(attempt) <= 10.0 for attempt in (40, 1000, 100_000))


def test_a_backoff_counts_failures_until_reset() -> None:
    backoff = Backoff(BackoffPolicy(base=1.0, cap=1000.0))
    assert [backoff.next_delay() <= 2**n for n in range(5)] == [True] * 5
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 1.0


@pytest.mark.asyncio
async def test_a_backoff_sleep_ends_when_stopping() -> None:
    backoff = Backoff(BackoffPolicy(base=60.0, cap=60.0))
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()
    await backoff.sleep(stopping, 60.0)
    assert time.monotonic() - started < 1.0
