"""Folding staleness marks into KPI recomputations, shared safely between replicas.

segment-api marks a segment stale (`metrics_dirty_segments`) in the transaction of each change
that affects its KPIs; each mark bumps the generation and, through a trigger, `changed_at`,
while `marked_at` keeps the first change not yet folded in. A mark is due once its changes have
paused for the debounce, or once its first change is `max_delay` old, so a burst of changes
folds into few recomputations and a steady stream cannot postpone them forever.

A due mark is claimed with a short lease (`FOR UPDATE SKIP LOCKED`, committed at once so the
API never waits on a long computation); the recomputation then writes the figures, the
`metrics.updated` event and clears the mark in one transaction, unless a change arrived
meanwhile (the generation moved): then the mark stays, due again from this computation's
start, and the segment is computed again.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker.kpis import compute_segment_kpis
from segments_shared.bus.outbox import add_event
from segments_shared.db.models import SegmentKpis
from segments_shared.events import MetricsUpdated, MetricsUpdatedEvent

log = logging.getLogger(__name__)

SOURCE = "metrics-worker"
LEASE_SECONDS = 120
IDLE_POLL_SECONDS = 1.0
RETRY_SECONDS = 5.0

RECOMPUTED = Counter("segments_kpi_recomputations", "Segment KPI recomputations")
RECOMPUTE_SECONDS = Histogram(
    "segments_kpi_recompute_seconds",
    "Time to recompute one segment's KPIs",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)

_DUE = """
    (claimed_until IS NULL OR claimed_until < now())
    AND (changed_at <= now() - make_interval(secs => :debounce)
         OR marked_at <= now() - make_interval(secs => :max_delay))
"""
_CLAIM = text(
    f"""
    UPDATE metrics_dirty_segments d
    SET claimed_until = now() + make_interval(secs => :lease), claimed_by = :worker
    WHERE d.segment_id IN (
        SELECT segment_id FROM metrics_dirty_segments
        WHERE {_DUE}
        ORDER BY marked_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING d.segment_id, d.generation, d.correlation_id
    """
)
_NEXT_DUE = text(
    """
    SELECT extract(epoch FROM min(least(
        changed_at + make_interval(secs => :debounce),
        marked_at + make_interval(secs => :max_delay)
    )) - now())
    FROM metrics_dirty_segments
    WHERE claimed_until IS NULL OR claimed_until < now()
    """
)
_CLEAR = text(
    "DELETE FROM metrics_dirty_segments WHERE segment_id = :segment_id AND generation = :generation"
)
# The changes this computation missed came after its start: the mark is due again from there.
# The correlation id it announced goes, unless a later change brought another.
_KEEP = text(
    """
    UPDATE metrics_dirty_segments
    SET claimed_until = NULL, claimed_by = NULL, marked_at = now(),
        correlation_id = CASE WHEN correlation_id IS NOT DISTINCT FROM :correlation_id
                              THEN NULL ELSE correlation_id END
    WHERE segment_id = :segment_id
    """
)
# After a failure the mark waits a little, so that a failing segment does not spin.
_RETRY_LATER = text(
    "UPDATE metrics_dirty_segments "
    "SET claimed_until = now() + make_interval(secs => :retry), claimed_by = NULL "
    "WHERE segment_id = :segment_id"
)
_LOCK_SEGMENT = text("SELECT 1 FROM segments WHERE id = :segment_id FOR KEY SHARE")
# A segment without figures and without a mark (created before the worker ever ran, such as the
# default segments of the first migration) is marked, so that every segment gets computed.
_MARK_UNCOMPUTED = text(
    """
    INSERT INTO metrics_dirty_segments (segment_id)
    SELECT s.id FROM segments s
    WHERE NOT EXISTS (SELECT 1 FROM segment_kpis k WHERE k.segment_id = s.id)
    ORDER BY s.id
    ON CONFLICT (segment_id) DO NOTHING
    """
)


@dataclass(frozen=True)
class Claim:
    segment_id: uuid.UUID
    generation: int
    # Of the latest change folded in that came from a request: `metrics.updated` carries it.
    correlation_id: str | None = None


@dataclass(frozen=True)
class Folding:
    """When a stale segment is due: its changes paused for `debounce` seconds, or its first
    unfolded change is `max_delay` seconds old."""

    debounce: float
    max_delay: float

    def params(self) -> dict[str, float]:
        return {"debounce": self.debounce, "max_delay": self.max_delay}


async def claim_stale_segments(
    engine: AsyncEngine, worker: str, *, limit: int, folding: Folding
) -> list[Claim]:
    async with engine.begin() as conn:
        rows = await conn.execute(
            _CLAIM, {"lease": LEASE_SECONDS, "worker": worker, "limit": limit, **folding.params()}
        )
        return [Claim(row.segment_id, row.generation, row.correlation_id) for row in rows]


async def seconds_until_due(engine: AsyncEngine, folding: Folding) -> float | None:
    """Until the next unclaimed mark is due (negative if overdue); None without marks."""
    async with engine.connect() as conn:
        seconds = (await conn.execute(_NEXT_DUE, folding.params())).scalar()
    return None if seconds is None else float(seconds)


async def mark_uncomputed_segments(conn: AsyncConnection) -> int:
    return int((await conn.execute(_MARK_UNCOMPUTED)).rowcount or 0)


async def recompute_segment_kpis(conn: AsyncConnection, claim: Claim) -> bool:
    """Recompute, store and announce one segment's KPIs; False if the segment is gone."""
    if (await conn.execute(_LOCK_SEGMENT, {"segment_id": claim.segment_id})).first() is None:
        return False
    kpis = await compute_segment_kpis(conn, claim.segment_id)
    values = {
        "customers": kpis.customers,
        "reachable_customers": kpis.reachable_customers,
        "total_revenue": kpis.total_revenue,
        "total_orders": kpis.total_orders,
        "average_order_value": kpis.average_order_value,
        "customer_lifetime_value": kpis.customer_lifetime_value,
        "order_latency_days": kpis.order_latency_days,
        "computed_at": kpis.computed_at,
    }
    statement = insert(SegmentKpis).values(segment_id=claim.segment_id, **values)
    await conn.execute(
        statement.on_conflict_do_update(index_elements=[SegmentKpis.segment_id], set_=values)
    )
    cleared = await conn.execute(
        _CLEAR, {"segment_id": claim.segment_id, "generation": claim.generation}
    )
    if not cleared.rowcount:
        await conn.execute(
            _KEEP, {"segment_id": claim.segment_id, "correlation_id": claim.correlation_id}
        )
    await add_event(
        conn,
        MetricsUpdatedEvent(
            source=SOURCE,
            subject=str(claim.segment_id),
            correlationid=claim.correlation_id,
            data=MetricsUpdated(segment_id=claim.segment_id, metrics=kpis.as_event()),
        ),
    )
    return True


class KpiRecomputer:
    """Runs until stopped: up to `concurrency` recomputations at once, each started as soon as
    a mark is due; wakes on events, on a finished recomputation or when the next mark is due."""

    def __init__(
        self, engine: AsyncEngine, worker: str, *, folding: Folding, concurrency: int
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.folding = folding
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        await self._mark_uncomputed()
        while not self._stopping.is_set():
            self._wake.clear()
            delay = await self._start_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        if self._running:
            await asyncio.wait(self._running)

    async def _start_due(self) -> float:
        """Start recomputing what is due; returns how long to sleep unless woken."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return IDLE_POLL_SECONDS  # a finishing recomputation wakes the loop
        try:
            claims = await claim_stale_segments(
                self.engine, self.worker, limit=free, folding=self.folding
            )
            for claim in claims:
                task = asyncio.create_task(self._recompute(claim))
                self._running.add(task)
                task.add_done_callback(self._finished)
            if claims:
                return 0.0  # claim again while slots are free
            seconds = await seconds_until_due(self.engine, self.folding)
        except Exception:
            log.exception("KPI recomputation loop failed; retrying")
            return 1.0
        if seconds is None:
            return IDLE_POLL_SECONDS  # nothing marked: poll in case a wake-up was missed
        return min(IDLE_POLL_SECONDS, max(0.01, seconds))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _mark_uncomputed(self) -> None:
        try:
            async with self.engine.begin() as conn:
                marked = await mark_uncomputed_segments(conn)
        except Exception:
            log.exception("could not mark segments without KPIs; they wait for a change")
            return
        if marked:
            log.info("marked segments without KPIs", extra={"segments": marked})

    async def _recompute(self, claim: Claim) -> None:
        started = time.perf_counter()
        try:
            async with self.engine.begin() as conn:
                done = await recompute_segment_kpis(conn, claim)
        except Exception:
            log.exception("KPI recomputation failed", extra={"segment_id": str(claim.segment_id)})
            with contextlib.suppress(Exception):
                async with self.engine.begin() as conn:
                    await conn.execute(
                        _RETRY_LATER, {"segment_id": claim.segment_id, "retry": RETRY_SECONDS}
                    )
            return
        elapsed = time.perf_counter() - started
        RECOMPUTE_SECONDS.observe(elapsed)
        RECOMPUTED.inc()
        if done:
            log.info(
                "KPIs recomputed",
                extra={"segment_id": str(claim.segment_id), "seconds": round(elapsed, 3)},
            )
