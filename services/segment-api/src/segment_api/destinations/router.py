import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from segment_api.deps import AdminKey, Db
from segment_api.destinations import service
from segment_api.destinations.schemas import Destination, DestinationCreate
from segment_api.problems import ProblemException, problem_responses
from segments_shared.secrets import SecretBox

router = APIRouter(prefix="/v1/destinations", tags=["destinations"])


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
    response.headers["ETag"] = f'"{destination.version}"'
    return destination


@router.get(
    "/{destination_id}",
    response_model=Destination,
    summary="Read a destination, credentials masked",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_destination(
    destination_id: Annotated[uuid.UUID, Path()],
    db: Db,
    _: AdminKey,
    request: Request,
    response: Response,
) -> Destination:
    destination = await service.get_destination(db, destination_id, request.app.state.secret_box)
    response.headers["ETag"] = f'"{destination.version}"'
    return destination
