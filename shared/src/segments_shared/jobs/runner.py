"""Running jobs: each kind of job supplies what is due and its work; the runner claims, keeps
the lease renewed while the work runs, and ends the job by what the work did.

- The work returns: the job is done (`finish`).
- It raises `Release`: given back, to be claimed again after a delay (by anyone).
- It raises `LeaseLost`, or a renewal found the lease gone: someone else holds the job now;
  nothing is written.
- It raises anything else: the job is retried after a back-off that grows with its attempts,
  and its `last_error` says why (visible in the table and counted in the metrics).
- The runner stops: unfinished jobs are given back at once, without counting the attempt.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.jobs import store
from segments_shared.jobs.store import Claim, ClaimFilter
from segments_shared.loop import WorkerLoop

log = logging.getLogger(__name__)

JOBS = Counter("segments_jobs", "Jobs ended, by queue and outcome", ["queue", "outcome"])
JOB_SECONDS = Histogram(
    "segments_job_seconds",
    "Time a job's work took, by queue",
    ["queue"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


class Release(Exception):
    """Give the job back: claimable again after `delay` seconds. `counted`: the claim stays
    an attempt."""

    def __init__(self, reason: str, *, delay: float = 0.0, counted: bool = False) -> None:
        super().__init__(reason)
        self.delay = delay
        self.counted = counted


class LeaseLost(Exception):
    """The job is someone else's now (our lease expired): write nothing more for it."""


class Lease:
    """A running job's hold, renewed by the runner; `lost` once a renewal failed to hold."""

    def __init__(self, job: Claim) -> None:
        self.job = job
        self.lost = False

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.job.queue}/{self.job.key}")


class JobKind:
    """A queue of jobs and how to carry them out. Subclasses set the class attributes they
    need and implement `work`; `prepare` makes due what has become due (signals folded into
    requests, periodic jobs created)."""

    queue: str = ""
    lease_seconds: float = 60.0
    # Jobs of this kind one process carries at once.
    concurrency: int = 1
    claim_filter: ClaimFilter | None = None
    retry_policy: BackoffPolicy = BackoffPolicy(base=1.0, cap=60.0)
    # Done jobs are deleted, unless requested again meanwhile; periodic ones stay.
    period: float | None = None

    # The runner carrying this kind's jobs (set by it).
    runner: "JobRunner | None" = None

    async def prepare(self, engine: AsyncEngine) -> float | None:
        """Before claiming; returns the seconds until it wants to run again (None: the
        runner's poll interval)."""
        return None

    async def claimed(self, conn: AsyncConnection, jobs: list[Claim]) -> None:
        """In the claim's transaction: what holding these jobs means to their rows."""

    def stopping(self) -> bool:
        """The runner is stopping: long work hands its job back at its next boundary."""
        return self.runner is not None and self.runner.stopping

    async def work(self, job: Claim, lease: Lease) -> None:
        raise NotImplementedError

    def next_due(self, now: datetime) -> datetime | None:
        """When a finished periodic job is due again."""
        if self.period is None:
            return None
        return now + timedelta(seconds=self.period)


class PeriodicJob(JobKind):
    """One job (key `all`) due every `period` seconds, and at once the first time."""

    KEY = "all"

    def __init__(self, period: float) -> None:
        self.period = period
        self._ensured = False

    async def prepare(self, engine: AsyncEngine) -> float | None:
        if not self._ensured:
            async with engine.begin() as conn:
                await store.ensure(conn, self.queue, self.KEY)
            self._ensured = True
        return None


class JobRunner(WorkerLoop):
    """Claims and carries out the jobs of some kinds, up to each kind's concurrency."""

    def __init__(
        self,
        engine: AsyncEngine,
        worker: str,
        kinds: Sequence[JobKind],
        *,
        poll_seconds: float = 1.0,
        name: str = "job runner",
        min_interval: float = 0.0,
        stop_grace_seconds: float = 5.0,
    ) -> None:
        super().__init__(name, poll_seconds=poll_seconds, min_interval=min_interval)
        self.stop_grace_seconds = stop_grace_seconds
        self.engine = engine
        self.worker = worker
        self.kinds = {kind.queue: kind for kind in kinds}
        for kind in kinds:
            kind.runner = self
        self._running: dict[str, set[asyncio.Task[None]]] = {q: set() for q in self.kinds}
        # Set once a step finds nothing due and nothing running: the jobs due at start have
        # been carried out (or tried).
        self.first_round = asyncio.Event()

    @property
    def queues(self) -> list[str]:
        return list(self.kinds)

    def running(self, queue: str) -> int:
        return len(self._running[queue])

    def wake_for(self, queue: str) -> None:
        """A NOTIFY's payload names the queue that has work."""
        if not queue or queue in self.kinds:
            self.wake()

    async def step(self) -> float | None:
        hints: list[float] = []
        claimed_all = claimed_any = False
        for kind in self.kinds.values():
            try:
                hint = await kind.prepare(self.engine)
            except Exception:
                log.exception("preparing jobs failed", extra={"queue": kind.queue})
                hint = None
            if hint is not None:
                hints.append(hint)
            free = kind.concurrency - self.running(kind.queue)
            if free <= 0 or self.stopping:
                continue
            async with self.engine.begin() as conn:
                claims = await store.claim(
                    conn,
                    kind.queue,
                    self.worker,
                    limit=free,
                    lease=kind.lease_seconds,
                    claim_filter=kind.claim_filter,
                    # Task names are "<queue>/<key>".
                    running=[
                        task.get_name().partition("/")[2] for task in self._running[kind.queue]
                    ],
                )
                if claims:
                    await kind.claimed(conn, claims)
            for job in claims:
                task = asyncio.create_task(
                    self._carry_out(kind, job), name=f"{kind.queue}/{job.key}"
                )
                self._running[kind.queue].add(task)
                task.add_done_callback(self._finished(kind.queue))
            claimed_all = claimed_all or len(claims) == free
            claimed_any = claimed_any or bool(claims)
        if not claimed_any and not any(self._running.values()):
            self.first_round.set()  # nothing due is left undone
        if claimed_all:
            return 0.0  # more may be due
        # A full queue waits for a free slot (a run's end wakes the loop), not for its
        # backlog: that is due already and would have the loop step every 10 ms.
        open_queues = [q for q, kind in self.kinds.items() if self.running(q) < kind.concurrency]
        if open_queues:
            async with self.engine.connect() as conn:
                seconds = await store.seconds_until_due(conn, open_queues)
            if seconds is not None:
                hints.append(max(0.01, seconds))
        return min(hints) if hints else None

    def _finished(self, queue: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._running[queue].discard(task)
            self.wake()

        return done

    async def stopped(self) -> None:
        self.first_round.set()
        tasks = [task for tasks in self._running.values() for task in tasks]
        # Long work sees `stopping` and gives its job back at its next boundary (a sync run,
        # between batches); what is still running after the grace is cancelled, and its job
        # given back at once, uncounted (`_carry_out`): left running, it would outlive the
        # loop and hold its lease.
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)

    async def _carry_out(self, kind: JobKind, job: Claim) -> None:
        lease = Lease(job)
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew(kind, lease, done))
        started = time.perf_counter()
        outcome = "done"
        try:
            await kind.work(job, lease)
            lease.check()
            next_due = kind.next_due(datetime.now(UTC))
            await self._end(
                lambda conn: store.finish(
                    conn, job, self.worker, delete=kind.period is None, next_due=next_due
                )
            )
        except LeaseLost:
            outcome = "lost"
            log.warning("job lease lost", extra={"queue": job.queue, "key": job.key})
        except Release as exc:
            outcome = "released"
            counted, delay = exc.counted, exc.delay
            await self._end(
                lambda conn: store.release(conn, job, self.worker, counted=counted, delay=delay)
            )
        except asyncio.CancelledError:
            outcome = "released"
            await asyncio.shield(
                self._end(lambda conn: store.release(conn, job, self.worker, counted=False))
            )
            raise
        except Exception as exc:
            if lease.lost:
                # Failed after the job became someone else's: nothing of ours to write.
                outcome = "lost"
                log.warning(
                    "job failed after its lease was lost",
                    extra={"queue": job.queue, "key": job.key, "error": repr(exc)},
                )
                return
            outcome = "retried"
            error, wait = repr(exc), kind.retry_policy.delay(max(job.attempts - 1, 0))
            log.exception(
                "job failed, retrying later",
                extra={
                    "queue": job.queue,
                    "key": job.key,
                    "attempts": job.attempts,
                    "retry_in_s": round(wait, 2),
                },
            )
            await self._end(
                lambda conn: store.retry(conn, job, self.worker, delay=wait, error=error)
            )
        finally:
            done.set()
            await renewer
            JOBS.labels(queue=job.queue, outcome=outcome).inc()
            JOB_SECONDS.labels(queue=job.queue).observe(time.perf_counter() - started)

    async def _end(self, write: Callable[[AsyncConnection], Awaitable[object]]) -> None:
        """Write a job's end; if the database is away, the lease expires and the job is due
        again anyway."""
        try:
            async with self.engine.begin() as conn:
                await write(conn)
        except Exception:
            log.warning("could not record a job's end; its lease will expire", exc_info=True)

    async def _renew(self, kind: JobKind, lease: Lease, done: asyncio.Event) -> None:
        interval = kind.lease_seconds / 3
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval)
            if done.is_set():
                return
            try:
                async with self.engine.begin() as conn:
                    held = await store.renew(conn, lease.job, self.worker, lease=kind.lease_seconds)
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
                continue
            if not held:
                lease.lost = True
                return
