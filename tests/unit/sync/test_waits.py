"""How long the worker waits before a vendor request: the vendor's `Retry-After` (seconds or
an HTTP date), SendGrid's reset time on a 429, full-jitter backoff otherwise, and each
account's rate windows (`next_send_time`)."""

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from sync_worker.connectors.base import RateWindow
from sync_worker.connectors.http import RetryPolicy, retry_after_seconds, vendor_wait
from sync_worker.limiter import (
    WINDOW_MARGIN_FACTOR,
    WINDOW_MARGIN_SECONDS,
    lock_key,
    next_send_time,
    window_name,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Per window of an account: its log of send times, and until when the vendor asked to wait.
Logs = list[tuple[RateWindow, list[datetime], datetime | None]]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),  # never a negative wait
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=NOW.timestamp()) == seconds


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_a_429s_reset_time_counts_only_as_epoch_seconds_and_never_below_zero() -> None:
    assert vendor_wait(answer(429, **{"X-RateLimit-Reset": str(int(time.time()) - 60)})) == 0.0
    assert vendor_wait(answer(429, **{"X-RateLimit-Reset": "tomorrow"})) is None
    assert vendor_wait(answer(429)) is None


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_is_full_jitter_below_the_exponential_bound(attempt: int) -> None:
    policy = RetryPolicy(attempts=8, base_seconds=0.5, cap_seconds=30.0)
    bound = min(policy.cap_seconds, policy.base_seconds * 2**attempt)
    waits = [policy.backoff(attempt) for _ in range(500)]
    assert all(0 <= wait <= bound for wait in waits)
    # Spread over the whole range (the chance of missing either end by chance is 0.8**500).
    assert min(waits) < 0.2 * bound
    assert max(waits) > 0.8 * bound


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def test_a_request_goes_at_once_while_every_window_has_room() -> None:
    windows: Logs = [
        (RateWindow(3, 1.0), [at(-0.5), at(-0.2)], None),
        (RateWindow(100, 60.0), [at(-30)], None),
    ]
    assert next_send_time(NOW, windows) == NOW
    assert next_send_time(NOW, []) == NOW


def test_a_full_window_waits_for_its_oldest_request_plus_a_margin() -> None:
    window = RateWindow(2, 1.0)
    span = timedelta(seconds=1.0 * WINDOW_MARGIN_FACTOR + WINDOW_MARGIN_SECONDS)
    assert next_send_time(NOW, [(window, [at(-0.9), at(-0.1)], None)]) == at(-0.9) + span
    # The strictest window decides.
    wide = RateWindow(3, 60.0)
    logs: Logs = [
        (window, [at(-0.9), at(-0.1)], None),
        (wide, [at(-50), at(-0.9), at(-0.1)], None),
    ]
    assert next_send_time(NOW, logs) == at(-50) + timedelta(
        seconds=60.0 * WINDOW_MARGIN_FACTOR + WINDOW_MARGIN_SECONDS
    )


def test_never_before_the_last_reservation_nor_a_vendors_wait() -> None:
    window = RateWindow(10, 1.0)
    assert next_send_time(NOW, [(window, [at(-0.5), at(0.3)], None)]) == at(0.3)
    assert next_send_time(NOW, [(window, [], at(5))]) == at(5)
    assert next_send_time(NOW, [(window, [], at(-5))]) == NOW


def test_accounts_lock_by_a_stable_signed_32_bit_key() -> None:
    keys = {lock_key(f"account-{n}") for n in range(1000)}
    assert len(keys) == 1000
    assert all(-(2**31) <= key < 2**31 for key in keys)
    # Replicas of two versions side by side (a rolling deploy) must take the same locks.
    assert lock_key("account-1") == 1459033881
    assert (window_name(RateWindow(10, 1.0)), window_name(RateWindow(3, 0.5))) == (
        "10/1s",
        "3/0.5s",
    )
