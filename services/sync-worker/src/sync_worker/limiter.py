"""Vendor limits per account, shared by every run and worker replica through PostgreSQL.

Concurrency: a request holds one of its account's `concurrency` slots, each a session-level
advisory lock `(hash of the account, slot number)` taken on one connection this process keeps
for the purpose. A worker that dies loses its connection, and PostgreSQL frees its slots at
once: no lease to wait out.

Rate windows: `vendor_rate_windows` keeps, per account and window, the send times of the
last `limit` requests (a sliding log). A request reserves the earliest time at which every
window of its account allows one more (the rows are locked, so replicas take turns), sleeps
until then and sends. Any `seconds` seconds then hold at most `limit` requests, bursts
included, by our clock; a small margin covers the way to the vendor. `blocked_until` holds
every replica back once the vendor has said how long to wait.
"""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from prometheus_client import Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import Backoff, BackoffPolicy
from sync_worker.connectors.base import Capabilities, RateWindow

log = logging.getLogger(__name__)

WAITED = Histogram(
    "segments_vendor_limiter_wait_seconds",
    "Time a vendor request waited for a concurrency slot and its rate windows",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)

# Our clock says when a request left, the vendor's when it arrived: keep a little apart.
WINDOW_MARGIN_FACTOR = 1.05
WINDOW_MARGIN_SECONDS = 0.05

# Session locks are re-entrant: this process skips the slots it holds itself (CASE fixes
# the order of evaluation, so no lock is taken on a slot skipped).
_TRY_SLOT = text(
    "SELECT s FROM generate_series(0, CAST(:slots AS int) - 1) AS s "
    "WHERE CASE WHEN s = ANY(CAST(:held AS int[])) THEN false "
    "ELSE pg_try_advisory_lock(CAST(:key AS int), s) END LIMIT 1"
)
_FREE_SLOT = text("SELECT pg_advisory_unlock(CAST(:key AS int), CAST(:slot AS int))")
_ENSURE_WINDOWS = text(
    'INSERT INTO vendor_rate_windows (account_key, "window") VALUES (:account, :window) '
    "ON CONFLICT DO NOTHING"
)
_LOCK_WINDOWS = text(
    'SELECT "window", sent_at, blocked_until, clock_timestamp() AS now '
    'FROM vendor_rate_windows WHERE account_key = :account AND "window" = ANY(:windows) '
    'ORDER BY "window" FOR UPDATE'
)
_LOG_SEND = text(
    "UPDATE vendor_rate_windows SET sent_at = :sent_at "
    'WHERE account_key = :account AND "window" = :window'
)
_BLOCK = text(
    "UPDATE vendor_rate_windows SET blocked_until = greatest("
    "coalesce(blocked_until, '-infinity'), clock_timestamp() + make_interval(secs => :seconds)) "
    "WHERE account_key = :account"
)


def lock_key(account: str) -> int:
    """A stable 32-bit key per account (advisory locks take two int4 keys)."""
    return int.from_bytes(
        hashlib.sha256(b"segments-vendor:" + account.encode()).digest()[:4], "big", signed=True
    )


def window_name(window: RateWindow) -> str:
    return f"{window.requests}/{window.seconds:g}s"


def next_send_time(
    now: datetime,
    windows: list[tuple[RateWindow, list[datetime], datetime | None]],
) -> datetime:
    """The earliest time every window allows one more request: never before the last
    reservation (logs stay sorted), nor before `blocked_until`, nor within `seconds` of the
    request `limit` places back."""
    at = now
    for window, sent_at, blocked_until in windows:
        if blocked_until is not None:
            at = max(at, blocked_until)
        if sent_at:
            at = max(at, sent_at[-1])
        if len(sent_at) >= window.requests:
            span = window.seconds * WINDOW_MARGIN_FACTOR + WINDOW_MARGIN_SECONDS
            at = max(at, sent_at[-window.requests] + timedelta(seconds=span))
    return at


class Slot:
    def __init__(self, key: int, number: int, generation: int, taken_at: float) -> None:
        self.key = key
        self.number = number
        self.generation = generation
        self.taken_at = taken_at
        self.idle_since = 0.0


class VendorLimiter:
    """One per worker process; `request()` wraps every vendor request."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        slots_engine: AsyncEngine | None = None,
        poll_seconds: float = 0.01,
        keep_idle_seconds: float = 0.05,
        keep_at_most_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        # Slots are session locks: behind transaction pooling they need an engine on the
        # direct URL (docs/operations.md#behind-pgbouncer).
        self.slots_engine = slots_engine or engine
        self.poll_seconds = poll_seconds
        # A slot that falls free is kept a moment for this process's next request (a busy
        # run asks the database for nothing), but never for long: other replicas get their
        # turn.
        self.keep_idle_seconds = keep_idle_seconds
        self.keep_at_most_seconds = keep_at_most_seconds
        self._idle: dict[int, list[Slot]] = {}
        self._reaper: asyncio.Task[None] | None = None
        # Set whenever this process gives a slot up, so that its own waiters try at once.
        self._freed = asyncio.Event()
        self._conn: AsyncConnection | None = None
        self._generation = 0
        self._statements = asyncio.Lock()
        self._held: dict[int, set[int]] = {}
        # Waiting here first keeps this process from asking the database for slots it
        # cannot have.
        self._local: dict[tuple[str, int], asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def request(self, account: str, capabilities: Capabilities) -> AsyncIterator[None]:
        started = asyncio.get_running_loop().time()
        local = self._local.setdefault(
            (account, capabilities.concurrency), asyncio.Semaphore(capabilities.concurrency)
        )
        async with local:
            key = lock_key(account)
            slot = self._reuse(key) or await self._acquire(key, capabilities.concurrency)
            try:
                if capabilities.rate_windows:
                    wait = await self._reserve(account, capabilities.rate_windows)
                    if wait > 0:
                        await asyncio.sleep(wait)
                WAITED.observe(asyncio.get_running_loop().time() - started)
                yield
            finally:
                await self._park(slot)

    async def pause(self, account: str, seconds: float) -> None:
        """The vendor asked to wait: every replica holds back this account's requests."""
        async with self.engine.begin() as conn:
            await conn.execute(_BLOCK, {"account": account, "seconds": seconds})

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        async with self._statements:
            await self._drop_connection()

    def _reuse(self, key: int) -> Slot | None:
        idle = self._idle.get(key)
        while idle:
            slot = idle.pop()
            if slot.generation == self._generation:
                return slot
        return None

    async def _park(self, slot: Slot) -> None:
        now = time.monotonic()
        if now - slot.taken_at >= self.keep_at_most_seconds:
            await self._release(slot)
            return
        slot.idle_since = now
        self._idle.setdefault(slot.key, []).append(slot)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        """Give slots nobody here used for a moment back to the database."""
        while any(self._idle.values()):
            await asyncio.sleep(self.keep_idle_seconds)
            now = time.monotonic()
            for key, idle in list(self._idle.items()):
                stale = [s for s in idle if now - s.idle_since >= self.keep_idle_seconds]
                self._idle[key] = [s for s in idle if s not in stale]
                for slot in stale:
                    await self._release(slot)

    async def _acquire(self, key: int, slots: int) -> Slot:
        # Polling other replicas' slots: the suite's back-off, from `poll_seconds` to 0.2 s.
        waits = Backoff(BackoffPolicy(self.poll_seconds, 0.2))
        while True:
            async with self._statements:
                conn = await self._connection()
                held = self._held.setdefault(key, set())
                try:
                    number = (
                        await conn.execute(
                            _TRY_SLOT, {"key": key, "slots": slots, "held": sorted(held)}
                        )
                    ).scalar()
                except Exception:
                    await self._drop_connection()
                    raise
                if number is not None:
                    held.add(int(number))
                    return Slot(key, int(number), self._generation, time.monotonic())
            # Every slot is held: by this process (which says when it frees one) or by other
            # replicas (poll, with jitter).
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), waits.next_delay())

    async def _release(self, slot: Slot) -> None:
        async with self._statements:
            if slot.generation != self._generation or self._conn is None:
                return  # that connection is gone, and its locks with it
            self._held.get(slot.key, set()).discard(slot.number)
            try:
                await self._conn.execute(_FREE_SLOT, {"key": slot.key, "slot": slot.number})
            except Exception:
                log.warning(
                    "releasing a vendor slot failed; dropping its connection", exc_info=True
                )
                await self._drop_connection()
            finally:
                self._freed.set()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self.slots_engine.connect()
            # Autocommit: the connection only holds advisory locks, never a snapshot.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._generation += 1
        self._held.clear()
        self._idle.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _reserve(self, account: str, windows: tuple[RateWindow, ...]) -> float:
        """Reserve a send time in every window of the account; seconds to wait for it."""
        names = {window_name(window): window for window in windows}
        async with self.engine.begin() as conn:
            await conn.execute(
                _ENSURE_WINDOWS, [{"account": account, "window": name} for name in names]
            )
            rows = (
                await conn.execute(_LOCK_WINDOWS, {"account": account, "windows": list(names)})
            ).all()
            now: datetime = rows[0].now
            logs = [(names[row.window], list(row.sent_at), row.blocked_until) for row in rows]
            at = next_send_time(now, logs)
            for row, (window, sent_at, _) in zip(rows, logs, strict=True):
                await conn.execute(
                    _LOG_SEND,
                    {
                        "account": account,
                        "window": row.window,
                        "sent_at": [*sent_at, at][-window.requests :],
                    },
                )
        return (at - now).total_seconds()
