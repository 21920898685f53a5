import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from segment_api.deps import Db, ReadDb, ReadKey, SyncKey
from segment_api.listing import PageQuery
from segment_api.pagination import Page
from segment_api.parameters import DestinationId, SegmentId
from segment_api.responses import answers
from segment_api.syncs import service
from segment_api.syncs.repository import RunFilters
from segment_api.syncs.schemas import (
    DestinationState,
    PromotionCreate,
    SyncCreate,
    SyncRun,
    SyncStatus,
    SyncTrigger,
)

router = APIRouter(tags=["syncs"])


@router.post(
    "/v1/segments/{segment_id}/syncs",
    operation_id="requestSync",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Sync a segment to a destination",
    description="Answers the run already queued or running for this segment and destination "
    "instead of starting a second one. A staging commerce store is filled by promotion "
    "instead (409).",
    responses=answers(404, 409, body=True),
)
async def request_sync(segment_id: SegmentId, body: SyncCreate, db: Db, _: SyncKey) -> SyncRun:
    return await service.request_sync(db, segment_id, body.destination_id)


@router.post(
    "/v1/segments/{segment_id}/promotions",
    operation_id="promoteSegment",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Copy a segment from a production store to a staging store",
    description="Starts a run of kind `promotion` (poll it at `/v1/syncs/{id}`): the staging "
    "store ends with exactly the members the production store holds by the worker's record "
    "after its last successful sync, not the segment's current members. Both destinations "
    "must be commerce stores (422), production and staging (409), and production must have "
    "synced the segment successfully (409).",
    responses=answers(404, 409, body=True),
)
async def request_promotion(
    segment_id: SegmentId, body: PromotionCreate, db: Db, _: SyncKey
) -> SyncRun:
    return await service.request_promotion(db, segment_id, body)


@router.get(
    "/v1/segments/{segment_id}/syncs",
    operation_id="listSegmentSyncs",
    summary="List the segment's sync runs and promotions, newest first",
    responses=answers(404),
)
async def list_syncs(
    segment_id: SegmentId,
    db: ReadDb,
    _: ReadKey,
    page: PageQuery,
    destination_id: Annotated[
        uuid.UUID | None, Query(description="Only runs to this destination")
    ] = None,
) -> Page[SyncRun]:
    return await service.list_runs(db, segment_id, destination_id=destination_id, page=page)


@router.get(
    "/v1/segments/{segment_id}/destinations/{destination_id}",
    operation_id="getSegmentDestinationState",
    summary="What a destination holds of the segment, by the worker's record",
    responses=answers(404),
)
async def destination_state(
    segment_id: SegmentId,
    destination_id: DestinationId,
    db: ReadDb,
    _: ReadKey,
) -> DestinationState:
    return await service.destination_state(db, segment_id, destination_id)


@router.get(
    "/v1/syncs",
    operation_id="listSyncs",
    summary="List sync runs across all segments, newest first",
    description="The operator's view: filter by status, trigger, destination or segment.",
    responses=answers(),
)
async def list_all_syncs(
    db: ReadDb,
    _: ReadKey,
    page: PageQuery,
    status_: Annotated[
        SyncStatus | None, Query(alias="status", description="Only runs in this status")
    ] = None,
    trigger: Annotated[
        SyncTrigger | None, Query(description="Only runs asked for this way")
    ] = None,
    destination_id: Annotated[
        uuid.UUID | None, Query(description="Only runs to this destination")
    ] = None,
    segment_id: Annotated[uuid.UUID | None, Query(description="Only runs of this segment")] = None,
) -> Page[SyncRun]:
    filters = RunFilters(
        status=status_, trigger=trigger, destination_id=destination_id, segment_id=segment_id
    )
    return await service.list_all_runs(db, filters, page)


@router.get(
    "/v1/syncs/{sync_id}",
    operation_id="getSync",
    summary="Read a sync run",
    responses=answers(404),
)
async def get_sync(sync_id: Annotated[uuid.UUID, Path()], db: ReadDb, _: ReadKey) -> SyncRun:
    return await service.get_run(db, sync_id)
