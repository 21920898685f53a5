"""The metrics-worker's jobs, run by the job engine (segments_shared/jobs):

- `kpi_fold`: folds what changed into KPIs and RFM scores (metrics_worker/fold.py), due
  `metrics_debounce_seconds` after the first change not yet folded;
- `kpi_check`: asks the fold to recompute every segment from the orders themselves and
  repair any drift (metrics_worker/check.py), every `metrics_check_period_seconds` and on
  demand;
- `rfm`: scores every customer and keeps the boundaries (metrics_worker/rfm.py), every
  `rfm_period_seconds`, after bulk loads (debounced, with a ceiling) and on demand.

Only the fold writes KPIs (one fold at a time across replicas: one job), the full check
included.
"""

import logging
import time
import uuid

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metrics_worker import check, rfm
from metrics_worker.fold import Folded, fold_changes, kpi_transaction
from metrics_worker.settings import MetricsWorkerSettings
from segments_shared.backoff import BackoffPolicy
from segments_shared.changes import Changes, recording
from segments_shared.events import MetricsUpdated, MetricsUpdatedEvent
from segments_shared.jobs import store
from segments_shared.jobs.runner import JobKind, Lease, PeriodicJob, Release
from segments_shared.jobs.store import Claim
from segments_shared.kpis import kpis_of

log = logging.getLogger(__name__)

SOURCE = "metrics-worker"

KPI_UPDATES = Counter("segments_kpi_updates", "Segment KPI updates announced (metrics.updated)")
# Each kind is one job, keyed ALL in its queue.
ALL = PeriodicJob.KEY
# A fold that scores this many customers is a bulk load: the boundaries follow.
BULK_CUSTOMERS = 1_000
# A fold that stores this many customers' figures for the first time refreshes the planner's
# statistics of them.
ANALYZE_AFTER = 50_000

_KPI_ROWS = text("SELECT * FROM segment_kpis WHERE segment_id = ANY(:ids)")
_RFM_SIGNAL = text("INSERT INTO segment_refresh_signals (kind, customer_ids) VALUES ('rfm', :ids)")
_PENDING = text("SELECT EXISTS (SELECT 1 FROM metrics_changes)")
# A segment without figures and without a pending change (its figures were lost, or it was
# made behind the API's back) is computed whole: every segment gets figures.
_UNCOMPUTED = text(
    """
    INSERT INTO metrics_changes (segment_id, whole)
    SELECT s.id, true FROM segments s
    WHERE NOT EXISTS (SELECT 1 FROM segment_kpis k WHERE k.segment_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM metrics_changes c WHERE c.segment_id = s.id)
    ORDER BY s.id
    """
)


async def fold_once(conn: AsyncConnection, changes: Changes) -> Folded:
    """One fold in the caller's REPEATABLE READ transaction, with its consequences: RFM
    scores of the changed customers, rule signals for those whose scores moved, and
    `metrics.updated` for every segment that moved."""
    folded = await fold_changes(conn)
    rescored = await rfm.score_changed(conn, folded.changed)
    if rescored:
        await conn.execute(_RFM_SIGNAL, {"ids": rescored})
    await announce(conn, changes, folded.segments, folded.correlations)
    return folded


async def announce(
    conn: AsyncConnection,
    changes: Changes,
    segment_ids: list[uuid.UUID],
    correlations: dict[uuid.UUID, str],
) -> None:
    if not segment_ids:
        return
    for row in (await conn.execute(_KPI_ROWS, {"ids": segment_ids})).mappings():
        segment_id = row["segment_id"]
        KPI_UPDATES.inc()
        changes.publish(
            MetricsUpdatedEvent(
                source=SOURCE,
                subject=str(segment_id),
                correlationid=correlations.get(segment_id),
                data=MetricsUpdated(segment_id=segment_id, metrics=kpis_of(dict(row))),
            )
        )


class KpiFold(JobKind):
    queue = "kpi_fold"
    lease_seconds = 60.0
    retry_policy = BackoffPolicy(base=0.05, cap=2.0)

    def __init__(self, engine: AsyncEngine, settings: MetricsWorkerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._started = False
        self._looked_at = 0.0

    async def prepare(self, engine: AsyncEngine) -> float | None:
        """Ask for a fold when changes wait: looked for at most once per debounce (a fold is
        not due sooner anyway), however often events wake the runner."""
        debounce = self.settings.metrics_debounce_seconds
        since = time.monotonic() - self._looked_at
        if since < debounce:
            return debounce - since
        self._looked_at = time.monotonic()
        async with engine.begin() as conn:
            if not self._started:
                await conn.execute(_UNCOMPUTED)
                self._started = True
            if (await conn.execute(_PENDING)).scalar():
                await store.request(
                    conn,
                    self.queue,
                    ALL,
                    delay=self.settings.metrics_debounce_seconds,
                    notify=False,
                )
        return None

    async def work(self, job: Claim, lease: Lease) -> None:
        try:
            async with kpi_transaction(self.engine) as conn, recording(conn, SOURCE) as changes:
                folded = await fold_once(conn, changes)
            if job.payload.get("check"):
                # In this job, so that checks and folds take turns (each checked segment
                # folds what is pending first).
                await check.check_every_segment(self.engine, lease, fold_once, SOURCE)
        except DBAPIError as exc:
            if not isinstance(exc.orig, Exception) or "serialize" not in str(exc.orig):
                raise
            # A full RFM computation rewrote rows this fold's snapshot read: fold again.
            raise Release("serialization failure", delay=0.05) from exc
        if folded.taken:
            log.debug(
                "changes folded",
                extra={"changes": folded.taken, "segments": len(folded.segments)},
            )
        if len(folded.changed) >= BULK_CUSTOMERS:
            async with self.engine.begin() as conn:
                await request_rfm(conn, self.settings)
        if folded.filled >= ANALYZE_AFTER:
            # The next folds' plans need the table's size now (after install it was empty:
            # estimates of one row made each fold scan it whole); autovacuum may be minutes
            # behind under load.
            async with self.engine.begin() as conn:
                await conn.execute(text("ANALYZE customer_kpi_parts"))


async def request_rfm(conn: AsyncConnection, settings: MetricsWorkerSettings) -> None:
    """Score everyone again soon: after a bulk load, debounced, never later than the
    ceiling after the first request."""
    await store.request(
        conn,
        RfmFull.queue,
        ALL,
        delay=settings.rfm_debounce_seconds,
        ceiling=settings.rfm_max_delay_seconds,
        notify=False,
    )


class KpiCheck(PeriodicJob):
    queue = "kpi_check"
    lease_seconds = 120.0

    def __init__(self, engine: AsyncEngine, settings: MetricsWorkerSettings) -> None:
        super().__init__(settings.metrics_check_period_seconds)
        self.engine = engine

    async def work(self, job: Claim, lease: Lease) -> None:
        async with self.engine.begin() as conn:
            await store.request(conn, KpiFold.queue, ALL, payload={"check": True}, notify=False)


class RfmFull(PeriodicJob):
    queue = "rfm"
    lease_seconds = 600.0
    retry_policy = BackoffPolicy(base=5.0, cap=300.0)

    def __init__(self, engine: AsyncEngine, settings: MetricsWorkerSettings) -> None:
        super().__init__(settings.rfm_period_seconds)
        self.engine = engine

    async def work(self, job: Claim, lease: Lease) -> None:
        async with self.engine.begin() as conn:
            changed = await rfm.recompute_rfm(conn)
            # Everyone may have moved: rules on RFM scores refresh whole.
            await conn.execute(_RFM_SIGNAL, {"ids": None})
        log.info(
            "RFM recomputed",
            extra={
                "inserted": changed.inserted,
                "updated": changed.updated,
                "deleted": changed.deleted,
            },
        )


def kinds(engine: AsyncEngine, settings: MetricsWorkerSettings) -> list[JobKind]:
    return [KpiFold(engine, settings), KpiCheck(engine, settings), RfmFull(engine, settings)]
