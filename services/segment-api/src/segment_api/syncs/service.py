"""Sync runs and promotions: queued in the database with their `sync.requested` event (one
transaction); the sync-worker claims and carries them out."""

import uuid
from collections import defaultdict

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.destinations import repository as destinations
from segment_api.events import SOURCE
from segment_api.listing import PageRequest
from segment_api.pagination import Page
from segment_api.problems import ProblemException, not_found
from segment_api.segments.service import locked_segment, require_segment
from segment_api.syncs import repository
from segment_api.syncs.repository import RunFilters
from segment_api.syncs.schemas import (
    DestinationState,
    FailedRecord,
    PromotionCreate,
    SyncRun,
    SyncStats,
)
from segments_shared.changes import changes_of
from segments_shared.db.types import AnyRow
from segments_shared.events import SyncRequested, SyncRequestedEvent
from segments_shared.jobs import store
from segments_shared.observability import current_correlation_id


def _to_run(run: AnyRow, failures: list[AnyRow]) -> SyncRun:
    return SyncRun(
        id=run.id,
        kind=run.kind,
        segment_id=run.segment_id,
        destination_id=run.destination_id,
        from_destination_id=run.source_destination_id,
        status=run.status,
        trigger=run.trigger,
        subscription_id=run.subscription_id,
        requested_at=run.requested_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        stats=SyncStats.model_validate(run.stats),
        error=run.error,
        failed_records=[FailedRecord.model_validate(f, from_attributes=True) for f in failures],
    )


async def _with_failures(conn: AsyncConnection, rows: list[AnyRow]) -> list[SyncRun]:
    by_run: dict[uuid.UUID, list[AnyRow]] = defaultdict(list)
    for failure in await repository.failures(conn, [row.id for row in rows]):
        by_run[failure.sync_run_id].append(failure)
    return [_to_run(row, by_run[row.id]) for row in rows]


async def get_run(conn: AsyncConnection, run_id: uuid.UUID) -> SyncRun:
    row = await repository.get_run(conn, run_id)
    if row is None:
        raise not_found("sync run", run_id)
    return (await _with_failures(conn, [row]))[0]


async def list_runs(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    destination_id: uuid.UUID | None,
    page: PageRequest,
) -> Page[SyncRun]:
    await require_segment(conn, segment_id)
    rows = await repository.list_runs(
        conn,
        segment_id,
        destination_id=destination_id,
        before_seq=page.after_key(),
        limit=page.limit,
    )
    return Page(
        items=await _with_failures(conn, rows[: page.limit]),
        next_cursor=page.next_cursor(rows, lambda row: (row.seq,)),
    )


async def list_all_runs(
    conn: AsyncConnection, filters: RunFilters, page: PageRequest
) -> Page[SyncRun]:
    """Runs across every segment, newest first."""
    rows = await repository.list_all_runs(
        conn, filters, before_seq=page.after_key(), limit=page.limit
    )
    return Page(
        items=await _with_failures(conn, rows[: page.limit]),
        next_cursor=page.next_cursor(rows, lambda row: (row.seq,)),
    )


async def _lock_active_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> None:
    segment = await locked_segment(conn, segment_id)
    if not segment.active:
        raise ProblemException(409, "the segment is inactive: activate it before syncing it")


# The job queue of sync runs (sync_worker/runs.py).
SYNC_RUNS = "sync_run"

# Inserts tried while the pair's active run keeps finishing under our feet (each try that
# fails saw a run end, so more than one is already rare).
QUEUE_TRIES = 5


async def _queue(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    *,
    kind: str,
    source_id: uuid.UUID | None = None,
) -> SyncRun:
    """Queue a run, or answer the one already queued or running for this pair."""
    values = {
        "kind": kind,
        "segment_id": segment_id,
        "destination_id": destination_id,
        "source_destination_id": source_id,
        "correlation_id": current_correlation_id(),
        "trigger": "promotion" if kind == "promotion" else "manual",
    }
    for _ in range(QUEUE_TRIES):
        run_id = await repository.insert_run(conn, values)
        if run_id is not None:
            break
        # The insert met a queued or running run. The worker can finish it before we look
        # it up (finishing a run does not touch the segment, so the segment's lock does not
        # hold it back): then the pair is free, and the next insert queues a new run.
        existing = await repository.active_run_id(conn, segment_id, destination_id)
        if existing is not None:
            return await get_run(conn, existing)
    else:
        raise ProblemException(
            409, "runs of this segment and destination keep starting and ending: try again"
        )
    await repository.mark_delivery_queued(conn, segment_id, destination_id, run_id)
    # The sync-worker's job engine carries it out (sync_worker/runner.py).
    await store.request(conn, SYNC_RUNS, str(run_id), sync_run_id=run_id)
    changes_of(conn).publish(
        SyncRequestedEvent(
            source=SOURCE,
            subject=str(segment_id),
            data=SyncRequested(
                sync_id=run_id, segment_id=segment_id, destination_id=destination_id, kind=kind
            ),
        ),
    )
    return await get_run(conn, run_id)


async def request_sync(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> SyncRun:
    await _lock_active_segment(conn, segment_id)
    await syncable_destination(conn, segment_id, destination_id)
    return await _queue(conn, segment_id, destination_id, kind="sync")


async def syncable_destination(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> AnyRow:
    """The destination a sync or a subscription names, held until the transaction ends: 422
    if it does not exist, 409 for a commerce staging store (filled by promotions only)."""
    destination = await destinations.held(conn, destination_id)
    if destination is None:
        raise ProblemException(
            422,
            f"destination {destination_id} does not exist",
            errors=[{"pointer": "/destination_id", "detail": "no such destination"}],
        )
    if destination.type == "commerce" and destination.config.get("environment") == "staging":
        raise ProblemException(
            409,
            "a staging store receives segments from production, by promotion: "
            f"POST /v1/segments/{segment_id}/promotions",
        )
    return destination


async def request_promotion(
    conn: AsyncConnection, segment_id: uuid.UUID, body: PromotionCreate
) -> SyncRun:
    """Staging gets exactly what production holds by the worker's record after its last
    successful sync of the segment."""
    await _lock_active_segment(conn, segment_id)
    ends = {
        "from_destination_id": (body.from_destination_id, "production"),
        "to_destination_id": (body.to_destination_id, "staging"),
    }
    errors: list[dict[str, str]] = []
    conflicts: list[str] = []
    for field, (destination_id, environment) in ends.items():
        destination = await destinations.held(conn, destination_id)
        if destination is None:
            errors.append({"pointer": f"/{field}", "detail": "no such destination"})
        elif destination.type != "commerce":
            errors.append(
                {
                    "pointer": f"/{field}",
                    "detail": f"must be a commerce destination, not {destination.type}",
                }
            )
        elif destination.config.get("environment") != environment:
            conflicts.append(
                f"{field} must be a {environment} store; destination {destination_id} is "
                f"{destination.config.get('environment')}"
            )
    if body.from_destination_id == body.to_destination_id:
        errors.append({"pointer": "/to_destination_id", "detail": "must differ from the source"})
    if errors:
        detail = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors)
        raise ProblemException(422, detail, errors=errors)
    if conflicts:
        raise ProblemException(409, "; ".join(conflicts))
    source = await repository.destination_segment(conn, segment_id, body.from_destination_id)
    if source is None or source.last_success_run_id is None:
        raise ProblemException(
            409,
            "the production destination has no successful sync of this segment yet: "
            "sync it there first",
        )
    latest = await repository.latest_run(conn, segment_id, body.from_destination_id)
    if latest is not None and latest.status == "failed":
        # What production holds after a failed run is not the result of a successful sync;
        # a queued or running one is waited for by the worker instead.
        raise ProblemException(
            409,
            "the production destination's last sync of this segment failed, so what it "
            "holds is not the result of a successful sync: sync it again, then promote",
        )
    return await _queue(
        conn,
        segment_id,
        body.to_destination_id,
        kind="promotion",
        source_id=body.from_destination_id,
    )


async def destination_state(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> DestinationState:
    await require_segment(conn, segment_id)
    if await destinations.get(conn, destination_id) is None:
        raise not_found("destination", destination_id)
    remote = await repository.destination_segment(conn, segment_id, destination_id)
    latest = await repository.latest_run(conn, segment_id, destination_id)
    return DestinationState(
        remote_id=remote.remote_id if remote else None,
        remote_name=remote.remote_name if remote else None,
        member_count=await repository.member_count(conn, segment_id, destination_id),
        last_run=(await _with_failures(conn, [latest]))[0] if latest else None,
    )
