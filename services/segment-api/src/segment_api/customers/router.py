from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from segment_api.customers import service
from segment_api.customers.schemas import (
    BulkResult,
    Customer,
    CustomerIn,
    CustomersBulk,
    CustomerSegment,
)
from segment_api.deps import Db, OneStatementDb, ReadDb, ReadKey, WriteKey
from segment_api.fields import Email, ExternalId
from segment_api.listing import PageQuery
from segment_api.pagination import Page
from segment_api.responses import answers, upsert_answers, upserted

router = APIRouter(prefix="/v1/customers", tags=["customers"])

CustomerPath = Annotated[ExternalId, Path(description="The store's own customer id")]


@router.put(
    "/{external_id}",
    operation_id="upsertCustomer",
    status_code=status.HTTP_200_OK,
    summary="Create or update a customer",
    description="Fields left out keep their stored values; `null` clears a field. A customer "
    "created with an email but no `email_status` is `pending` (not reachable).",
    responses=upsert_answers(Customer),
)
async def upsert_customer(
    external_id: CustomerPath,
    body: CustomerIn,
    db: OneStatementDb,
    _: WriteKey,
    response: Response,
) -> Customer:
    customer, was_created = await service.put_customer(db, external_id, body)
    return upserted(response, customer, was_created)


@router.post(
    "/bulk",
    operation_id="bulkUpsertCustomers",
    summary="Create or update up to 10,000 customers",
    description="All or nothing: one invalid item rejects the call with a 422 naming each bad "
    "item by index (`/customers/3/email`), and nothing is written.",
    responses=answers(body=True),
)
async def bulk_upsert_customers(body: CustomersBulk, db: Db, _: WriteKey) -> BulkResult:
    return await service.bulk_upsert(db, body)


@router.get(
    "",
    operation_id="listCustomers",
    summary="List customers, or find them by email",
    responses=answers(),
)
async def list_customers(
    db: ReadDb,
    _: ReadKey,
    page: PageQuery,
    email: Annotated[Email | None, Query(description="Matched case-insensitively")] = None,
) -> Page[Customer]:
    return await service.list_customers(db, email, page)


@router.get(
    "/{external_id}",
    operation_id="getCustomer",
    summary="Read a customer",
    responses=answers(404),
)
async def get_customer(external_id: CustomerPath, db: ReadDb, _: ReadKey) -> Customer:
    return await service.get_customer(db, external_id)


@router.get(
    "/{external_id}/segments",
    operation_id="listCustomerSegments",
    summary="List the segments a customer is in",
    description="Each with how the customer is in it (`via`): `manual` (a manual segment's "
    "member), `rule` (by a rule segment's rule) or `include` (by its explicit include).",
    responses=answers(404),
)
async def list_customer_segments(
    external_id: CustomerPath, db: ReadDb, _: ReadKey, page: PageQuery
) -> Page[CustomerSegment]:
    return await service.list_customer_segments(db, external_id, page)


@router.delete(
    "/{external_id}",
    operation_id="eraseCustomer",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a customer (right to erasure)",
    description="Deletes the customer and their orders; they leave every segment, KPIs are "
    "recomputed, and the next sync removes them from destinations.",
    responses=answers(404),
)
async def erase_customer(external_id: CustomerPath, db: Db, _: WriteKey) -> Response:
    await service.erase_customer(db, external_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
