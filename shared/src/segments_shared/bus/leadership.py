"""Which relay publishes the outbox: one at a time, the holder of a session advisory lock on a
connection kept for it. The lock goes with the connection, so a leader whose process dies
frees it at once and a standby takes over within its next try.

segment-api's relay prefers to stand by: its process serves requests, and a relay sharing an
event loop with them falls behind under load (publishes wait for the loop, time out, and go
again). A worker's relay holds a second lock shared ("a candidate is here"); a preferring
leader that finds one resigns, and a preferring standby does not try while one is present.
"""

import logging
import time

import asyncpg
from sqlalchemy.engine import URL

from segments_shared.db.engine import asyncpg_dsn

log = logging.getLogger(__name__)

LEADER = "segments.outbox_relay"
CANDIDATES = "segments.outbox_relay.candidates"
# How often a preferring leader looks for a candidate to hand over to.
HANDOVER_CHECK_SECONDS = 2.0


class Leadership:
    def __init__(self, url: str | URL, name: str, *, prefer_standby: bool = False) -> None:
        self.url = url
        self.name = name
        self.prefer_standby = prefer_standby
        self._conn: asyncpg.Connection | None = None
        self._leading = False
        self._checked_at = 0.0

    @property
    def leading(self) -> bool:
        return self._leading and self._conn is not None and not self._conn.is_closed()

    async def hold(self) -> bool:
        """Whether this relay leads now: keeps the lead, takes it if free, hands it over."""
        conn = await self._connection()
        if self.leading:
            if self.prefer_standby and await self._candidate_waiting(conn):
                await conn.fetchval("SELECT pg_advisory_unlock(hashtext($1))", LEADER)
                self._leading = False
                log.info("relay hands the outbox over to a worker's", extra={"relay": self.name})
            return self._leading
        if self.prefer_standby and await self._candidate_waiting(conn, now=True):
            return False
        self._leading = bool(
            await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LEADER)
        )
        if self._leading:
            log.info("relay leads: publishing the outbox", extra={"relay": self.name})
        return self._leading

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._leading = False
            self._conn = await asyncpg.connect(asyncpg_dsn(self.url), timeout=10)
            if not self.prefer_standby:
                await self._conn.fetchval(
                    "SELECT pg_advisory_lock_shared(hashtext($1))", CANDIDATES
                )
        return self._conn

    async def _candidate_waiting(self, conn: asyncpg.Connection, *, now: bool = False) -> bool:
        if not now and time.monotonic() - self._checked_at < HANDOVER_CHECK_SECONDS:
            return False
        self._checked_at = time.monotonic()
        free = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", CANDIDATES))
        if free:
            await conn.fetchval("SELECT pg_advisory_unlock(hashtext($1))", CANDIDATES)
        return not free

    async def close(self) -> None:
        conn, self._conn, self._leading = self._conn, None, False
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:  # the connection is going away either way
                log.debug("closing the relay's lock connection failed", exc_info=True)
