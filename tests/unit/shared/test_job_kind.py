"""The job engine's parts that need no database: a kind's next due time, the lease a running
job holds, the runner's wake-ups (segments_shared/jobs/runner.py)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from segments_shared.jobs.runner import JobKind, JobRunner, Lease, LeaseLost, Release
from segments_shared.jobs.store import Claim


class Rfm(JobKind):
    queue = "rfm"
    period = 3600.0


class Refresh(JobKind):
    queue = "refresh"


def test_only_a_periodic_kind_has_a_next_due_time() -> None:
    now = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    assert Rfm().next_due(now) == now + timedelta(hours=1)
    assert Refresh().next_due(now) is None


def test_a_lost_lease_stops_the_work_that_checks_it() -> None:
    lease = Lease(Claim(queue="refresh", key="a", generation=3, attempts=1))
    lease.check()
    lease.lost = True
    with pytest.raises(LeaseLost, match="refresh/a"):
        lease.check()


def test_a_release_is_uncounted_and_immediate_unless_told() -> None:
    release = Release("waiting on a lock")
    assert (release.delay, release.counted) == (0.0, False)
    later = Release("rate limited", delay=2.5, counted=True)
    assert (later.delay, later.counted, str(later)) == (2.5, True, "rate limited")


class CountingWakes(JobRunner):
    woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_a_runner_wakes_for_its_own_queues_and_for_any() -> None:
    # The engine is never used here: it connects on first use only.
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    runner = CountingWakes(engine, "w1", [Rfm(), Refresh()])
    runner.wake_for("rfm")
    runner.wake_for("refresh")
    runner.wake_for("")  # a reconnected listener's catch-up names no queue
    assert runner.woken == 3
    runner.wake_for("sync_runs")
    assert runner.woken == 3
    assert runner.queues == ["rfm", "refresh"]
