import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from segment_api.deps import Db, ReadDb, ReadKey, WriteKey
from segment_api.pagination import Cursor, Limit, Page
from segment_api.problems import problem_responses
from segment_api.rules.refresher import wake_refresher
from segment_api.segments import export, service
from segment_api.segments.schemas import (
    DuplicateRequest,
    HistoryEntry,
    Member,
    MembersAdded,
    MembersRemoved,
    MembersRequest,
    Segment,
    SegmentCreate,
    SegmentMetrics,
    SegmentUpdate,
)

router = APIRouter(prefix="/v1/segments", tags=["segments"])

SegmentId = Annotated[uuid.UUID, Path(description="The segment's id")]
IfMatch = Annotated[
    str | None,
    Header(description="The segment's ETag; on mismatch the request fails with 412"),
]


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
    body: SegmentCreate,
    db: Db,
    key: WriteKey,
    request: Request,
    response: Response,
    background: BackgroundTasks,
) -> Segment:
    segment = await service.create_segment(db, body, key)
    background.add_task(wake_refresher, request.app)
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


@router.patch(
    "/{segment_id}",
    response_model=Segment,
    summary="Edit a segment's name, description, definition or kind",
    responses=problem_responses(400, 401, 403, 404, 409, 412, 413, 422),
)
async def update_segment(
    segment_id: SegmentId,
    body: SegmentUpdate,
    db: Db,
    key: WriteKey,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    if_match: IfMatch = None,
) -> Segment:
    segment = await service.update_segment(db, segment_id, body, key, if_match)
    background.add_task(wake_refresher, request.app)
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.delete(
    "/{segment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a segment (destinations are not touched)",
    responses=problem_responses(401, 403, 404, 409, 412, 422),
)
async def delete_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, if_match: IfMatch = None
) -> Response:
    await service.delete_segment(db, segment_id, if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{segment_id}/duplicate",
    status_code=status.HTTP_201_CREATED,
    response_model=Segment,
    summary="Copy a segment: same definition, same members",
    description='The copy is a `user` segment named "<name> (copy)", "<name> (copy 2)", ... '
    "unless a name is given.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422),
)
async def duplicate_segment(
    segment_id: SegmentId,
    db: Db,
    _: WriteKey,
    request: Request,
    response: Response,
    body: DuplicateRequest | None = None,
) -> Segment:
    copy = await service.duplicate_segment(db, segment_id, body or DuplicateRequest())
    response.headers["Location"] = str(request.url_for("get_segment", segment_id=copy.id))
    response.headers["ETag"] = etag(copy.version)
    return copy


@router.post(
    "/{segment_id}/deactivate",
    response_model=Segment,
    summary="Deactivate: keeps the members, stops refreshes and syncs",
    responses=problem_responses(401, 403, 404, 412, 422),
)
async def deactivate_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, response: Response, if_match: IfMatch = None
) -> Segment:
    segment = await service.set_active(db, segment_id, False, if_match)
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.post(
    "/{segment_id}/activate",
    response_model=Segment,
    summary="Activate a deactivated segment",
    responses=problem_responses(401, 403, 404, 412, 422),
)
async def activate_segment(
    segment_id: SegmentId,
    db: Db,
    _: WriteKey,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    if_match: IfMatch = None,
) -> Segment:
    segment = await service.set_active(db, segment_id, True, if_match)
    background.add_task(wake_refresher, request.app)
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.post(
    "/{segment_id}/refresh",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Segment,
    summary="Recompute a rule segment's membership now",
    description="Answers at once with the segment, `status` `building`; the old membership "
    "stays readable until the new one replaces it in one transaction. Manual and inactive "
    "segments are not refreshed (409).",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def refresh_segment(
    segment_id: SegmentId,
    db: Db,
    _: WriteKey,
    request: Request,
    response: Response,
    background: BackgroundTasks,
) -> Segment:
    segment = await service.request_refresh(db, segment_id)
    background.add_task(wake_refresher, request.app)
    response.headers["ETag"] = etag(segment.version)
    return segment


@router.get(
    "/{segment_id}/history",
    response_model=Page[HistoryEntry],
    summary="Membership changes over time, newest first",
    responses=problem_responses(401, 403, 404, 422),
)
async def segment_history(
    segment_id: SegmentId, db: ReadDb, _: ReadKey, limit: Limit = 100, cursor: Cursor = None
) -> Page[HistoryEntry]:
    items, next_cursor = await service.list_history(db, segment_id, cursor, limit)
    return Page[HistoryEntry](items=items, next_cursor=next_cursor)


@router.get(
    "/{segment_id}/export.csv",
    response_class=StreamingResponse,
    summary="Download the members as CSV",
    description="RFC 4180 CSV, UTF-8, a header row, one row per member with an email, sorted "
    "by email. Columns: `email`, then those asked for in `include`, in the order first_name, "
    "last_name, shipping_address, billing_address; an address becomes six columns "
    "(`shipping_address_line1`, `_line2`, `_city`, `_region`, `_postal_code`, `_country`). "
    "Cells starting with `=`, `+`, `-`, `@`, a tab or a carriage return get a leading `'`.",
    responses={
        200: {
            "description": "The CSV file, streamed",
            "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(401, 403, 404, 422),
    },
)
async def export_csv(
    segment_id: SegmentId,
    db: ReadDb,
    _: ReadKey,
    request: Request,
    include: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Comma-separated: first_name, last_name, shipping_address, billing_address",
            examples=["first_name,last_name,shipping_address"],
        ),
    ] = None,
) -> StreamingResponse:
    columns = export.parse_include(include)
    segment = await service.get_segment(db, segment_id)
    return export.CsvResponse(
        export.stream_csv(request.app.state.engine, segment_id, columns),
        headers={"Content-Disposition": export.filename(segment.name)},
    )
