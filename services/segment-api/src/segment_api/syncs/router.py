import uuid
from typing import Annotated

from fastapi import APIRouter, Path, status

from segment_api.deps import Db, ReadKey, SyncKey
from segment_api.problems import problem_responses
from segment_api.syncs import service
from segment_api.syncs.schemas import SyncCreate, SyncRun

router = APIRouter(tags=["syncs"])


@router.post(
    "/v1/segments/{segment_id}/syncs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SyncRun,
    summary="Sync a segment to a destination",
    description="Answers the run already queued or running for this segment and destination "
    "instead of starting a second one.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422),
)
async def request_sync(
    segment_id: Annotated[uuid.UUID, Path()], body: SyncCreate, db: Db, _: SyncKey
) -> SyncRun:
    return await service.request_sync(db, segment_id, body.destination_id)


@router.get(
    "/v1/syncs/{sync_id}",
    response_model=SyncRun,
    summary="Read a sync run",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_sync(sync_id: Annotated[uuid.UUID, Path()], db: Db, _: ReadKey) -> SyncRun:
    return await service.get_run(db, sync_id)
