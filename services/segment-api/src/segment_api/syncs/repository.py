import uuid
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import DestinationSegment, SyncRun, SyncRunFailure
from segments_shared.db.types import AnyRow

FAILED_RECORDS_SHOWN = 20


async def insert_run(conn: AsyncConnection, values: dict[str, Any]) -> uuid.UUID | None:
    """None when a run for this segment and destination is already queued or running."""
    statement = (
        insert(SyncRun)
        .values(id=uuid.uuid4(), **values)
        .on_conflict_do_nothing(
            index_elements=[SyncRun.segment_id, SyncRun.destination_id],
            index_where=text("status IN ('queued', 'running')"),
        )
        .returning(SyncRun.id)
    )
    return (await conn.execute(statement)).scalar_one_or_none()


async def active_run_id(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> uuid.UUID | None:
    statement = select(SyncRun.id).where(
        SyncRun.segment_id == segment_id,
        SyncRun.destination_id == destination_id,
        SyncRun.status.in_(("queued", "running")),
    )
    return (await conn.execute(statement)).scalar_one_or_none()


async def mark_delivery_queued(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID, run_id: uuid.UUID
) -> None:
    statement = insert(DestinationSegment).values(
        segment_id=segment_id, destination_id=destination_id, state="queued", last_run_id=run_id
    )
    statement = statement.on_conflict_do_update(
        index_elements=[DestinationSegment.segment_id, DestinationSegment.destination_id],
        set_={"state": "queued", "last_run_id": run_id},
    )
    await conn.execute(statement)


async def get_run(conn: AsyncConnection, run_id: uuid.UUID) -> AnyRow | None:
    return (await conn.execute(select(SyncRun.__table__).where(SyncRun.id == run_id))).first()


async def failures(conn: AsyncConnection, run_id: uuid.UUID) -> list[AnyRow]:
    statement = (
        select(SyncRunFailure.record, SyncRunFailure.operation, SyncRunFailure.reason)
        .where(SyncRunFailure.sync_run_id == run_id)
        .order_by(SyncRunFailure.id)
        .limit(FAILED_RECORDS_SHOWN)
    )
    return list((await conn.execute(statement)).all())
