import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.destinations import repository as destinations
from segment_api.events import SOURCE
from segment_api.problems import ProblemException, field_error, not_found
from segment_api.segments import repository as segments
from segment_api.syncs import repository
from segment_api.syncs.schemas import FailedRecord, SyncRun, SyncStats
from segments_shared.bus.outbox import add_event
from segments_shared.events import SyncRequested, SyncRequestedEvent
from segments_shared.observability import current_correlation_id


async def get_run(conn: AsyncConnection, run_id: uuid.UUID) -> SyncRun:
    row = await repository.get_run(conn, run_id)
    if row is None:
        raise not_found("sync run", run_id)
    run = row
    failures = await repository.failures(conn, run_id)
    return SyncRun(
        id=run.id,
        kind=run.kind,
        segment_id=run.segment_id,
        destination_id=run.destination_id,
        from_destination_id=run.source_destination_id,
        status=run.status,
        requested_at=run.requested_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        stats=SyncStats.model_validate(run.stats),
        error=run.error,
        failed_records=[FailedRecord.model_validate(f, from_attributes=True) for f in failures],
    )


async def request_sync(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> SyncRun:
    """Queue a run, or answer the one already queued or running for this pair."""
    segment = await segments.lock(conn, segment_id)
    if segment is None:
        raise not_found("segment", segment_id)
    if not segment.active:
        raise ProblemException(409, "the segment is inactive: activate it before syncing it")
    if await destinations.get(conn, destination_id) is None:
        raise field_error("/destination_id", f"destination {destination_id} does not exist")
    run_id = await repository.insert_run(
        conn,
        {
            "kind": "sync",
            "segment_id": segment_id,
            "destination_id": destination_id,
            "correlation_id": current_correlation_id(),
        },
    )
    if run_id is None:
        existing = await repository.active_run_id(conn, segment_id, destination_id)
        assert existing is not None  # the segment lock keeps it from finishing meanwhile
        return await get_run(conn, existing)
    await repository.mark_delivery_queued(conn, segment_id, destination_id, run_id)
    await add_event(
        conn,
        SyncRequestedEvent(
            source=SOURCE,
            subject=str(segment_id),
            data=SyncRequested(
                sync_id=run_id, segment_id=segment_id, destination_id=destination_id
            ),
        ),
    )
    return await get_run(conn, run_id)
