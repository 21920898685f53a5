"""Ending a run: its status and stats, its plan dropped and `sync.completed` in the outbox, in
one transaction; then, after a large change, the record vacuumed."""

import logging

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.changes import changes_of, unit_of_work
from segments_shared.events import SyncCompleted, SyncCompletedEvent
from sync_worker import planner, record, runs, subscriptions
from sync_worker.execution.state import Execution

log = logging.getLogger(__name__)

SOURCE = "sync-worker"

ENDED = Counter("segments_sync_runs_ended", "Sync runs ended, by status", ["status"])
# Present from the start, so that the first failure is an increase from 0 (an alert on
# `increase()` never sees a series' first sample as one).
for _status in ("succeeded", "partial", "failed"):
    ENDED.labels(_status)


async def finish(
    execution: Execution, status: str, error: str | None, *, auth_failed: bool = False
) -> None:
    """`auth_failed`: the run failed on authentication (a subscription pauses after three in
    a row)."""
    run = execution.run

    async def end(conn: AsyncConnection) -> bool:
        """False when the run is no longer ours to end (its lease was taken over)."""
        if not await runs.finish_run(
            conn,
            run,
            execution.job,
            execution.worker,
            status=status,
            stats=execution.stats,
            error=error,
        ):
            return False
        await planner.drop_plan(conn, run.id)
        await subscriptions.record_outcome(conn, run.subscription_id, auth_failed=auth_failed)
        changes_of(conn).publish(
            SyncCompletedEvent(
                source=SOURCE,
                subject=str(run.segment_id),
                data=SyncCompleted(
                    sync_id=run.id,
                    segment_id=run.segment_id,
                    destination_id=run.destination_id,
                    status=status,
                    stats=execution.stats,
                    trigger=run.trigger,
                    subscription_id=run.subscription_id,
                ),
            ),
        )
        return True

    async with unit_of_work(execution.engine, SOURCE) as conn:
        await runs.hold_target(conn, run)
        ended = await end(conn)
    if ended:
        ENDED.labels(status).inc()
    if execution.stats["added"] + execution.stats["removed"] >= planner.LARGE_CHANGE:
        await _vacuum(execution)
    log.info(
        "sync run finished",
        extra={"sync_id": str(run.id), "status": status, "stats": execution.stats, "error": error},
    )


async def _vacuum(execution: Execution) -> None:
    """The record changed a lot: the next plan should not wait for autovacuum's statistics."""
    try:
        async with execution.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await record.vacuum_record(conn)
    except Exception:
        log.warning("vacuuming the record failed; autovacuum will", exc_info=True)
