from typing import Annotated

from fastapi import APIRouter, Path, Response

from segment_api.deps import Db, ReadDb, ReadKey, Settings, WriteKey
from segment_api.fields import ExternalId
from segment_api.orders import repository, service
from segment_api.orders.schemas import BulkResult, Order, OrderIn, OrdersBulk
from segment_api.problems import not_found
from segment_api.responses import answers, upsert_answers, upserted

router = APIRouter(prefix="/v1/orders", tags=["orders"])

OrderPath = Annotated[ExternalId, Path(description="The store's own order id")]


@router.put(
    "/{external_id}",
    operation_id="upsertOrder",
    summary="Create or update an order",
    responses=upsert_answers(Order),
)
async def upsert_order(
    external_id: OrderPath,
    body: OrderIn,
    db: Db,
    settings: Settings,
    _: WriteKey,
    response: Response,
) -> Order:
    order, was_created = await service.put_order(db, external_id, body, settings.store_currency)
    return upserted(response, order, was_created)


@router.post(
    "/bulk",
    operation_id="bulkUpsertOrders",
    summary="Create or update up to 10,000 orders",
    description="All or nothing: one invalid item (an unknown customer, another currency, a "
    "missing field on a new order) rejects the call with a 422 naming each bad item by index.",
    responses=answers(body=True),
)
async def bulk_upsert_orders(
    body: OrdersBulk, db: Db, settings: Settings, _: WriteKey
) -> BulkResult:
    return await service.bulk_upsert(db, body, settings.store_currency)


@router.get(
    "/{external_id}",
    operation_id="getOrder",
    summary="Read an order",
    responses=answers(404),
)
async def get_order(external_id: OrderPath, db: ReadDb, _: ReadKey) -> Order:
    row = await repository.get(db, external_id)
    if row is None:
        raise not_found("order", external_id)
    return Order.model_validate(row, from_attributes=True)
