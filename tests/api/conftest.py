from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

TABLES = (
    "customers",
    "orders",
    "segments",
    "segment_members",
    "outbox",
    "destinations",
    "sync_runs",
)

Snapshot = Callable[[], Awaitable[dict[str, int]]]


@pytest.fixture
def row_counts(clean_db: AsyncEngine) -> Snapshot:
    """Row counts of the tables a request could write, to prove a refusal changed nothing."""

    async def snapshot() -> dict[str, int]:
        async with clean_db.connect() as conn:
            return {
                table: int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
                for table in TABLES
            }

    return snapshot
