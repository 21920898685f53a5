"""Sync runs as jobs of the job engine (segments_shared/jobs): claimed a few at a time with
their segment and destination held, carried out under a lease the runner renews (so a run
outlasts the broker's consumer timeout, and a worker that dies leaves its run to another),
and ended by what happened:

- finished (succeeded, partial, failed): the run's own row says so; the job goes;
- deferred (a promotion whose production store is syncing): given back for later, not an
  attempt;
- interrupted by a stop (SIGTERM): given back at a batch boundary, not an attempt;
- its lease lost, or the run deleted with its segment or destination: nothing more;
- an unexpected error: retried after a back-off, the error kept on the job, and counted:
  after `runs.MAX_ATTEMPTS` claims the run fails.
"""

import logging
import uuid

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.db.engine import create_session_engine
from segments_shared.db.types import AnyRow
from segments_shared.jobs.runner import JobKind, JobRunner, Lease, LeaseLost, Release
from segments_shared.jobs.store import Claim
from segments_shared.observability import correlation_id_var
from segments_shared.secrets import SecretBox
from sync_worker import runs
from sync_worker.connectors.http import RetryPolicy
from sync_worker.execution import DEFER_SECONDS, Deferred, Execution, Interrupted, execute_run
from sync_worker.limiter import VendorLimiter
from sync_worker.settings import SyncWorkerSettings
from sync_worker.subscriptions import Subscriptions

log = logging.getLogger(__name__)

RUNS_ACTIVE = Gauge("segments_sync_runs_active", "Sync runs this worker is carrying out")
RUNS_ENDED = Counter("segments_sync_runs_handled", "Sync runs handled, by outcome", ["outcome"])
# Present from the start: an alert on `increase()` misses a series' first sample.
for _outcome in ("finished", "deferred", "handed_over", "error", "deleted"):
    RUNS_ENDED.labels(_outcome)


class SyncRuns(JobKind):
    queue = runs.QUEUE
    claim_filter = runs.CLAIM_FILTER
    retry_policy = BackoffPolicy(base=1.0, cap=30.0)

    def __init__(
        self,
        engine: AsyncEngine,
        settings: SyncWorkerSettings,
        secret_box: SecretBox | None,
        worker: str,
    ) -> None:
        self.engine = engine
        self.secret_box = secret_box
        self.worker = worker
        self.lease_seconds = settings.sync_lease_seconds
        self.concurrency = settings.sync_concurrency
        self.policy = RetryPolicy(
            attempts=settings.sync_retry_attempts,
            base_seconds=settings.sync_retry_base_seconds,
            cap_seconds=settings.sync_retry_cap_seconds,
        )
        self._slots_engine = create_session_engine(settings)
        self.limiter = VendorLimiter(engine, slots_engine=self._slots_engine)
        self.timeout = httpx.Timeout(settings.sync_request_timeout_seconds, connect=10.0)
        self.allow = settings.destination_allow_list

    async def claimed(self, conn: AsyncConnection, jobs: list[Claim]) -> None:
        await runs.mark_running(conn, jobs)

    async def work(self, job: Claim, lease: Lease) -> None:
        async with self.engine.connect() as conn:
            run = await runs.load_run(conn, uuid.UUID(job.key))
        if run is None:
            return  # deleted with its segment or destination since the claim
        token = correlation_id_var.set(run.correlation_id)
        RUNS_ACTIVE.inc()
        execution = Execution(
            engine=self.engine,
            run=run,
            job=job,
            worker=self.worker,
            should_stop=lambda: self.stopping() or lease.lost,
        )
        log.info("sync run started", extra={"sync_id": str(run.id), "attempt": job.attempts})
        try:
            await self._carry_out(execution, lease)
        finally:
            RUNS_ACTIVE.dec()
            correlation_id_var.reset(token)

    async def _carry_out(self, execution: Execution, lease: Lease) -> None:
        run = execution.run
        try:
            await execute_run(
                execution, self.secret_box, self.timeout, self.policy, self.limiter, self.allow
            )
            RUNS_ENDED.labels("finished").inc()
        except runs.RunDeleted as exc:
            self._ended_deleted(run, exc.cause)
        except Deferred as exc:
            RUNS_ENDED.labels("deferred").inc()
            log.info("sync run deferred", extra={"sync_id": str(run.id), "reason": str(exc)})
            raise Release(str(exc), delay=DEFER_SECONDS) from exc
        except (Interrupted, LeaseLost) as exc:
            # A renewal that found no row stops the run too: deleted, not handed over.
            if (cause := await self._deleted_with(run)) is not None:
                self._ended_deleted(run, cause)
                return
            RUNS_ENDED.labels("handed_over").inc()
            if lease.lost or isinstance(exc, LeaseLost):
                raise LeaseLost(str(run.id)) from exc
            # Stopping (SIGTERM) is a graceful hand-over, which does not count as an attempt.
            log.info("sync run handed over", extra={"sync_id": str(run.id)})
            raise Release("the worker is stopping") from exc
        except Exception as exc:
            if (cause := await self._deleted_with(run)) is not None:
                # A write that met the deletion some way `hold_target` does not foresee.
                self._ended_deleted(run, cause, error=exc)
                return
            RUNS_ENDED.labels("error").inc()
            raise  # retried after a back-off, the error kept on the job

    async def _deleted_with(self, run: AnyRow) -> str | None:
        """What the run was deleted with, if it was; None if it is there or we cannot tell
        (the database is away: the caller's handling stands)."""
        try:
            async with self.engine.connect() as conn:
                return await runs.deleted_with(conn, run)
        except Exception:
            log.warning("checking whether a sync run was deleted failed", exc_info=True)
            return None

    @staticmethod
    def _ended_deleted(run: AnyRow, cause: str, error: BaseException | None = None) -> None:
        """The run went with its destination or segment (the foreign keys cascade, the job
        with it): nobody resumes or finishes it, and there is nothing to hand back."""
        RUNS_ENDED.labels("deleted").inc()
        extra: dict[str, str] = {"sync_id": str(run.id), "deleted_with": cause}
        if error is not None:
            extra["error"] = repr(error)
        log.info("sync run ended: its %s was deleted", cause, extra=extra)

    async def aclose(self) -> None:
        await self.limiter.aclose()
        if self._slots_engine is not None:
            await self._slots_engine.dispose()


def sync_runner(
    engine: AsyncEngine, settings: SyncWorkerSettings, secret_box: SecretBox | None, worker: str
) -> tuple[JobRunner, SyncRuns]:
    """The runner of sync runs; it polls too: an expired lease is announced by nothing."""
    kind = SyncRuns(engine, settings, secret_box, worker)
    # Subscriptions request runs, so they live beside them (sync_worker/subscriptions.py).
    subscriptions = Subscriptions(engine, settings, worker)
    runner = JobRunner(engine, worker, [kind, subscriptions], poll_seconds=2.0, name="sync runs")
    return runner, kind
