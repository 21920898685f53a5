"""The database layer's own guarantees."""

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from segments_shared.db.engine import autocommit, driver_connection


class Abort(Exception):
    pass


async def count(engine: AsyncEngine, external_id: str) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT count(*) FROM customers WHERE external_id = :e"), {"e": external_id}
        )
        return int(result.scalar_one())


async def insert_then_abort(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        driver = await driver_connection(conn)
        await driver.execute("INSERT INTO customers (external_id) VALUES ('rolled-back')")
        raise Abort


@pytest.mark.asyncio
async def test_driver_statements_share_the_callers_transaction(clean_db: AsyncEngine) -> None:
    """A statement sent straight to asyncpg first, before any SQLAlchemy statement, must still
    roll back with the transaction (SQLAlchemy begins lazily)."""
    with pytest.raises(Abort):
        await insert_then_abort(clean_db)
    assert await count(clean_db, "rolled-back") == 0

    async with clean_db.begin() as conn:
        driver = await driver_connection(conn)
        await driver.execute("INSERT INTO customers (external_id) VALUES ('kept')")
        await conn.execute(text("SELECT 1"))  # SQLAlchemy must not begin a second time
    assert await count(clean_db, "kept") == 1


@pytest.mark.asyncio
async def test_autocommit_reads_open_no_transaction(clean_db: AsyncEngine) -> None:
    async with autocommit(clean_db).connect() as conn:
        driver = await driver_connection(conn)
        assert not driver.is_in_transaction()
        assert await driver.fetchval("SELECT 1") == 1
