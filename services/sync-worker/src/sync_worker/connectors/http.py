"""Sending one vendor request with the shared retry policy (DESTINATIONS.md, general rules).

429, 5xx and timeouts are retried with full-jitter exponential backoff,
`sleep = random(0, min(cap, base * 2 ** attempt))`, preferring the vendor's own wait
(`Retry-After` in seconds or as an HTTP date, or a reset time). 401 and 403 end the run.
"""

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from prometheus_client import Counter

from sync_worker.connectors.base import AuthenticationFailed, ConnectorError

log = logging.getLogger(__name__)

RETRIES = Counter("segments_vendor_retries", "Vendor requests retried", ["vendor", "reason"])


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_seconds: float = 0.5
    cap_seconds: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def vendor_wait(response: httpx.Response) -> float | None:
    """How long the vendor asks us to wait, from `Retry-After` or a reset header."""
    wait = retry_after_seconds(response.headers.get("retry-after"))
    if wait is not None:
        return wait
    reset = response.headers.get("x-ratelimit-reset")
    if reset and reset.strip().isdigit():
        # SendGrid: epoch seconds at which the window resets.
        return max(0.0, float(reset) - time.time())
    return None


def is_retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


async def send(
    vendor: str,
    request: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    *,
    describe: str,
) -> httpx.Response:
    """Send with retries; returns the final non-retryable response (2xx or 4xx)."""
    last_error = ""
    for attempt in range(policy.attempts):
        try:
            response = await request()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
            last_error = f"{describe}: {reason} ({exc!r})"
            wait = policy.backoff(attempt)
        else:
            if response.status_code in (401, 403):
                raise AuthenticationFailed(
                    f"{vendor} refused the credentials ({response.status_code}) on {describe}: "
                    f"{response.text[:300]}"
                )
            if not is_retryable(response):
                return response
            reason = str(response.status_code)
            last_error = f"{describe}: HTTP {response.status_code} {response.text[:200]}"
            vendor_delay = vendor_wait(response)
            wait = vendor_delay if vendor_delay is not None else policy.backoff(attempt)
        RETRIES.labels(vendor=vendor, reason=reason).inc()
        log.info(
            "vendor request retried",
            extra={
                "vendor": vendor,
                "attempt": attempt + 1,
                "wait_s": round(wait, 3),
                "reason": last_error[:300],
            },
        )
        await asyncio.sleep(min(wait, policy.cap_seconds * 4))
    raise ConnectorError(f"{vendor} kept failing after {policy.attempts} attempts: {last_error}")
