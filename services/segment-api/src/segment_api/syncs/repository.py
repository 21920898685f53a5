import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import DestinationMember, DestinationSegment, SyncRun, SyncRunFailure
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


async def list_runs(
    conn: AsyncConnection,
    segment_id: uuid.UUID,
    *,
    destination_id: uuid.UUID | None,
    before_seq: int | None,
    limit: int,
) -> list[AnyRow]:
    """Newest first."""
    statement = select(SyncRun.__table__).where(SyncRun.segment_id == segment_id)
    if destination_id is not None:
        statement = statement.where(SyncRun.destination_id == destination_id)
    if before_seq is not None:
        statement = statement.where(SyncRun.seq < before_seq)
    statement = statement.order_by(SyncRun.seq.desc()).limit(limit + 1)
    return list((await conn.execute(statement)).all())


@dataclass(frozen=True)
class RunFilters:
    status: str | None = None
    trigger: str | None = None
    destination_id: uuid.UUID | None = None
    segment_id: uuid.UUID | None = None


async def list_all_runs(
    conn: AsyncConnection, filters: RunFilters, *, before_seq: int | None, limit: int
) -> list[AnyRow]:
    """Runs of every segment, newest first (by `seq`, which orders them as requested)."""
    statement = select(SyncRun.__table__)
    if filters.status is not None:
        statement = statement.where(SyncRun.status == filters.status)
    if filters.trigger is not None:
        statement = statement.where(SyncRun.trigger == filters.trigger)
    if filters.destination_id is not None:
        statement = statement.where(SyncRun.destination_id == filters.destination_id)
    if filters.segment_id is not None:
        statement = statement.where(SyncRun.segment_id == filters.segment_id)
    if before_seq is not None:
        statement = statement.where(SyncRun.seq < before_seq)
    statement = statement.order_by(SyncRun.seq.desc()).limit(limit + 1)
    return list((await conn.execute(statement)).all())


async def latest_run(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> AnyRow | None:
    rows = await list_runs(
        conn, segment_id, destination_id=destination_id, before_seq=None, limit=1
    )
    return rows[0] if rows else None


async def failures(conn: AsyncConnection, run_ids: list[uuid.UUID]) -> list[AnyRow]:
    """The first failures of each run, in one query."""
    if not run_ids:
        return []
    numbered = (
        select(
            SyncRunFailure.sync_run_id,
            SyncRunFailure.record,
            SyncRunFailure.operation,
            SyncRunFailure.reason,
            func.row_number()
            .over(partition_by=SyncRunFailure.sync_run_id, order_by=SyncRunFailure.id)
            .label("n"),
        )
        .where(SyncRunFailure.sync_run_id.in_(run_ids))
        .subquery()
    )
    statement = (
        select(numbered.c.sync_run_id, numbered.c.record, numbered.c.operation, numbered.c.reason)
        .where(numbered.c.n <= FAILED_RECORDS_SHOWN)
        .order_by(numbered.c.sync_run_id, numbered.c.n)
    )
    return list((await conn.execute(statement)).all())


async def destination_segment(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> AnyRow | None:
    statement = select(DestinationSegment.__table__).where(
        and_(
            DestinationSegment.segment_id == segment_id,
            DestinationSegment.destination_id == destination_id,
        )
    )
    return (await conn.execute(statement)).first()


async def member_count(
    conn: AsyncConnection, segment_id: uuid.UUID, destination_id: uuid.UUID
) -> int:
    statement = select(func.count()).where(
        DestinationMember.destination_id == destination_id,
        DestinationMember.segment_id == segment_id,
    )
    return int((await conn.execute(statement)).scalar_one())
