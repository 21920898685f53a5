"""Claiming sync runs and carrying them out, a few at a time, each under a renewed lease."""

import asyncio
import contextlib
import logging
import uuid
from functools import partial

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.db.types import AnyRow
from segments_shared.observability import correlation_id_var
from segments_shared.secrets import SecretBox
from sync_worker import runs
from sync_worker.connectors.http import RetryPolicy
from sync_worker.execution import DEFER_SECONDS, Deferred, Execution, Interrupted, execute_run
from sync_worker.limiter import VendorLimiter
from sync_worker.settings import SyncWorkerSettings

log = logging.getLogger(__name__)

RUNS_ACTIVE = Gauge("segments_sync_runs_active", "Sync runs this worker is carrying out")
RUNS_ENDED = Counter("segments_sync_runs_handled", "Sync runs handled, by outcome", ["outcome"])


class SyncRunner:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: SyncWorkerSettings,
        secret_box: SecretBox | None,
        worker: str,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.secret_box = secret_box
        self.worker = worker
        self.policy = RetryPolicy(
            attempts=settings.sync_retry_attempts,
            base_seconds=settings.sync_retry_base_seconds,
            cap_seconds=settings.sync_retry_cap_seconds,
        )
        self.limiter = VendorLimiter(engine)
        self.timeout = httpx.Timeout(settings.sync_request_timeout_seconds, connect=10.0)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._active: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._lost: set[uuid.UUID] = set()

    @property
    def active_runs(self) -> int:
        return len(self._active)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._claim_runs()
            except Exception:
                log.exception("claiming sync runs failed; retrying")
            # Poll too: an expired lease is not announced by any event.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 2.0)
        if self._active:
            await asyncio.wait(list(self._active.values()), timeout=20)
        await self.limiter.aclose()

    async def _claim_runs(self) -> None:
        while len(self._active) < self.settings.sync_concurrency and not self._stopping.is_set():
            run = await runs.claim_next_run(
                self.engine, self.worker, self.settings.sync_lease_seconds, self._active
            )
            if run is None:
                return
            if run.id in self._active:
                # Our own run, whose lease ran out before a renewal got through: the claim
                # renewed it (without counting an attempt); the run carries on where it is.
                continue
            task = asyncio.create_task(self._carry_out(run), name=f"sync-{run.id}")
            self._active[run.id] = task
            task.add_done_callback(partial(self._done, run.id))

    def _done(self, run_id: uuid.UUID, _task: asyncio.Task[None]) -> None:
        self._active.pop(run_id, None)
        self._lost.discard(run_id)
        self._wake.set()

    async def _carry_out(self, run: AnyRow) -> None:
        token = correlation_id_var.set(run.correlation_id)
        RUNS_ACTIVE.inc()
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew(run.id, done))
        execution = Execution(
            engine=self.engine,
            run=run,
            worker=self.worker,
            lease=self.settings.sync_lease_seconds,
            should_stop=lambda: self._stopping.is_set() or run.id in self._lost,
        )
        log.info("sync run started", extra={"sync_id": str(run.id), "attempt": run.attempts})
        try:
            await execute_run(execution, self.secret_box, self.timeout, self.policy, self.limiter)
            RUNS_ENDED.labels("finished").inc()
        except runs.RunDeleted as exc:
            self._ended_deleted(run, exc.cause)
        except Deferred as exc:
            RUNS_ENDED.labels("deferred").inc()
            log.info("sync run deferred", extra={"sync_id": str(run.id), "reason": str(exc)})
            await runs.defer_run(self.engine, run.id, self.worker, DEFER_SECONDS)
        except (Interrupted, runs.LeaseLost) as exc:
            # A renewal that found no row stops the run too: deleted, not handed over.
            if (cause := await self._deleted_with(run)) is not None:
                self._ended_deleted(run, cause)
            else:
                await self._hand_over(run, exc)
        except Exception as exc:
            if (cause := await self._deleted_with(run)) is not None:
                # A write that met the deletion some way `hold_target` does not foresee.
                self._ended_deleted(run, cause, error=exc)
            else:
                # Unexpected: leave the run to be resumed when its lease expires.
                RUNS_ENDED.labels("error").inc()
                log.exception(
                    "sync run crashed; it resumes when its lease expires",
                    extra={"sync_id": str(run.id)},
                )
        finally:
            # Stopped, not cancelled: a renewal cut off mid-transaction would strand its
            # database connection.
            done.set()
            await renewer
            RUNS_ACTIVE.dec()
            correlation_id_var.reset(token)

    async def _hand_over(self, run: AnyRow, exc: Exception) -> None:
        RUNS_ENDED.labels("handed_over").inc()
        # Stopping (SIGTERM) is a graceful hand-over, which does not count as an attempt; a
        # lease lost to another worker was counted by its claim.
        graceful = isinstance(exc, Interrupted) and run.id not in self._lost
        log.info("sync run handed over", extra={"sync_id": str(run.id), "graceful": graceful})
        await runs.release_lease(self.engine, run.id, self.worker, graceful=graceful)

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
        """The run went with its destination or segment (the foreign keys cascade): nobody
        resumes or finishes it, and there is nothing to hand back."""
        RUNS_ENDED.labels("deleted").inc()
        extra: dict[str, str] = {"sync_id": str(run.id), "deleted_with": cause}
        if error is not None:
            extra["error"] = repr(error)
        log.info("sync run ended: its %s was deleted", cause, extra=extra)

    async def _renew(self, run_id: uuid.UUID, done: asyncio.Event) -> None:
        interval = self.settings.sync_lease_seconds / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval)
            if done.is_set():
                return
            try:
                held = await runs.renew_lease(
                    self.engine, run_id, self.worker, self.settings.sync_lease_seconds
                )
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
                continue
            if not held:
                self._lost.add(run_id)
                return
