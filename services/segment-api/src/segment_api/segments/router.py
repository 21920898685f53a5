import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status

from segment_api.deps import Db, ReadDb, ReadKey, WriteKey
from segment_api.pagination import Cursor, Limit, Page
from segment_api.problems import problem_responses
from segment_api.segments import service
from segment_api.segments.schemas import (
    Member,
    MembersAdded,
    MembersRemoved,
    MembersRequest,
    Segment,
    SegmentCreate,
    SegmentMetrics,
)

router = APIRouter(prefix="/v1/segments", tags=["segments"])

SegmentId = Annotated[uuid.UUID, Path(description="The segment's id")]


def etag(version: int) -> str:
    return f'"{version}"'


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Segment,
    summary="Create a segment",
    responses=problem_responses(400, 401, 403, 409, 413, 422),
)
async def create_segment(
    body: SegmentCreate, db: Db, key: WriteKey, request: Request, response: Response
) -> Segment:
    segment = await service.create_segment(db, body, key)
    response.headers["Location"] = str(request.url_for("get_segment", segment_id=segment.id))
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.get(
    "",
    response_model=Page[Segment],
    summary="List segments",
    responses=problem_responses(401, 403, 422),
)
async def list_segments(
    db: Db,
    _: ReadKey,
    kind: Literal["default", "user", "custom"] | None = None,
    status_: Annotated[
        Literal["ready", "building", "inactive"] | None, Query(alias="status")
    ] = None,
    active: bool | None = None,
    q: Annotated[str | None, Query(max_length=200, description="Part of the name")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Segment]:
    items, next_cursor = await service.list_segments(
        db, kind=kind, status=status_, active=active, q=q, cursor=cursor, limit=limit
    )
    return Page[Segment](items=items, next_cursor=next_cursor)


@router.get(
    "/{segment_id}",
    response_model=Segment,
    summary="Read a segment, with its KPIs and delivery state",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_segment(segment_id: SegmentId, db: ReadDb, _: ReadKey, response: Response) -> Segment:
    segment = await service.get_segment(db, segment_id)
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.get(
    "/{segment_id}/metrics",
    response_model=SegmentMetrics,
    summary="The segment's lifetime KPIs",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_metrics(segment_id: SegmentId, db: ReadDb, _: ReadKey) -> SegmentMetrics:
    return await service.get_metrics(db, segment_id)


@router.get(
    "/{segment_id}/members",
    response_model=Page[Member],
    summary="List the segment's members",
    responses=problem_responses(401, 403, 404, 422),
)
async def list_members(
    segment_id: SegmentId, db: Db, _: ReadKey, limit: Limit = 100, cursor: Cursor = None
) -> Page[Member]:
    items, next_cursor = await service.list_members(db, segment_id, cursor, limit)
    return Page[Member](items=items, next_cursor=next_cursor)


@router.post(
    "/{segment_id}/members",
    response_model=MembersAdded,
    summary="Add members by external id or by email",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
)
async def add_members(
    segment_id: SegmentId, body: MembersRequest, db: Db, _: WriteKey
) -> MembersAdded:
    return await service.add_members(db, segment_id, body)


@router.post(
    "/{segment_id}/members/remove",
    response_model=MembersRemoved,
    summary="Remove members by external id or by email",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
)
async def remove_members(
    segment_id: SegmentId, body: MembersRequest, db: Db, _: WriteKey
) -> MembersRemoved:
    return await service.remove_members(db, segment_id, body)
