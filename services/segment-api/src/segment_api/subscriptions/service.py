"""Subscriptions (SPEC §6.1): one per segment and destination. segment-api stores them and
makes their job due (queue `subscription`, keyed by the subscription's id: at the next slot
for `interval` and `cron`, at once when a paused one with changes pending resumes); the
sync-worker folds changes into `on_change` jobs and carries every job out
(sync_worker/subscriptions.py, docs/sync.md#subscriptions)."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from segment_api.listing import PageRequest
from segment_api.pagination import Page
from segment_api.problems import ProblemException, not_found
from segment_api.segments.service import require_segment
from segment_api.subscriptions import repository
from segment_api.subscriptions.resume import SUBSCRIPTIONS
from segment_api.subscriptions.schemas import Subscription, SubscriptionCreate, SubscriptionUpdate
from segment_api.syncs.service import get_run, syncable_destination
from segment_api.versions import check_if_match
from segments_shared.db.types import AnyRow
from segments_shared.jobs import store
from segments_shared.schedules import first_slot


async def _subscription_of(conn: AsyncConnection, row: AnyRow) -> Subscription:
    return Subscription(
        id=row.id,
        segment_id=row.segment_id,
        destination_id=row.destination_id,
        schedule=row.schedule,
        active=row.active,
        paused_reason=row.paused_reason,
        next_run_at=row.next_run_at,
        last_run=await get_run(conn, row.last_run_id) if row.last_run_id else None,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def get_subscription(conn: AsyncConnection, subscription_id: uuid.UUID) -> Subscription:
    row = await repository.get(conn, subscription_id)
    if row is None:
        raise not_found("subscription", subscription_id)
    return await _subscription_of(conn, row)


async def _schedule_next(
    conn: AsyncConnection, subscription_id: uuid.UUID, schedule: dict[str, Any]
) -> dict[str, Any]:
    """An interval or cron subscription's first slot, and its job due then."""
    now = datetime.now(UTC)
    slot = first_slot(schedule, now)
    if slot is not None:
        delay = max((slot - now).total_seconds(), 0.0)
        await store.request(conn, SUBSCRIPTIONS, str(subscription_id), delay=delay)
    return {"next_run_at": slot}


async def create_subscription(
    conn: AsyncConnection, segment_id: uuid.UUID, body: SubscriptionCreate
) -> Subscription:
    await require_segment(conn, segment_id)
    await syncable_destination(conn, segment_id, body.destination_id)
    schedule = body.schedule.model_dump()
    subscription_id = await repository.insert(conn, segment_id, body.destination_id, schedule)
    if subscription_id is None:
        raise ProblemException(
            409,
            f"segment {segment_id} already has a subscription to destination "
            f"{body.destination_id}: change its schedule with PATCH",
        )
    next_slot = await _schedule_next(conn, subscription_id, schedule)
    if next_slot["next_run_at"] is not None:
        await repository.set_next_run(conn, subscription_id, next_slot["next_run_at"])
    return await get_subscription(conn, subscription_id)


async def list_subscriptions(
    conn: AsyncConnection, segment_id: uuid.UUID, page: PageRequest
) -> Page[Subscription]:
    await require_segment(conn, segment_id)
    rows = await repository.list_page(
        conn, segment_id, after=page.after_created(), limit=page.limit
    )
    return Page(
        items=[await _subscription_of(conn, row) for row in rows[: page.limit]],
        next_cursor=page.next_cursor(rows, lambda row: (row.created_at.isoformat(), row.id)),
    )


async def _locked(
    conn: AsyncConnection, subscription_id: uuid.UUID, if_match: str | None
) -> AnyRow:
    row = await repository.lock(conn, subscription_id)
    if row is None:
        raise not_found("subscription", subscription_id)
    check_if_match(if_match, row.version)
    return row


async def update_subscription(
    conn: AsyncConnection,
    subscription_id: uuid.UUID,
    body: SubscriptionUpdate,
    if_match: str | None,
) -> Subscription:
    row = await _locked(conn, subscription_id, if_match)
    values: dict[str, Any] = {}
    if body.schedule is not None:
        schedule = body.schedule.model_dump()
        if schedule != row.schedule:
            values["schedule"] = schedule
            values.update(await _schedule_next(conn, subscription_id, schedule))
    if body.active is not None and (body.active != row.active or row.paused_reason):
        values["active"] = body.active
        if body.active:
            # Resumes one paused after authentication failures, and runs what it missed.
            values.update(paused_reason=None, auth_failures=0)
            if row.change_pending:
                await store.request(conn, SUBSCRIPTIONS, str(subscription_id))
    if values:
        await repository.update(conn, subscription_id, values)
    return await get_subscription(conn, subscription_id)


async def delete_subscription(
    conn: AsyncConnection, subscription_id: uuid.UUID, if_match: str | None
) -> None:
    await _locked(conn, subscription_id, if_match)
    # Its job, if any, finds no subscription and goes.
    await repository.delete(conn, subscription_id)
