"""Folding staleness marks into KPI recomputations, shared safely between replicas.

A segment's mark is claimed with a short lease (`FOR UPDATE SKIP LOCKED`, committed at once so
the API never waits on a long computation); the recomputation then writes the figures, the
`metrics.updated` event and clears the mark in one transaction, unless a change arrived
meanwhile (the generation moved): then the mark stays and the segment is computed again.
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

RECOMPUTED = Counter("segments_kpi_recomputations", "Segment KPI recomputations")
RECOMPUTE_SECONDS = Histogram(
    "segments_kpi_recompute_seconds",
    "Time to recompute one segment's KPIs",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)

_CLAIM = text(
    """
    UPDATE metrics_dirty_segments d
    SET claimed_until = now() + make_interval(secs => :lease), claimed_by = :worker
    WHERE d.segment_id IN (
        SELECT segment_id FROM metrics_dirty_segments
        WHERE (claimed_until IS NULL OR claimed_until < now())
          AND marked_at <= now() - make_interval(secs => :debounce)
        ORDER BY marked_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING d.segment_id, d.generation
    """
)
_NEXT_DUE = text(
    """
    SELECT extract(epoch FROM min(marked_at) + make_interval(secs => :debounce) - now())
    FROM metrics_dirty_segments
    WHERE claimed_until IS NULL OR claimed_until < now()
    """
)
_CLEAR = text(
    "DELETE FROM metrics_dirty_segments WHERE segment_id = :segment_id AND generation = :generation"
)
_RELEASE = text(
    "UPDATE metrics_dirty_segments SET claimed_until = NULL, claimed_by = NULL "
    "WHERE segment_id = :segment_id"
)
_LOCK_SEGMENT = text("SELECT 1 FROM segments WHERE id = :segment_id FOR KEY SHARE")


@dataclass(frozen=True)
class Claim:
    segment_id: uuid.UUID
    generation: int


async def claim_stale_segments(
    engine: AsyncEngine, worker: str, *, limit: int, debounce: float
) -> list[Claim]:
    async with engine.begin() as conn:
        rows = await conn.execute(
            _CLAIM, {"lease": LEASE_SECONDS, "worker": worker, "limit": limit, "debounce": debounce}
        )
        return [Claim(row.segment_id, row.generation) for row in rows]


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
        await conn.execute(_RELEASE, {"segment_id": claim.segment_id})
    await add_event(
        conn,
        MetricsUpdatedEvent(
            source=SOURCE,
            subject=str(claim.segment_id),
            data=MetricsUpdated(segment_id=claim.segment_id, metrics=kpis.as_event()),
        ),
    )
    return True


class KpiRecomputer:
    """Runs until stopped: wakes on events or when the next mark's debounce ends."""

    def __init__(
        self, engine: AsyncEngine, worker: str, *, debounce: float, concurrency: int
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.debounce = debounce
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                claims = await claim_stale_segments(
                    self.engine, self.worker, limit=self.concurrency, debounce=self.debounce
                )
                if claims:
                    await asyncio.gather(*(self._recompute(claim) for claim in claims))
                    continue
                delay = await self._next_due()
            except Exception:
                log.exception("KPI recomputation loop failed; retrying")
                delay = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _next_due(self) -> float:
        async with self.engine.connect() as conn:
            seconds = (await conn.execute(_NEXT_DUE, {"debounce": self.debounce})).scalar()
        if seconds is None:
            return 1.0  # nothing marked: poll now and then in case a wake-up was missed
        return min(1.0, max(0.01, float(seconds)))

    async def _recompute(self, claim: Claim) -> None:
        started = time.perf_counter()
        try:
            async with self.engine.begin() as conn:
                done = await recompute_segment_kpis(conn, claim)
        except Exception:
            log.exception("KPI recomputation failed", extra={"segment_id": str(claim.segment_id)})
            async with self.engine.begin() as conn:
                await conn.execute(_RELEASE, {"segment_id": claim.segment_id})
            return
        elapsed = time.perf_counter() - started
        RECOMPUTE_SECONDS.observe(elapsed)
        RECOMPUTED.inc()
        if done:
            log.info(
                "KPIs recomputed",
                extra={"segment_id": str(claim.segment_id), "seconds": round(elapsed, 3)},
            )
