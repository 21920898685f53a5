"""The background refresher of rule segments, one per segment-api process.

segment-api owns segments and is where customers and orders change, so it runs the
refreshes; replicas share the queue safely (`rules/queue.py`): each pass folds new change
signals into debounced refreshes, schedules rules whose truth moved with time or with the
RFM scores, then claims due refreshes one at a time and runs them.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.rules import queue
from segment_api.rules.refresh import refresh_segment
from segment_api.rules.settings import RefreshSettings
from segments_shared.observability import correlation_id_var, new_correlation_id

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0

REFRESHED = Counter(
    "segments_rule_refreshes", "Rule-segment recomputations, by outcome", ["outcome"]
)
REFRESH_SECONDS = Histogram(
    "segments_rule_refresh_seconds",
    "Time to recompute a rule segment's membership",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)


class RuleRefresher:
    def __init__(self, engine: AsyncEngine, settings: RefreshSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.worker = f"segment-api-{uuid.uuid4().hex[:12]}"
        # Set after the first pass: start-up waits for it briefly, so segments never
        # computed (the default segments after the migration) are right from the start.
        self.first_pass = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    await self.run_once()
                except Exception:
                    log.exception("rule refresher pass failed; retrying")
                self.first_pass.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), self.settings.rule_refresh_poll_seconds
                    )
        finally:
            self.first_pass.set()

    async def run_once(self) -> int:
        """One pass: fold signals, schedule, then refresh every due segment; returns how
        many segments were refreshed."""
        async with self.engine.begin() as conn:
            await queue.fold_signals(conn, self.settings.rule_refresh_debounce_seconds)
            await queue.schedule_due(conn, self.settings.rule_refresh_period_seconds)
        refreshed = 0
        while not self._stopping:
            async with self.engine.begin() as conn:
                claims = await queue.claim(
                    conn, self.worker, limit=1, lease=self.settings.rule_refresh_lease_seconds
                )
            if not claims:
                break
            refreshed += await self._refresh(claims[0])
        return refreshed

    async def _refresh(self, claimed: queue.Claim) -> bool:
        correlation_id_var.set(new_correlation_id())
        started = time.perf_counter()
        try:
            async with self.engine.begin() as conn:
                done = await refresh_segment(conn, claimed, self.worker)
        except asyncio.CancelledError:
            # Stopping mid-refresh: the transaction rolled back; give the claim back now
            # rather than after the lease, so another replica takes it at once.
            await asyncio.shield(self._release(claimed.segment_id))
            raise
        except Exception:
            log.exception(
                "rule refresh failed; retrying later",
                extra={"segment_id": str(claimed.segment_id)},
            )
            REFRESHED.labels("failed").inc()
            async with self.engine.begin() as conn:
                await queue.retry(conn, claimed, self.worker, after=RETRY_SECONDS)
            return False
        REFRESH_SECONDS.observe(time.perf_counter() - started)
        REFRESHED.labels("done" if done else "skipped").inc()
        return done

    async def _release(self, segment_id: uuid.UUID) -> None:
        with contextlib.suppress(Exception):
            async with self.engine.begin() as conn:
                await queue.release_claims(conn, self.worker, [segment_id])


def wake_refresher(app: Any) -> None:
    """After a request queued a refresh due now (run once its transaction committed)."""
    refresher: RuleRefresher | None = getattr(app.state, "refresher", None)
    if refresher is not None:
        refresher.wake()
