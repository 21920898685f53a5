"""One LISTEN connection per process, waking whoever waits for a channel.

PostgreSQL delivers a NOTIFY at the commit of the transaction that sent it, so a woken loop
finds the rows that caused it. Notifications sent while the connection was down are lost:
every callback is called once the connection is back, and loops poll as a fallback.
"""

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import URL

from segments_shared.db.engine import asyncpg_dsn
from segments_shared.loop import Trouble, WorkerLoop

log = logging.getLogger(__name__)

Callback = Callable[[str], None]


class Listener(WorkerLoop):
    def __init__(self, url: str | URL, name: str = "notifications") -> None:
        super().__init__(name, poll_seconds=1.0)
        self.url = url
        self._callbacks: dict[str, list[Callback]] = {}
        self.connected = asyncio.Event()

    def on(self, channel: str, callback: Callback) -> None:
        """Call `callback(payload)` for every notification on `channel`."""
        self._callbacks.setdefault(channel, []).append(callback)

    def _dispatch(self, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("notification callback failed", extra={"channel": channel})

    async def step(self) -> float | None:
        conn = await asyncpg.connect(asyncpg_dsn(self.url), timeout=10)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            for channel in self._callbacks:
                await conn.add_listener(
                    channel, lambda _c, _pid, ch, payload: self._dispatch(ch, payload)
                )
            self.connected.set()
            for channel in self._callbacks:
                self._dispatch(channel, "")  # what was sent while we were not listening
            stop = asyncio.ensure_future(self.stopping_event.wait())
            gone = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                gone.cancel()
            if lost.is_set() and not self.stopping:
                raise Trouble("LISTEN connection lost")
            return None
        finally:
            self.connected.clear()
            if not conn.is_closed():
                await conn.close(timeout=5)
