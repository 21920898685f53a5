from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from segment_api.customers import repository
from segment_api.customers.schemas import Customer, CustomerIn
from segment_api.customers.service import put_customer, to_customer
from segment_api.deps import Db, ReadKey, WriteKey
from segment_api.fields import ExternalId
from segment_api.problems import not_found, problem_responses

router = APIRouter(prefix="/v1/customers", tags=["customers"])

CustomerPath = Annotated[ExternalId, Path(description="The store's own customer id")]


@router.put(
    "/{external_id}",
    response_model=Customer,
    status_code=status.HTTP_200_OK,
    summary="Create or update a customer",
    responses={
        201: {"model": Customer, "description": "Created"},
        200: {"description": "Updated"},
        **problem_responses(400, 401, 403, 413, 422),
    },
)
async def upsert_customer(
    external_id: CustomerPath, body: CustomerIn, db: Db, _: WriteKey, response: Response
) -> Customer:
    customer, created = await put_customer(db, external_id, body)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return customer


@router.get(
    "/{external_id}",
    response_model=Customer,
    summary="Read a customer",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_customer(external_id: CustomerPath, db: Db, _: ReadKey) -> Customer:
    row = await repository.get(db, external_id)
    if row is None:
        raise not_found("customer", external_id)
    return to_customer(row)
