import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status

from segment_api.deps import Db, ReadDb, ReadKey, SyncKey
from segment_api.listing import PageQuery
from segment_api.pagination import Page
from segment_api.parameters import IfNoneMatch, SegmentId
from segment_api.responses import (
    NOT_MODIFIED,
    answers,
    created,
    tagged,
    tagged_answer,
    unless_modified,
)
from segment_api.subscriptions import service
from segment_api.subscriptions.schemas import Subscription, SubscriptionCreate, SubscriptionUpdate

router = APIRouter(tags=["subscriptions"])

SubscriptionId = Annotated[uuid.UUID, Path(description="The subscription's id")]
SubscriptionIfMatch = Annotated[
    str | None,
    Header(description="The subscription's ETag; on mismatch the request fails with 412"),
]


@router.post(
    "/v1/segments/{segment_id}/subscriptions",
    status_code=status.HTTP_201_CREATED,
    operation_id="createSubscription",
    summary="Keep a destination in step with the segment, on change or on a schedule",
    description="One subscription per segment and destination (409); a commerce staging "
    "store cannot be subscribed (409: it is filled by promotions).",
    responses={**tagged_answer(201, location=True), **answers(404, 409, body=True)},
)
async def create_subscription(
    segment_id: SegmentId,
    body: SubscriptionCreate,
    db: Db,
    _: SyncKey,
    request: Request,
    response: Response,
) -> Subscription:
    subscription = await service.create_subscription(db, segment_id, body)
    return created(request, response, subscription, "get_subscription", "subscription_id")


@router.get(
    "/v1/segments/{segment_id}/subscriptions",
    operation_id="listSegmentSubscriptions",
    summary="List the segment's subscriptions",
    responses=answers(404),
)
async def list_subscriptions(
    segment_id: SegmentId, db: ReadDb, _: ReadKey, page: PageQuery
) -> Page[Subscription]:
    return await service.list_subscriptions(db, segment_id, page)


@router.get(
    "/v1/subscriptions/{subscription_id}",
    operation_id="getSubscription",
    response_model=Subscription,
    summary="Read a subscription",
    responses={**tagged_answer(), **NOT_MODIFIED, **answers(404)},
)
async def get_subscription(
    subscription_id: SubscriptionId,
    db: ReadDb,
    _: ReadKey,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> Subscription | Response:
    subscription = await service.get_subscription(db, subscription_id)
    return unless_modified(response, subscription, if_none_match)


@router.patch(
    "/v1/subscriptions/{subscription_id}",
    operation_id="updateSubscription",
    summary="Change a subscription's schedule, pause it or resume it",
    description="`active: true` resumes a subscription paused after authentication failures.",
    responses={**tagged_answer(), **answers(404, 412, body=True)},
)
async def update_subscription(
    subscription_id: SubscriptionId,
    body: SubscriptionUpdate,
    db: Db,
    _: SyncKey,
    response: Response,
    if_match: SubscriptionIfMatch = None,
) -> Subscription:
    subscription = await service.update_subscription(db, subscription_id, body, if_match)
    return tagged(response, subscription)


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="deleteSubscription",
    summary="Delete a subscription (a run it started goes on)",
    responses=answers(404, 412),
)
async def delete_subscription(
    subscription_id: SubscriptionId, db: Db, _: SyncKey, if_match: SubscriptionIfMatch = None
) -> Response:
    await service.delete_subscription(db, subscription_id, if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
