from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from segment_api.customers import repository, service
from segment_api.customers.schemas import BulkResult, Customer, CustomerIn, CustomersBulk
from segment_api.deps import Db, OneStatementDb, ReadDb, ReadKey, WriteKey
from segment_api.fields import Email, ExternalId
from segment_api.pagination import Cursor, Limit, Page
from segment_api.problems import not_found, problem_responses

router = APIRouter(prefix="/v1/customers", tags=["customers"])

CustomerPath = Annotated[ExternalId, Path(description="The store's own customer id")]


@router.put(
    "/{external_id}",
    response_model=Customer,
    status_code=status.HTTP_200_OK,
    summary="Create or update a customer",
    description="Fields left out keep their stored values; `null` clears a field. A customer "
    "created with an email but no `email_status` is `pending` (not reachable).",
    responses={
        201: {"model": Customer, "description": "Created"},
        200: {"description": "Updated"},
        **problem_responses(400, 401, 403, 413, 422),
    },
)
async def upsert_customer(
    external_id: CustomerPath,
    body: CustomerIn,
    db: OneStatementDb,
    _: WriteKey,
    response: Response,
) -> Customer:
    customer, created = await service.put_customer(db, external_id, body)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return customer


@router.post(
    "/bulk",
    response_model=BulkResult,
    summary="Create or update up to 10,000 customers",
    description="All or nothing: one invalid item rejects the call with a 422 naming each bad "
    "item by index (`/customers/3/email`), and nothing is written.",
    responses=problem_responses(400, 401, 403, 413, 422),
)
async def bulk_upsert_customers(body: CustomersBulk, db: Db, _: WriteKey) -> BulkResult:
    return await service.bulk_upsert(db, body)


@router.get(
    "",
    response_model=Page[Customer],
    summary="List customers, or find them by email",
    responses=problem_responses(401, 403, 422),
)
async def list_customers(
    db: ReadDb,
    _: ReadKey,
    email: Annotated[Email | None, Query(description="Matched case-insensitively")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Customer]:
    items, next_cursor = await service.list_customers(db, email, cursor, limit)
    return Page[Customer](items=items, next_cursor=next_cursor)


@router.get(
    "/{external_id}",
    response_model=Customer,
    summary="Read a customer",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_customer(external_id: CustomerPath, db: ReadDb, _: ReadKey) -> Customer:
    row = await repository.get(db, external_id)
    if row is None:
        raise not_found("customer", external_id)
    return service.to_customer(row)


@router.delete(
    "/{external_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a customer (right to erasure)",
    description="Deletes the customer and their orders; they leave every segment, KPIs are "
    "recomputed, and the next sync removes them from destinations.",
    responses=problem_responses(401, 403, 404, 422),
)
async def erase_customer(external_id: CustomerPath, db: Db, _: WriteKey) -> Response:
    await service.erase_customer(db, external_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
