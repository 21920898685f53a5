import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from segments_shared.db.models import Destination
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
