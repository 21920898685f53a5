import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import Destination, DestinationMember, DestinationSegment, SyncRun
from segments_shared.db.types import AnyRow


async def insert_destination(conn: AsyncConnection, values: dict[str, Any]) -> AnyRow:
    statement = (
        insert(Destination).values(id=uuid.uuid4(), **values).returning(Destination.__table__)
    )
    row: AnyRow = (await conn.execute(statement)).one()
    return row


async def get(conn: AsyncConnection, destination_id: uuid.UUID) -> AnyRow | None:
    statement = select(Destination.__table__).where(Destination.id == destination_id)
    return (await conn.execute(statement)).first()


async def held(conn: AsyncConnection, destination_id: uuid.UUID) -> AnyRow | None:
    """The destination, kept from being deleted until the transaction ends (KEY SHARE, as a
    foreign key check would take it): a run queued for it cannot meet its deletion half-way."""
    statement = (
        select(Destination.__table__)
        .where(Destination.id == destination_id)
        .with_for_update(read=True, key_share=True)
    )
    return (await conn.execute(statement)).first()


async def lock(
    conn: AsyncConnection, destination_id: uuid.UUID, *, deleting: bool = False
) -> AnyRow | None:
    """The destination, locked against other edits. An edit takes NO KEY UPDATE, which
    leaves the sync-worker's KEY SHARE (held while it writes for a run) unblocked; only a
    deletion waits for those writes."""
    statement = (
        select(Destination.__table__)
        .where(Destination.id == destination_id)
        .with_for_update(key_share=not deleting)
    )
    return (await conn.execute(statement)).first()


async def list_page(
    conn: AsyncConnection,
    *,
    destination_type: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AnyRow]:
    statement = select(Destination.__table__)
    if destination_type is not None:
        statement = statement.where(Destination.type == destination_type)
    if after is not None:
        statement = statement.where(
            tuple_(Destination.created_at, Destination.id)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    statement = statement.order_by(Destination.created_at, Destination.id).limit(limit + 1)
    return list((await conn.execute(statement)).all())


async def update_destination(
    conn: AsyncConnection, destination_id: uuid.UUID, values: dict[str, Any]
) -> AnyRow:
    statement = (
        update(Destination)
        .where(Destination.id == destination_id)
        .values(**values, version=Destination.version + 1, updated_at=func.now())
        .returning(Destination.__table__)
    )
    row: AnyRow = (await conn.execute(statement)).one()
    return row


async def delete_destination(conn: AsyncConnection, destination_id: uuid.UUID) -> None:
    # The record of what it holds has no foreign key (the sync-worker writes it in bulk).
    await conn.execute(
        delete(DestinationMember).where(DestinationMember.destination_id == destination_id)
    )
    await conn.execute(delete(Destination).where(Destination.id == destination_id))


async def has_active_run(conn: AsyncConnection, destination_id: uuid.UUID) -> bool:
    statement = select(
        exists().where(
            or_(
                SyncRun.destination_id == destination_id,
                SyncRun.source_destination_id == destination_id,
            ),
            SyncRun.status.in_(("queued", "running")),
        )
    )
    return bool((await conn.execute(statement)).scalar())


async def forget_remote_segments(conn: AsyncConnection, destination_id: uuid.UUID) -> None:
    """The destination now points elsewhere: what we remember of its segments is void (the
    next sync finds them by name there, and reconciles)."""
    await conn.execute(
        delete(DestinationMember).where(DestinationMember.destination_id == destination_id)
    )
    await conn.execute(
        update(DestinationSegment)
        .where(DestinationSegment.destination_id == destination_id)
        .values(remote_id=None, remote_name=None, last_success_run_id=None)
    )
