from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from segment_api.deps import Db, ReadDb, ReadKey, WriteKey
from segment_api.listing import PageQuery
from segment_api.pagination import Page
from segment_api.parameters import IfNoneMatch, SegmentId, SegmentIfMatch
from segment_api.responses import (
    NOT_MODIFIED,
    answers,
    created,
    tagged,
    tagged_answer,
    unless_modified,
)
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


async def _wake_refresher_after(request: Request, background: BackgroundTasks) -> None:
    background.add_task(wake_refresher, request.app)


# An operation that can make a rule segment due: the refresher looks at once, rather than at
# its next poll. A background task runs only after a successful answer.
WAKES_REFRESHER = Depends(_wake_refresher_after)


def created_segment(request: Request, response: Response, segment: Segment) -> Segment:
    """A new segment's answer (here and in targets/router.py): its ETag, and as Location the
    URL of get_segment below, so that no other router spells that route's name."""
    return created(request, response, segment, "get_segment", "segment_id")


@router.post(
    "",
    operation_id="createSegment",
    status_code=status.HTTP_201_CREATED,
    summary="Create a segment",
    responses={**tagged_answer(201, location=True), **answers(409, body=True)},
    dependencies=[WAKES_REFRESHER],
)
async def create_segment(
    body: SegmentCreate, db: Db, key: WriteKey, request: Request, response: Response
) -> Segment:
    segment = await service.create_segment(db, body, key)
    return created_segment(request, response, segment)


@router.get(
    "",
    operation_id="listSegments",
    summary="List segments",
    responses=answers(),
)
async def list_segments(
    db: Db,
    _: ReadKey,
    page: PageQuery,
    kind: Literal["default", "user", "custom"] | None = None,
    status_: Annotated[
        Literal["ready", "building", "inactive"] | None, Query(alias="status")
    ] = None,
    active: bool | None = None,
    q: Annotated[str | None, Query(max_length=200, description="Part of the name")] = None,
) -> Page[Segment]:
    return await service.list_segments(db, kind=kind, status=status_, active=active, q=q, page=page)


@router.get(
    "/{segment_id}",
    operation_id="getSegment",
    summary="Read a segment, with its KPIs and delivery state",
    response_model=Segment,
    responses={**tagged_answer(), **NOT_MODIFIED, **answers(404)},
)
async def get_segment(
    segment_id: SegmentId,
    db: ReadDb,
    _: ReadKey,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> Segment | Response:
    segment = await service.get_segment(db, segment_id)
    return unless_modified(response, segment, if_none_match)


@router.get(
    "/{segment_id}/metrics",
    operation_id="getSegmentMetrics",
    summary="The segment's lifetime KPIs",
    responses=answers(404),
)
async def get_metrics(segment_id: SegmentId, db: ReadDb, _: ReadKey) -> SegmentMetrics:
    return await service.get_metrics(db, segment_id)


@router.get(
    "/{segment_id}/members",
    operation_id="listSegmentMembers",
    summary="List the segment's members",
    responses=answers(404),
)
async def list_members(segment_id: SegmentId, db: Db, _: ReadKey, page: PageQuery) -> Page[Member]:
    return await service.list_members(db, segment_id, page)


@router.post(
    "/{segment_id}/members",
    operation_id="addSegmentMembers",
    summary="Add members by external id or by email",
    responses=answers(404, body=True),
)
async def add_members(
    segment_id: SegmentId, body: MembersRequest, db: Db, _: WriteKey
) -> MembersAdded:
    return await service.add_members(db, segment_id, body)


@router.post(
    "/{segment_id}/members/remove",
    operation_id="removeSegmentMembers",
    summary="Remove members by external id or by email",
    responses=answers(404, body=True),
)
async def remove_members(
    segment_id: SegmentId, body: MembersRequest, db: Db, _: WriteKey
) -> MembersRemoved:
    return await service.remove_members(db, segment_id, body)


@router.patch(
    "/{segment_id}",
    operation_id="updateSegment",
    summary="Edit a segment's name, description, definition or kind",
    responses={**tagged_answer(), **answers(404, 409, 412, body=True)},
    dependencies=[WAKES_REFRESHER],
)
async def update_segment(
    segment_id: SegmentId,
    body: SegmentUpdate,
    db: Db,
    key: WriteKey,
    response: Response,
    if_match: SegmentIfMatch = None,
) -> Segment:
    segment = await service.update_segment(db, segment_id, body, key, if_match)
    return tagged(response, segment)


@router.delete(
    "/{segment_id}",
    operation_id="deleteSegment",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a segment (destinations are not touched)",
    responses=answers(404, 409, 412),
)
async def delete_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, if_match: SegmentIfMatch = None
) -> Response:
    await service.delete_segment(db, segment_id, if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{segment_id}/duplicate",
    operation_id="duplicateSegment",
    status_code=status.HTTP_201_CREATED,
    summary="Copy a segment: same definition, same members",
    description='The copy is a `user` segment named "<name> (copy)", "<name> (copy 2)", ... '
    "unless a name is given.",
    responses={**tagged_answer(201, location=True), **answers(404, 409, body=True)},
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
    return created_segment(request, response, copy)


@router.post(
    "/{segment_id}/deactivate",
    operation_id="deactivateSegment",
    summary="Deactivate: keeps the members, stops refreshes and syncs",
    responses={**tagged_answer(), **answers(404, 412)},
)
async def deactivate_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, response: Response, if_match: SegmentIfMatch = None
) -> Segment:
    segment = await service.set_active(db, segment_id, False, if_match)
    return tagged(response, segment)


@router.post(
    "/{segment_id}/activate",
    operation_id="activateSegment",
    summary="Activate a deactivated segment",
    responses={**tagged_answer(), **answers(404, 412)},
    dependencies=[WAKES_REFRESHER],
)
async def activate_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, response: Response, if_match: SegmentIfMatch = None
) -> Segment:
    segment = await service.set_active(db, segment_id, True, if_match)
    return tagged(response, segment)


@router.post(
    "/{segment_id}/refresh",
    operation_id="refreshSegment",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Recompute a rule segment's membership now",
    description="Answers at once with the segment, `status` `building`; the old membership "
    "stays readable until the new one replaces it in one transaction. Manual and inactive "
    "segments are not refreshed (409).",
    responses={**tagged_answer(202), **answers(404, 409)},
    dependencies=[WAKES_REFRESHER],
)
async def refresh_segment(
    segment_id: SegmentId, db: Db, _: WriteKey, response: Response
) -> Segment:
    segment = await service.request_refresh(db, segment_id)
    return tagged(response, segment)


@router.get(
    "/{segment_id}/history",
    operation_id="listSegmentHistory",
    summary="Membership changes over time, newest first",
    responses=answers(404),
)
async def segment_history(
    segment_id: SegmentId, db: ReadDb, _: ReadKey, page: PageQuery
) -> Page[HistoryEntry]:
    return await service.list_history(db, segment_id, page)


@router.get(
    "/{segment_id}/export.csv",
    operation_id="exportSegmentCsv",
    response_class=StreamingResponse,
    summary="Download the members as CSV",
    description="RFC 4180 CSV, UTF-8, a header row, one row per member with an email, sorted "
    "by email. Columns: `email`, then those asked for in `include`, in the order first_name, "
    "last_name, shipping_address, billing_address; an address becomes six columns "
    "(`shipping_address_line1`, `_line2`, `_city`, `_region`, `_postal_code`, `_country`). "
    "Cells starting with `=`, `+`, `-`, `@`, a tab or a carriage return get a leading `'`.",
    responses={
        200: {
            "description": "The CSV file, streamed (`Content-Disposition: attachment`)",
            # Text, not `format: binary`: generated clients read it as a string.
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **answers(404),
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
