"""Rule-segment refreshes as jobs of the job engine (segments_shared/jobs), run in every
segment-api process: segment-api owns segments and sees every change. Each runner pass
folds new change signals into refresh requests (rules/signals.py), then claims due refreshes
(up to `rule_refresh_concurrency` at once per process) and carries them out
(rules/refresh.py). Replicas share the work through the jobs table."""

import logging
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.events import SOURCE
from segment_api.rules import signals
from segment_api.rules.refresh import refresh_segment
from segment_api.rules.requests import QUEUE
from segment_api.rules.settings import RefreshSettings
from segments_shared.backoff import BackoffPolicy
from segments_shared.jobs.runner import JobKind, JobRunner, Lease
from segments_shared.jobs.store import Claim
from segments_shared.observability import correlation_id_var, new_correlation_id

log = logging.getLogger(__name__)

REFRESHED = Counter(
    "segments_rule_refreshes", "Rule-segment recomputations, by outcome", ["outcome"]
)


class RuleRefresh(JobKind):
    queue = QUEUE
    retry_policy = BackoffPolicy(base=5.0, cap=120.0)

    def __init__(self, engine: AsyncEngine, settings: RefreshSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.lease_seconds = settings.rule_refresh_lease_seconds
        self.concurrency = settings.rule_refresh_concurrency

    async def prepare(self, engine: AsyncEngine) -> float | None:
        async with engine.begin() as conn:
            await signals.fold_signals(conn, self.settings.rule_refresh_debounce_seconds)
            await signals.schedule_due(conn, self.settings.rule_refresh_period_seconds)
        return None

    async def work(self, job: Claim, lease: Lease) -> None:
        correlation_id_var.set(new_correlation_id())
        outcome = await refresh_segment(self.engine, job, SOURCE)
        REFRESHED.labels(outcome).inc()


def rule_runner(engine: AsyncEngine, settings: RefreshSettings, worker: str) -> JobRunner:
    return JobRunner(
        engine,
        worker,
        [RuleRefresh(engine, settings)],
        poll_seconds=settings.rule_refresh_poll_seconds,
        name="rule refresher",
    )


def wake_refresher(app: Any) -> None:
    """After a request queued a refresh due now (run once its transaction committed)."""
    runner: JobRunner | None = getattr(app.state, "refresher", None)
    if runner is not None:
        runner.wake()
