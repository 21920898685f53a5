"""The vendor limiter kept in one process, for connectors under test without PostgreSQL.

It follows the worker's `sync_worker.limiter.VendorLimiter` within the process: at most
`concurrency` requests of an account at once, every rate window of the account a sliding log
of send times (`next_send_time` picks each request's), and a vendor's wait holding the
account's windowed requests back. It also records what the tests look at: the waits the
vendor asked for and the most requests an account had out at once.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sync_worker.connectors.base import Capabilities, RateWindow
from sync_worker.limiter import next_send_time


class MemoryLimiter:
    def __init__(self) -> None:
        self.pauses: list[tuple[str, float]] = []
        self.most_in_flight: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._sent: dict[tuple[str, RateWindow], list[datetime]] = {}
        self._blocked_until: dict[str, datetime] = {}

    @contextlib.asynccontextmanager
    async def request(self, account: str, capabilities: Capabilities) -> AsyncIterator[None]:
        slots = self._slots.setdefault(account, asyncio.Semaphore(capabilities.concurrency))
        async with slots:
            await self._reserve(account, capabilities.rate_windows)
            self._in_flight[account] += 1
            self.most_in_flight[account] = max(
                self.most_in_flight[account], self._in_flight[account]
            )
            try:
                yield
            finally:
                self._in_flight[account] -= 1

    async def pause(self, account: str, seconds: float) -> None:
        self.pauses.append((account, seconds))
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        self._blocked_until[account] = max(until, self._blocked_until.get(account, until))

    async def _reserve(self, account: str, windows: tuple[RateWindow, ...]) -> None:
        if not windows:
            return  # as in PostgreSQL: a vendor's wait is kept with the account's windows
        now = datetime.now(UTC)
        logs = [(window, self._sent.setdefault((account, window), [])) for window in windows]
        blocked = self._blocked_until.get(account)
        at = next_send_time(now, [(window, sent, blocked) for window, sent in logs])
        for window, sent in logs:
            sent.append(at)
            del sent[: -window.requests]
        await asyncio.sleep((at - now).total_seconds())
