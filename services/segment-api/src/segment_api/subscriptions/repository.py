import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.types import AnyRow

# `segment_inactive` is the segment's state, read with the subscription.
_SELECT = """
    SELECT s.id, s.segment_id, s.destination_id, s.schedule, s.active, s.next_run_at,
           s.version, s.created_at, s.updated_at, s.change_pending,
           CASE WHEN NOT g.active THEN 'segment_inactive' ELSE s.paused_reason END
               AS paused_reason,
           (SELECT r.id FROM sync_runs r WHERE r.subscription_id = s.id
            ORDER BY r.seq DESC LIMIT 1) AS last_run_id
    FROM subscriptions s JOIN segments g ON g.id = s.segment_id
"""


async def insert(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    destination_id: uuid.UUID,
    schedule: dict[str, Any],
) -> uuid.UUID | None:
    """None when the pair has a subscription already."""
    row = await conn.execute(
        text(
            """
            INSERT INTO subscriptions (id, segment_id, destination_id, schedule)
            VALUES (:id, :segment_id, :destination_id, CAST(:schedule AS jsonb))
            ON CONFLICT (segment_id, destination_id) DO NOTHING
            RETURNING id
            """
        ),
        {
            "id": uuid.uuid4(),
            "segment_id": segment_id,
            "destination_id": destination_id,
            "schedule": json.dumps(schedule),
        },
    )
    return row.scalar_one_or_none()


async def get(conn: AsyncConnection, subscription_id: uuid.UUID) -> AnyRow | None:
    statement = text(_SELECT + " WHERE s.id = :id")
    return (await conn.execute(statement, {"id": subscription_id})).first()


async def lock(conn: AsyncConnection, subscription_id: uuid.UUID) -> AnyRow | None:
    statement = text("SELECT * FROM subscriptions WHERE id = :id FOR NO KEY UPDATE")
    return (await conn.execute(statement, {"id": subscription_id})).first()


async def list_page(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AnyRow]:
    where = " WHERE s.segment_id = :segment_id"
    params: dict[str, Any] = {"segment_id": segment_id, "limit": limit + 1}
    if after is not None:
        where += " AND (s.created_at, s.id) > (:after_created, :after_id)"
        params.update(after_created=after[0], after_id=after[1])
    statement = text(_SELECT + where + " ORDER BY s.created_at, s.id LIMIT :limit")
    return list((await conn.execute(statement, params)).all())


async def update(conn: AsyncConnection, subscription_id: uuid.UUID, values: dict[str, Any]) -> None:
    """A user edit: a new version."""
    assignments = ", ".join(
        f"{name} = CAST(:{name} AS jsonb)" if name == "schedule" else f"{name} = :{name}"
        for name in values
    )
    params = {
        name: json.dumps(value) if name == "schedule" else value for name, value in values.items()
    }
    await conn.execute(
        text(
            f"UPDATE subscriptions SET {assignments}, version = version + 1, updated_at = now() "
            "WHERE id = :id"
        ),
        {**params, "id": subscription_id},
    )


async def delete(conn: AsyncConnection, subscription_id: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM subscriptions WHERE id = :id"), {"id": subscription_id})


async def with_changes_pending(conn: AsyncConnection, segment_id: uuid.UUID) -> list[uuid.UUID]:
    """The segment's subscriptions whose changes came while they were paused."""
    statement = text(
        "SELECT id FROM subscriptions WHERE segment_id = :segment_id AND change_pending"
    )
    return list((await conn.execute(statement, {"segment_id": segment_id})).scalars())


async def set_next_run(conn: AsyncConnection, subscription_id: uuid.UUID, slot: datetime) -> None:
    """Not a user edit: the version stays."""
    await conn.execute(
        text("UPDATE subscriptions SET next_run_at = :slot WHERE id = :id"),
        {"id": subscription_id, "slot": slot},
    )
