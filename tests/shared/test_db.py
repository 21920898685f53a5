"""The database layer's own guarantees."""

from contextlib import suppress
from typing import Any

import pytest
from sqlalchemy import event, text
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
        assert driver.is_in_transaction()
        await driver.execute("INSERT INTO customers (external_id) VALUES ('kept')")
        await conn.execute(text("SELECT 1"))  # SQLAlchemy must not begin a second time
    assert await count(clean_db, "kept") == 1


async def fail_a_savepoint_then_abort(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        driver = await driver_connection(conn)
        await driver.execute("INSERT INTO customers (external_id) VALUES ('outer')")
        with suppress(Abort):
            async with driver.transaction():
                await driver.execute("INSERT INTO customers (external_id) VALUES ('inner')")
                raise Abort
        raise Abort(await driver.fetchval("SELECT count(*) FROM customers"))


@pytest.mark.asyncio
async def test_driver_savepoints_nest_in_the_callers_transaction(clean_db: AsyncEngine) -> None:
    """`driver.transaction()` inside the caller's transaction is a savepoint: its failure
    leaves the caller's work alone, and the caller's rollback takes everything."""
    with pytest.raises(Abort) as raised:
        await fail_a_savepoint_then_abort(clean_db)
    assert raised.value.args == (1,)  # 'outer' was there, 'inner' was not
    assert await count(clean_db, "outer") == 0


@pytest.mark.asyncio
async def test_autocommit_reads_open_no_transaction(clean_db: AsyncEngine) -> None:
    """The single-statement hot paths: getting the driver sends nothing to the server, even
    after a SQLAlchemy statement (which begins a transaction only in SQLAlchemy's books)."""
    engine = autocommit(clean_db)
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])  # before_cursor_execute(conn, cursor, statement, ...)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with engine.connect() as conn:
            driver = await driver_connection(conn)
            assert not driver.is_in_transaction()
            assert await driver.fetchval("SELECT 1") == 1
            await conn.execute(text("SELECT 2"))
            with driver.query_logger(lambda query: sent.append(query.query)):
                driver = await driver_connection(conn)
            assert not driver.is_in_transaction()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert sent == ["SELECT 2"]
