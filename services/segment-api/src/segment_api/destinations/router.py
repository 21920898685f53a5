import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from segment_api.deps import AdminKey, Db, ReadDb
from segment_api.destinations import service
from segment_api.destinations.schemas import Destination, DestinationCreate, DestinationUpdate
from segment_api.pagination import Cursor, Limit, Page
from segment_api.problems import ProblemException, problem_responses
from segments_shared.destinations import DestinationType
from segments_shared.secrets import SecretBox

router = APIRouter(prefix="/v1/destinations", tags=["destinations"])

DestinationId = Annotated[uuid.UUID, Path(description="The destination's id")]
IfMatch = Annotated[
    str | None,
    Header(description="The destination's ETag; on mismatch the request fails with 412"),
]


def etag(version: int) -> str:
    return f'"{version}"'


def secret_box(request: Request) -> SecretBox:
    box: SecretBox | None = request.app.state.secret_box
    if box is None:
        raise ProblemException(
            503, "SEGMENTS_SECRET_KEY is not set: destination credentials cannot be encrypted"
        )
    return box


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Destination,
    summary="Create a destination (the vendor is not contacted)",
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
async def create_destination(
    body: DestinationCreate, db: Db, _: AdminKey, request: Request, response: Response
) -> Destination:
    destination = await service.create_destination(db, body, secret_box(request))
    response.headers["Location"] = str(
        request.url_for("get_destination", destination_id=destination.id)
    )
    response.headers["ETag"] = etag(destination.version)
    return destination


@router.get(
    "",
    response_model=Page[Destination],
    summary="List destinations, credentials masked",
    responses=problem_responses(401, 403, 422),
)
async def list_destinations(
    db: ReadDb,
    _: AdminKey,
    request: Request,
    type_: Annotated[DestinationType | None, Query(alias="type")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Destination]:
    items, next_cursor = await service.list_destinations(
        db, request.app.state.secret_box, destination_type=type_, cursor=cursor, limit=limit
    )
    return Page[Destination](items=items, next_cursor=next_cursor)


@router.get(
    "/{destination_id}",
    response_model=Destination,
    summary="Read a destination, credentials masked",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_destination(
    destination_id: DestinationId,
    db: ReadDb,
    _: AdminKey,
    request: Request,
    response: Response,
) -> Destination:
    destination = await service.get_destination(db, destination_id, request.app.state.secret_box)
    response.headers["ETag"] = etag(destination.version)
    return destination


@router.patch(
    "/{destination_id}",
    response_model=Destination,
    summary="Change a destination's name or configuration",
    description="`config` is merged into the current configuration and validated as a whole. "
    "Pointing the destination elsewhere (another base URL, audience, store or webhook URL) "
    "forgets what it was known to hold: the next sync finds its segments by name there.",
    responses=problem_responses(400, 401, 403, 404, 409, 412, 413, 422, 503),
)
async def update_destination(
    destination_id: DestinationId,
    body: DestinationUpdate,
    db: Db,
    _: AdminKey,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> Destination:
    destination = await service.update_destination(
        db, destination_id, body, if_match, request.app.state.secret_box
    )
    response.headers["ETag"] = etag(destination.version)
    return destination


@router.delete(
    "/{destination_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a destination (its remote segments stay at the vendor)",
    responses=problem_responses(401, 403, 404, 412, 422),
)
async def delete_destination(
    destination_id: DestinationId, db: Db, _: AdminKey, if_match: IfMatch = None
) -> Response:
    await service.delete_destination(db, destination_id, if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
