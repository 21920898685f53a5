"""Sending one vendor request with the shared retry policy (docs/vendors.md#retries-and-backoff).

429, 5xx and timeouts are retried with full-jitter exponential backoff,
`sleep = random(0, min(cap, base * 2 ** attempt))`, preferring the vendor's own wait
(`Retry-After` in seconds or as an HTTP date, or on a 429 SendGrid's reset time), which a 429
also shares with every replica through the limiter. 401 and 403 end the run.

Connections go only to addresses a destination may use (`transport.py`); a refused address
ends the run, naming SEGMENTS_ALLOW_PRIVATE_DESTINATIONS. A run's error quotes the vendor's own
error fields, or a short excerpt of a body it cannot read (docs/vendors.md#errors).
"""

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client import Counter

from segments_shared.backoff import BackoffPolicy
from segments_shared.netguard import AllowList, BlockedDestination, has_user_info
from segments_shared.redaction import redact_urls
from sync_worker.connectors.base import (
    AuthenticationFailed,
    Capabilities,
    ConnectorError,
    CreatedMeanwhile,
)
from sync_worker.connectors.transport import GuardedTransport

log = logging.getLogger(__name__)

RETRIES = Counter("segments_vendor_retries", "Vendor requests retried", ["vendor", "reason"])

# Of a body we cannot read, an error quotes at most this many characters: enough to tell a
# proxy's error page from a vendor's, too little to copy a vendor's page into our records.
EXCERPT_CHARS = 200
# The vendor's own error fields (its `errors` list may be long), joined, at most this long.
DETAILS_CHARS = 600


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` on one line, at most `limit` characters, URLs' credentials masked."""
    flat = redact_urls(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def answer_text(response: httpx.Response, details: str = "") -> str:
    """An answer in an error: its status, and the vendor's error fields (`details`, as its
    connector reads them) or else an excerpt of the body."""
    said = excerpt(details, DETAILS_CHARS) if details else excerpt(response.text)
    return f"HTTP {response.status_code}: {said}" if said else f"HTTP {response.status_code}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_seconds: float = 0.5
    cap_seconds: float = 30.0

    def backoff(self, attempt: int) -> float:
        """The suite's full-jitter back-off (segments_shared/backoff.py), unless the vendor
        says how long to wait."""
        return BackoffPolicy(self.base_seconds, self.cap_seconds).delay(attempt)


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
    """How long the vendor asks us to wait: `Retry-After`, or, on a 429 only, SendGrid's
    reset time. SendGrid sends `X-RateLimit-Reset` on every answer: on a 5xx it says when
    the rate window resets, not when the server will be well again, so a 5xx without
    `Retry-After` backs off (docs/vendors.md#retries-and-backoff)."""
    wait = retry_after_seconds(response.headers.get("retry-after"))
    if wait is not None:
        return wait
    reset = response.headers.get("x-ratelimit-reset")
    if response.status_code == 429 and reset and reset.strip().isdigit():
        # SendGrid: epoch seconds at which the window resets.
        return max(0.0, float(reset) - time.time())
    return None


def is_retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


class Limiter(Protocol):
    """What `VendorHttp` needs of a limiter. The worker's is `sync_worker.limiter.VendorLimiter`
    (slots and rate windows shared with every replica through PostgreSQL); unit tests pass
    one kept in memory."""

    def request(
        self, account: str, capabilities: Capabilities
    ) -> AbstractAsyncContextManager[None]:
        """Held while one request is out: waits for a slot and the account's rate windows."""
        ...

    async def pause(self, account: str, seconds: float) -> None:
        """The vendor asked to wait: hold the account's requests back this long."""
        ...


class VendorHttp:
    """One destination's way to its vendor for one run: the API root, credentials and
    headers, and every request sent through the shared limiter (slots and rate windows of
    the vendor account) with the retry policy."""

    def __init__(
        self,
        vendor: str,
        timeout: httpx.Timeout,
        policy: RetryPolicy,
        limiter: Limiter,
        account: str,
        capabilities: Capabilities,
        *,
        base_url: str,
        allow: AllowList,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.vendor = vendor
        # A client of its own, its pool no larger than the vendor's concurrency: httpcore
        # walks the whole pool for every request. Redirects are answers, never followed.
        limits = httpx.Limits(
            max_connections=capabilities.concurrency,
            max_keepalive_connections=capabilities.concurrency,
        )
        self.client = httpx.AsyncClient(
            timeout=timeout,
            transport=GuardedTransport(allow, limits),
            follow_redirects=False,
        )
        self.policy = policy
        self.limiter = limiter
        self.account = account
        self.capabilities = capabilities
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.auth = httpx.BasicAuth(*auth) if auth else None

    async def aclose(self) -> None:
        await self.client.aclose()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def _own_origin(self, url: str) -> bool:
        """Credentials go only to the vendor's API: a link it hands out (an export's file,
        an error report) may point at other storage, which must not see the key."""
        target, own = httpx.URL(url), httpx.URL(self.base_url)
        return (target.scheme, target.host, target.port) == (own.scheme, own.host, own.port)

    async def request(
        self,
        method: str,
        path: str,
        *,
        describe: str,
        json_body: Any = None,
        json_text: bytes | None = None,
        params: dict[str, str | int] | None = None,
        content: bytes | None = None,
        sign: Callable[[bytes], dict[str, str]] | None = None,
        recheck: Callable[[], Awaitable[str | None]] | None = None,
    ) -> httpx.Response:
        """Send with retries; returns the final non-retryable response (2xx or 4xx).
        The body is `json_body` (encoded here), `json_text` (JSON already encoded) or raw
        `content`; `sign` adds headers computed afresh for every attempt (webhook signatures).
        `recheck`, for a create, looks for what it creates before each retry (see `send`)."""
        body = content
        url = self.url(path)
        if has_user_info(url):
            raise ConnectorError(
                f"{describe}: the URL carries user information (user:pass@), which is refused; "
                "credentials go in the destination's secret settings"
            )
        own = self._own_origin(url)
        vendor_headers = self.headers if own else {}
        auth = self.auth if own else None
        base_headers = vendor_headers
        if json_body is not None:
            json_text = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        if json_text is not None:
            body = json_text
            base_headers = {"Content-Type": "application/json", **vendor_headers}

        async def attempt() -> httpx.Response:
            headers = dict(base_headers)
            if sign is not None:
                headers.update(sign(body or b""))
            async with self.limiter.request(self.account, self.capabilities):
                try:
                    return await self.client.request(
                        method, url, content=body, params=params, headers=headers, auth=auth
                    )
                except BlockedDestination as exc:
                    # Retrying cannot help: the run fails, saying which setting would allow it.
                    raise ConnectorError(f"{self.vendor} {describe}: {exc}") from exc

        return await send(
            self.vendor, attempt, self.policy, describe=describe, pause=self._pause, recheck=recheck
        )

    async def _pause(self, seconds: float) -> None:
        try:
            await self.limiter.pause(self.account, seconds)
        except Exception:
            log.warning("could not share the vendor's wait with other workers", exc_info=True)


async def send(
    vendor: str,
    request: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    *,
    describe: str,
    pause: Callable[[float], Awaitable[None]] | None = None,
    recheck: Callable[[], Awaitable[str | None]] | None = None,
) -> httpx.Response:
    """Send with retries; returns the final non-retryable response (2xx or 4xx).

    A create is not idempotent: one that timed out or answered 5xx may have happened. Before
    sending it again, and before giving up, `recheck` looks for it; when found,
    CreatedMeanwhile ends the retries."""
    last_error = ""
    maybe_done = False  # an attempt so far may have done what it asked
    for attempt in range(policy.attempts):
        try:
            response = await request()
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
            last_error = f"{describe}: {reason} ({excerpt(repr(exc))})"
            wait = policy.backoff(attempt)
            maybe_done = True
        else:
            if response.status_code in (401, 403):
                raise AuthenticationFailed(
                    f"{vendor} refused the credentials ({response.status_code}) on {describe}: "
                    f"{excerpt(response.text)}"
                )
            if not is_retryable(response):
                return response
            reason = str(response.status_code)
            last_error = f"{describe}: {answer_text(response)}"
            maybe_done = maybe_done or response.status_code >= 500  # a 429 was turned away
            vendor_delay = vendor_wait(response)
            if vendor_delay is not None and pause is not None and response.status_code == 429:
                await pause(vendor_delay)
            wait = vendor_delay if vendor_delay is not None else policy.backoff(attempt)
        if attempt + 1 == policy.attempts:
            break
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
        if recheck is not None and maybe_done:
            await _look_for(recheck, last_error)
    if recheck is not None and maybe_done:
        await _look_for(recheck, last_error)
    raise ConnectorError(f"{vendor} kept failing after {policy.attempts} attempts: {last_error}")


async def _look_for(recheck: Callable[[], Awaitable[str | None]], last_error: str) -> None:
    """CreatedMeanwhile when `recheck` finds what a failed create asked for. A look-up that
    fails ends the run, saying what the create met too."""
    try:
        found = await recheck()
    except AuthenticationFailed:
        raise
    except ConnectorError as exc:
        raise ConnectorError(
            f"{last_error}; looking for it before sending it again failed too: {exc}"
        ) from exc
    if found is not None:
        raise CreatedMeanwhile(found)
