from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from segment_api.deps import Db, ReadDb, ReadKey, Settings, WriteKey
from segment_api.fields import ExternalId
from segment_api.orders import repository, service
from segment_api.orders.schemas import BulkResult, Order, OrderIn, OrdersBulk
from segment_api.problems import not_found, problem_responses

router = APIRouter(prefix="/v1/orders", tags=["orders"])

OrderPath = Annotated[ExternalId, Path(description="The store's own order id")]


@router.put(
    "/{external_id}",
    response_model=Order,
    summary="Create or update an order",
    responses={
        201: {"model": Order, "description": "Created"},
        200: {"description": "Updated"},
        **problem_responses(400, 401, 403, 413, 422),
    },
)
async def upsert_order(
    external_id: OrderPath,
    body: OrderIn,
    db: Db,
    settings: Settings,
    _: WriteKey,
    response: Response,
) -> Order:
    order, created = await service.put_order(db, external_id, body, settings.store_currency)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return order


@router.post(
    "/bulk",
    response_model=BulkResult,
    summary="Create or update up to 10,000 orders",
    description="All or nothing: one invalid item (an unknown customer, another currency, a "
    "missing field on a new order) rejects the call with a 422 naming each bad item by index.",
    responses=problem_responses(400, 401, 403, 413, 422),
)
async def bulk_upsert_orders(
    body: OrdersBulk, db: Db, settings: Settings, _: WriteKey
) -> BulkResult:
    return await service.bulk_upsert(db, body, settings.store_currency)


@router.get(
    "/{external_id}",
    response_model=Order,
    summary="Read an order",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_order(external_id: OrderPath, db: ReadDb, _: ReadKey) -> Order:
    row = await repository.get(db, external_id)
    if row is None:
        raise not_found("order", external_id)
    return Order.model_validate(row, from_attributes=True)
