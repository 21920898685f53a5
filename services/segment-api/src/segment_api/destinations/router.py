from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from segment_api.deps import AdminKey, Db, ReadDb, ReadKey
from segment_api.destinations import service
from segment_api.destinations.schemas import Destination, DestinationCreate, DestinationUpdate
from segment_api.listing import PageQuery
from segment_api.pagination import Page
from segment_api.parameters import DestinationId, DestinationIfMatch, IfNoneMatch
from segment_api.problems import ProblemException
from segment_api.responses import (
    NOT_MODIFIED,
    answers,
    created,
    tagged,
    tagged_answer,
    unless_modified,
)
from segments_shared.destinations import DestinationType
from segments_shared.netguard import AllowList
from segments_shared.secrets import SecretBox

router = APIRouter(prefix="/v1/destinations", tags=["destinations"])


def _configured_box(request: Request) -> SecretBox | None:
    box: SecretBox | None = request.app.state.secret_box
    return box


# None when SEGMENTS_SECRET_KEY is not set: reading then masks the credentials without it.
ConfiguredBox = Annotated[SecretBox | None, Depends(_configured_box)]


def _allow_list(request: Request) -> AllowList:
    allow: AllowList = request.app.state.settings.destination_allow_list
    return allow


# SEGMENTS_ALLOW_PRIVATE_DESTINATIONS: the private hosts and ranges a destination may use.
Allowed = Annotated[AllowList, Depends(_allow_list)]


def secret_box(request: Request) -> SecretBox:
    """The box that writing credentials needs. Called in the handler rather than declared as a
    dependency, so that an invalid body is still answered 422 before this 503."""
    box = _configured_box(request)
    if box is None:
        raise ProblemException(
            503, "SEGMENTS_SECRET_KEY is not set: destination credentials cannot be encrypted"
        )
    return box


@router.post(
    "",
    operation_id="createDestination",
    status_code=status.HTTP_201_CREATED,
    summary="Create a destination (the vendor is not contacted)",
    responses={**tagged_answer(201, location=True), **answers(503, body=True)},
)
async def create_destination(
    body: DestinationCreate,
    db: Db,
    _: AdminKey,
    allow: Allowed,
    request: Request,
    response: Response,
) -> Destination:
    destination = await service.create_destination(db, body, secret_box(request), allow)
    return created(request, response, destination, "get_destination", "destination_id")


@router.get(
    "",
    operation_id="listDestinations",
    summary="List destinations, credentials masked",
    description="With `segments:read`, so that a screen can offer a destination picker; "
    "credentials are masked whatever the key.",
    responses=answers(),
)
async def list_destinations(
    db: ReadDb,
    _: ReadKey,
    box: ConfiguredBox,
    page: PageQuery,
    type_: Annotated[DestinationType | None, Query(alias="type")] = None,
) -> Page[Destination]:
    return await service.list_destinations(db, box, destination_type=type_, page=page)


@router.get(
    "/{destination_id}",
    operation_id="getDestination",
    summary="Read a destination, credentials masked",
    response_model=Destination,
    responses={**tagged_answer(), **NOT_MODIFIED, **answers(404)},
)
async def get_destination(
    destination_id: DestinationId,
    db: ReadDb,
    _: ReadKey,
    box: ConfiguredBox,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> Destination | Response:
    destination = await service.get_destination(db, destination_id, box)
    return unless_modified(response, destination, if_none_match)


@router.patch(
    "/{destination_id}",
    operation_id="updateDestination",
    summary="Change a destination's name or configuration",
    description="`config` is merged into the current configuration and validated as a whole. "
    "Pointing the destination elsewhere (another base URL, audience, store or webhook URL) "
    "forgets what it was known to hold: the next sync finds its segments by name there.",
    responses={**tagged_answer(), **answers(404, 409, 412, 503, body=True)},
)
async def update_destination(
    destination_id: DestinationId,
    body: DestinationUpdate,
    db: Db,
    _: AdminKey,
    box: ConfiguredBox,
    allow: Allowed,
    response: Response,
    if_match: DestinationIfMatch = None,
) -> Destination:
    destination = await service.update_destination(db, destination_id, body, if_match, box, allow)
    return tagged(response, destination)


@router.delete(
    "/{destination_id}",
    operation_id="deleteDestination",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a destination (its remote segments stay at the vendor)",
    responses=answers(404, 412),
)
async def delete_destination(
    destination_id: DestinationId, db: Db, _: AdminKey, if_match: DestinationIfMatch = None
) -> Response:
    await service.delete_destination(db, destination_id, if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
