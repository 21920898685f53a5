"""The job engine against the real database: the `jobs` table's SQL (segments_shared/jobs/
store.py) and the runner that claims, renews and ends jobs (segments_shared/jobs/runner.py)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.backoff import BackoffPolicy
from segments_shared.db.notify import Listener
from segments_shared.jobs import store
from segments_shared.jobs.runner import JobKind, JobRunner, Lease, Release
from segments_shared.jobs.store import Claim, ClaimFilter
from tests.support.backoff import RecordingPolicy
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio

QUEUE = "test_jobs"

Work = Callable[[Claim, Lease], Awaitable[None]]


async def request(engine: AsyncEngine, key: str, **options: Any) -> None:
    async with engine.begin() as conn:
        await store.request(conn, QUEUE, key, **options)


async def claim(
    engine: AsyncEngine, worker: str = "w1", *, lease: float = 30.0, **options: Any
) -> list[Claim]:
    async with engine.begin() as conn:
        return await store.claim(conn, QUEUE, worker, limit=10, lease=lease, **options)


async def find_job(engine: AsyncEngine, key: str) -> dict[str, Any] | None:
    """The job's row, with its due time as seconds from now (`due_in`)."""
    async with engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT *, extract(epoch FROM due_at - now())::float AS due_in"
                " FROM jobs WHERE queue = :queue AND key = :key"
            ),
            {"queue": QUEUE, "key": key},
        )
        found = row.mappings().first()
    return None if found is None else dict(found)


async def job_row(engine: AsyncEngine, key: str) -> dict[str, Any]:
    row = await find_job(engine, key)
    assert row is not None, f"no job {key!r}"
    return row


async def take_over(engine: AsyncEngine, key: str, worker: str) -> Claim:
    """End the holder's lease and claim the job in one transaction, so that no renewal of the
    holder slips in between."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE jobs SET lease_expires_at = now() - interval '1 second'"
                " WHERE queue = :queue AND key = :key"
            ),
            {"queue": QUEUE, "key": key},
        )
        [job] = await store.claim(conn, QUEUE, worker, limit=1, lease=30.0)
    return job


@pytest_asyncio.fixture
async def db(engine: AsyncEngine) -> AsyncEngine:
    """The migrated database with no jobs. These tests write `jobs` alone (and a segment's
    `active` flag, put back), so emptying it is enough; emptying every table would take
    longer than the tests."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM jobs"))
    return engine


def seconds(later: datetime | None, earlier: datetime | None) -> float:
    assert later is not None
    assert earlier is not None
    return (later - earlier).total_seconds()


async def test_replicas_claim_disjoint_jobs(db: AsyncEngine) -> None:
    keys = [f"job-{n:02}" for n in range(30)]
    async with db.begin() as conn:
        for key in keys:
            await store.request(conn, QUEUE, key)

    async def replica(worker: str) -> list[Claim]:
        taken: list[Claim] = []
        while True:
            async with db.begin() as conn:
                batch = await store.claim(conn, QUEUE, worker, limit=4, lease=30.0)
                # Hold the row locks a moment, so that the replicas' claims overlap.
                await conn.execute(text("SELECT pg_sleep(0.02)"))
            if not batch:
                return taken
            taken.extend(batch)

    workers = [f"replica-{n}" for n in range(5)]
    results = await asyncio.gather(*(replica(worker) for worker in workers))

    assert sorted(job.key for taken in results for job in taken) == keys
    assert all(results)
    for worker, taken in zip(workers, results, strict=True):
        for job in taken:
            row = await job_row(db, job.key)
            assert (row["lease_owner"], row["generation"], row["attempts"]) == (worker, 1, 1)


async def test_a_held_job_is_claimed_again_once_its_lease_expires(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1})
    [first] = await claim(db, "w1", lease=0.3)
    assert (first.generation, first.attempts, first.payload) == (1, 1, {"x": 1})
    assert await claim(db, "w2") == []
    await request(db, "a", payload={"y": 2})

    [second] = await eventually(lambda: claim(db, "w2"), bool, within=5)

    # The successor takes what its predecessor took, and what was asked for since.
    assert (second.generation, second.attempts) == (2, 2)
    assert second.payload == {"x": 1, "y": 2}
    assert seconds(second.started_at, first.started_at) >= 0.3
    assert (await job_row(db, "a"))["lease_owner"] == "w2"


async def test_a_stale_holder_can_no_longer_write(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1})
    [stale] = await claim(db, "w1")
    # The same worker takes it again (a stalled process whose lease ran out): only the
    # generation tells its two claims apart.
    fresh = await take_over(db, "a", "w1")
    assert fresh.generation == stale.generation + 1
    before = await job_row(db, "a")

    async with db.begin() as conn:
        assert not await store.renew(conn, stale, "w1", lease=60.0)
        assert not await store.retry(conn, stale, "w1", delay=0.0, error="late")
        assert not await store.release(conn, stale, "w1", counted=False)
        await store.finish(conn, stale, "w1")
        await store.finish(conn, stale, "w1", delete=False, next_due=datetime.now(UTC))
        # Nor can another worker write with the right generation.
        assert not await store.renew(conn, fresh, "w2", lease=60.0)
    after = await job_row(db, "a")
    assert {**after, "due_in": None} == {**before, "due_in": None}

    async with db.begin() as conn:
        assert await store.renew(conn, fresh, "w1", lease=60.0)
        await store.finish(conn, fresh, "w1")
    assert await find_job(db, "a") is None


async def test_finishing_a_one_shot_job_deletes_it(db: AsyncEngine) -> None:
    await request(db, "a")
    [job] = await claim(db)
    async with db.begin() as conn:
        await store.finish(conn, job, "w1")
    assert await find_job(db, "a") is None


async def test_requests_during_a_run_make_exactly_one_more_run(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1})
    [job] = await claim(db)
    # Payloads merge; where they differ, the request due first wins.
    await request(db, "a", delay=5.0, payload={"cause": "later", "z": 1})
    await request(db, "a", payload={"cause": "sooner"})
    await request(db, "a", payload={"cause": "no sooner"})
    async with db.begin() as conn:
        await store.finish(conn, job, "w1")

    row = await job_row(db, "a")
    assert (row["lease_owner"], row["attempts"]) == (None, 0)
    assert row["due_in"] <= 0
    [again] = await claim(db)
    assert again.payload == {"cause": "sooner", "z": 1}
    async with db.begin() as conn:
        await store.finish(conn, again, "w1")
    assert await find_job(db, "a") is None
    assert await claim(db) == []


async def test_a_finished_periodic_job_is_due_at_its_next_time(db: AsyncEngine) -> None:
    await request(db, "a")
    [job] = await claim(db)
    async with db.begin() as conn:
        await store.retry(conn, job, "w1", delay=0.0, error="boom")
    [job] = await claim(db)
    next_due = datetime.now(UTC) + timedelta(seconds=60)
    async with db.begin() as conn:
        await store.finish(conn, job, "w1", delete=False, next_due=next_due)

    row = await job_row(db, "a")
    assert (row["due_at"], row["lease_owner"]) == (next_due, None)
    assert (row["attempts"], row["last_error"]) == (0, None)
    assert row["last_finished_at"] is not None

    # Requested during its run: due at the request's time, not the period's.
    await request(db, "a")
    [job] = await claim(db)
    await request(db, "a")
    async with db.begin() as conn:
        await store.finish(conn, job, "w1", delete=False, next_due=next_due)
    assert (await job_row(db, "a"))["due_in"] <= 0


async def test_a_window_debounce_never_moves_the_due_time_later(db: AsyncEngine) -> None:
    await request(db, "a", delay=2.0)
    first = await job_row(db, "a")
    await request(db, "a", delay=10.0)
    later = await job_row(db, "a")
    assert later["due_at"] == first["due_at"]

    await request(db, "a", delay=0.0)
    assert (await job_row(db, "a"))["due_in"] <= 0


async def test_a_trailing_debounce_moves_on_until_its_ceiling(db: AsyncEngine) -> None:
    await request(db, "a", delay=1.0, ceiling=10.0)
    first = await job_row(db, "a")
    await request(db, "a", delay=1.0, ceiling=10.0)
    moved = await job_row(db, "a")
    assert moved["due_at"] > first["due_at"]

    # A request every 50 ms, each wanting 200 ms of quiet: due 600 ms after the first anyway.
    await request(db, "b", delay=0.2, ceiling=0.6)
    first_requested = (await job_row(db, "b"))["requested_at"]
    deadline = time.monotonic() + 5
    claimed: list[Claim] = []
    while not claimed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await request(db, "b", delay=0.2, ceiling=0.6)
        assert (await job_row(db, "b"))["due_at"] <= first_requested + timedelta(seconds=0.6)
        claimed = [job for job in await claim(db) if job.key == "b"]
    assert claimed, "a steady stream of requests postponed the job past its ceiling"
    assert seconds(claimed[0].started_at, first_requested) >= 0.2


async def test_retry_restores_the_claim_under_newer_requests(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1, "y": 1})
    [job] = await claim(db)
    await request(db, "a", delay=60.0, payload={"y": 2})
    async with db.begin() as conn:
        assert await store.retry(conn, job, "w1", delay=0.5, error="boom")

    row = await job_row(db, "a")
    assert row["payload"] == {"x": 1, "y": 2}
    assert (row["last_error"], row["attempts"], row["lease_owner"]) == ("boom", 1, None)
    assert row["last_failed_at"] is not None
    assert 0.3 < row["due_in"] <= 0.5
    assert await claim(db) == []
    [again] = await eventually(lambda: claim(db), bool, within=5)
    assert (again.attempts, again.payload) == (2, {"x": 1, "y": 2})


async def test_release_counts_the_attempt_only_when_asked(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1})
    [job] = await claim(db)
    async with db.begin() as conn:
        assert await store.release(conn, job, "w1", counted=True)
    [job] = await claim(db)
    assert (job.attempts, job.payload) == (2, {"x": 1})

    async with db.begin() as conn:
        assert await store.release(conn, job, "w1", counted=False, delay=0.5)
    row = await job_row(db, "a")
    assert (row["attempts"], row["payload"], row["last_error"]) == (1, {"x": 1}, None)
    assert 0.3 < row["due_in"] <= 0.5
    assert await claim(db) == []


async def set_active(engine: AsyncEngine, active: dict[str, bool]) -> None:
    async with engine.begin() as conn:
        for segment_id, flag in active.items():
            await conn.execute(
                text("UPDATE segments SET active = :flag WHERE id = CAST(:id AS uuid)"),
                {"id": segment_id, "flag": flag},
            )


async def test_a_claim_filter_claims_only_what_it_allows(db: AsyncEngine) -> None:
    async with db.connect() as conn:
        found = await conn.execute(text("SELECT id::text FROM segments ORDER BY id LIMIT 3"))
        allowed, inactive, locked = found.scalars().all()
    for key in (allowed, inactive, locked, "no-such-segment"):
        await request(db, key)
    active_segments = ClaimFilter(
        join="JOIN segments s ON s.id::text = j.key",
        where="s.active",
        locks="FOR KEY SHARE OF s SKIP LOCKED",
    )
    await set_active(db, {allowed: True, inactive: False, locked: True})
    try:
        async with db.begin() as holder:
            await holder.execute(
                text("SELECT 1 FROM segments WHERE id = CAST(:id AS uuid) FOR UPDATE"),
                {"id": locked},
            )
            taken = await asyncio.wait_for(claim(db, claim_filter=active_segments), 5)
            assert [job.key for job in taken] == [allowed]
        taken = await claim(db, claim_filter=active_segments)
        assert [job.key for job in taken] == [locked]
        assert await claim(db, claim_filter=active_segments) == []
    finally:
        await set_active(db, {inactive: True})
    assert sorted(job.key for job in await claim(db)) == sorted([inactive, "no-such-segment"])


async def test_seconds_until_due(db: AsyncEngine) -> None:
    async def until_due() -> float | None:
        async with db.connect() as conn:
            return await store.seconds_until_due(conn, [QUEUE])

    assert await until_due() is None
    async with db.begin() as conn:
        await store.request(conn, "another_queue", "a")
    assert await until_due() is None

    await request(db, "later", delay=5.0)
    assert 4.5 < (await until_due() or 0) <= 5
    await request(db, "held")
    await claim(db, lease=2.0)
    assert 1.5 < (await until_due() or 0) <= 2
    await take_over(db, "held", "w2")  # a 30 s lease: its expiry is no longer first
    assert 4.5 < (await until_due() or 0) <= 5

    async with db.begin() as conn:
        await conn.execute(text("UPDATE jobs SET lease_expires_at = now() - interval '1 second'"))
    assert -1.5 < (await until_due() or 0) <= -1
    await request(db, "overdue")
    async with db.begin() as conn:
        await conn.execute(text("UPDATE jobs SET due_at = now() - interval '3 seconds'"))
    assert -3.5 < (await until_due() or 0) <= -3


async def test_a_request_notifies_its_queue_once_committed(
    db: AsyncEngine, database_url: str
) -> None:
    heard: list[str] = []

    async def heard_so_far() -> list[str]:
        return list(heard)

    listener = Listener(database_url)
    listener.on(store.NOTIFY_CHANNEL, heard.append)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        heard.clear()
        async with db.begin() as open_conn:
            await store.request(open_conn, QUEUE, "a")
            # Notifications arrive in commit order: one committed later, but heard first,
            # shows that the open transaction's was not sent.
            async with db.begin() as conn:
                await store.request(conn, "first_committed", "a")
            assert await eventually(heard_so_far, bool, within=5) == ["first_committed"]
        assert await eventually(heard_so_far, lambda h: len(h) > 1, within=5) == [
            "first_committed",
            QUEUE,
        ]

        with contextlib.suppress(RuntimeError):
            async with db.begin() as conn:
                await store.request(conn, QUEUE, "b")
                raise RuntimeError("rolled back")
        async with db.begin() as conn:
            await store.request(conn, "after_rollback", "a")
        assert await eventually(heard_so_far, lambda h: len(h) > 2, within=5) == [
            "first_committed",
            QUEUE,
            "after_rollback",
        ]
    finally:
        listener.stop()
        await asyncio.wait_for(task, 5)


# The runner ------------------------------------------------------------------------------


class Kind(JobKind):
    """The test queue, whose work is the function given; it keeps what it was given."""

    def __init__(
        self,
        work: Work,
        *,
        lease: float = 30.0,
        concurrency: int = 1,
        retry_policy: BackoffPolicy | None = None,
        period: float | None = None,
    ) -> None:
        self.queue = QUEUE
        self.lease_seconds = lease
        self.concurrency = concurrency
        self.retry_policy = retry_policy or BackoffPolicy(base=0.05, cap=0.1)
        self.period = period
        self.carry_out = work
        self.claims: list[Claim] = []
        self.leases: list[Lease] = []
        self.active = 0
        self.peak = 0
        self.prepared = 0

    async def prepare(self, engine: AsyncEngine) -> float | None:
        self.prepared += 1
        return None

    async def work(self, job: Claim, lease: Lease) -> None:
        self.claims.append(job)
        self.leases.append(lease)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.carry_out(job, lease)
        finally:
            self.active -= 1


async def nothing(job: Claim, lease: Lease) -> None:
    return None


@contextlib.asynccontextmanager
async def running(
    engine: AsyncEngine,
    kind: Kind,
    worker: str = "runner-1",
    poll_seconds: float = 0.2,
    stop_grace_seconds: float = 5.0,
) -> AsyncIterator[JobRunner]:
    runner = JobRunner(
        engine, worker, [kind], poll_seconds=poll_seconds, stop_grace_seconds=stop_grace_seconds
    )
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)


def gone(row: dict[str, Any] | None) -> bool:
    return row is None


def ended(outcome: str) -> float:
    """How many jobs of the test queue the runners ended so (their metric)."""
    labels = {"queue": QUEUE, "outcome": outcome}
    return REGISTRY.get_sample_value("segments_jobs_total", labels) or 0.0


async def test_the_runner_finishes_work_that_returns(db: AsyncEngine) -> None:
    await request(db, "a", payload={"x": 1})
    await request(db, "b")
    kind = Kind(nothing, concurrency=2)
    async with running(db, kind) as runner:
        await asyncio.wait_for(runner.first_round.wait(), 5)
        # The first round is over once the jobs due at start have ended.
        assert await find_job(db, "a") is None
        assert await find_job(db, "b") is None
    assert sorted((job.key, job.attempts) for job in kind.claims) == [("a", 1), ("b", 1)]
    assert next(job.payload for job in kind.claims if job.key == "a") == {"x": 1}


async def test_the_runner_retries_failed_work_after_its_back_off(db: AsyncEngine) -> None:
    policy = RecordingPolicy(base=0.05, cap=0.08)
    rows: list[dict[str, Any]] = []

    async def fail_twice(job: Claim, lease: Lease) -> None:
        rows.append(await job_row(db, job.key))
        if job.attempts <= 2:
            raise RuntimeError(f"boom {job.attempts}")

    kind = Kind(fail_twice, retry_policy=policy)
    await request(db, "a", payload={"x": 1})
    async with running(db, kind):
        assert await eventually(lambda: find_job(db, "a"), gone, within=10) is None

    assert [job.attempts for job in kind.claims] == [1, 2, 3]
    assert all(job.payload == {"x": 1} for job in kind.claims)
    assert [attempt for attempt, _ in policy.given] == [0, 1]
    for (attempt, wait), before, after in zip(
        policy.given, kind.claims[:-1], kind.claims[1:], strict=True
    ):
        assert 0 <= wait <= min(policy.cap, policy.base * 2**attempt)
        assert seconds(after.started_at, before.started_at) >= wait - 0.001
    retried = rows[1]
    assert retried["last_error"] == repr(RuntimeError("boom 1"))
    assert retried["last_failed_at"] is not None


@pytest.mark.parametrize("counted", [False, True])
async def test_the_runner_gives_back_work_that_asks_to_wait(db: AsyncEngine, counted: bool) -> None:
    async def wait_once(job: Claim, lease: Lease) -> None:
        if len(kind.claims) == 1:
            raise Release("not yet", delay=0.3, counted=counted)

    kind = Kind(wait_once)
    await request(db, "a", payload={"x": 1})
    async with running(db, kind):
        assert await eventually(lambda: find_job(db, "a"), gone, within=5) is None

    first, second = kind.claims
    assert (first.attempts, second.attempts) == (1, 2 if counted else 1)
    assert second.payload == {"x": 1}
    assert seconds(second.started_at, first.started_at) >= 0.3


async def test_the_runner_renews_the_lease_of_long_work(db: AsyncEngine) -> None:
    intruded: list[Claim] = []
    held: list[bool] = []

    async def outlast_the_lease(job: Claim, lease: Lease) -> None:
        deadline = time.monotonic() + 2.0  # over three leases
        while time.monotonic() < deadline:
            intruded.extend(await claim(db, "intruder"))
            held.append(not lease.lost)
            await asyncio.sleep(0.05)

    kind = Kind(outlast_the_lease, lease=0.6)
    await request(db, "a")
    async with running(db, kind):
        assert await eventually(lambda: find_job(db, "a"), gone, within=10) is None

    assert intruded == []
    assert len(kind.claims) == 1
    # (Checked while the work ran: once it returned, a renewal may find the job finished.)
    assert all(held)


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_work_that_lost_its_lease_writes_nothing(db: AsyncEngine, ending: str) -> None:
    started = asyncio.Event()

    async def outlive_the_lease(job: Claim, lease: Lease) -> None:
        started.set()

        async def lost() -> bool:
            return lease.lost

        await eventually(lost, bool, within=5)
        if ending == "raises":
            raise RuntimeError("too late")

    kind = Kind(outlive_the_lease, lease=0.3)
    await request(db, "a")
    lost_before = ended("lost")
    async with running(db, kind) as runner:
        await asyncio.wait_for(started.wait(), 5)
        taken = await take_over(db, "a", "intruder")
        before = await job_row(db, "a")

        async def still_running() -> int:
            return runner.running(QUEUE)

        assert await eventually(still_running, lambda n: n == 0, within=5) == 0

    assert kind.leases[0].lost
    after = await job_row(db, "a")
    assert (after["lease_owner"], after["generation"]) == ("intruder", taken.generation)
    assert {**after, "due_in": None} == {**before, "due_in": None}
    if ending == "returns":
        # Seen as no longer its job, rather than finished by a write that changed nothing.
        assert ended("lost") == lost_before + 1


async def test_runners_keep_to_their_concurrency(db: AsyncEngine) -> None:
    keys = [f"job-{n}" for n in range(8)]
    for key in keys:
        await request(db, key)

    async def briefly(job: Claim, lease: Lease) -> None:
        await asyncio.sleep(0.15)

    kinds = [Kind(briefly, concurrency=2), Kind(briefly, concurrency=2)]

    async def all_done() -> int:
        async with db.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one())

    async with running(db, kinds[0], "runner-1"), running(db, kinds[1], "runner-2"):
        assert await eventually(all_done, lambda n: n == 0, within=10) == 0

    assert sorted(job.key for kind in kinds for job in kind.claims) == keys
    assert [kind.peak for kind in kinds] == [2, 2]


async def test_a_busy_runner_waits_for_a_free_slot_without_polling(
    db: AsyncEngine,
) -> None:
    for key in ("a", "b", "c"):
        await request(db, key)

    async def briefly(job: Claim, lease: Lease) -> None:
        await asyncio.sleep(0.3)

    kind = Kind(briefly)
    async with running(db, kind, poll_seconds=1.0):
        assert await eventually(lambda: find_job(db, "c"), gone, within=10) is None

    # Each run ends with a wake-up; a backlog due meanwhile is no reason to step 100 times
    # a second.
    assert (kind.peak, len(kind.claims)) == (1, 3)
    assert kind.prepared <= 12


async def test_periodic_work_runs_again_after_its_period(db: AsyncEngine) -> None:
    kind = Kind(nothing, period=0.2)
    await request(db, "tick")
    async with running(db, kind):

        async def runs() -> int:
            return len(kind.claims)

        assert await eventually(runs, lambda n: n >= 2, within=5) >= 2
    first, second = kind.claims[:2]
    assert seconds(second.started_at, first.started_at) >= 0.2
    assert (await job_row(db, "tick"))["due_at"] is not None


async def test_stopping_gives_unfinished_work_back_after_the_grace(db: AsyncEngine) -> None:
    """Work that does not stop by itself within the grace is cancelled, and its job given
    back at once, uncounted."""
    started = asyncio.Event()
    cancelled: list[str] = []

    async def forever(job: Claim, lease: Lease) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(job.key)
            raise

    await request(db, "a", payload={"x": 1})
    stopped_kind = Kind(forever)
    async with running(db, stopped_kind, "runner-1", stop_grace_seconds=0.5):
        await asyncio.wait_for(started.wait(), 5)
        stop_began = time.monotonic()
    assert 0.5 <= time.monotonic() - stop_began < 2.5
    assert cancelled == ["a"]
    row = await job_row(db, "a")
    assert (row["lease_owner"], row["attempts"], row["payload"]) == (None, 0, {"x": 1})

    # Another runner takes it at once, not after the 30 s lease.
    kind = Kind(nothing)
    async with running(db, kind, "runner-2"):
        assert await eventually(lambda: find_job(db, "a"), gone, within=3) is None
    [taken] = kind.claims
    assert (taken.attempts, taken.generation, taken.payload) == (1, 2, {"x": 1})


async def test_requests_do_not_cut_a_failed_job_s_back_off_short(db: AsyncEngine) -> None:
    """A job failing while requests keep coming (the KPI fold while the database is away)
    waits out its back-off: the requests set when it is due, not when it may run."""
    await request(db, "busy")
    [job] = await claim(db, "w1")
    async with db.begin() as conn:
        assert await store.retry(conn, job, "w1", delay=0.6, error="RuntimeError('away')")
    await request(db, "busy")  # due at once...
    assert await claim(db, "w2") == []  # ...but not before the back-off
    await asyncio.sleep(0.7)
    [again] = await claim(db, "w2")
    assert again.attempts == 2
    async with db.connect() as conn:
        until = await store.seconds_until_due(conn, [QUEUE])
    assert until is not None
