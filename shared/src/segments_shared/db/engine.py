"""Engine and session factories. Callers own transactions: `async with session.begin()`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from segments_shared.config import DatabaseSettings


def create_engine(
    settings: DatabaseSettings, *, pool_size: int | None = None, pre_ping: bool = True
) -> AsyncEngine:
    """`pre_ping` costs a round trip per checkout; the API turns it off on its hot paths and
    answers a connection lost to a database restart with a 503 instead (the pool then
    replaces its connections)."""
    if settings.database_pooling == "transaction" and not settings.database_direct_url:
        raise ValueError(
            "SEGMENTS_DATABASE_POOLING=transaction needs SEGMENTS_DATABASE_DIRECT_URL: LISTEN "
            "and session advisory locks cannot go through transaction pooling"
        )
    size = pool_size if pool_size is not None else settings.database_pool_size
    return create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=settings.database_pool_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        # A cancelled request must not hold a connection forever
        # (docs/pitfalls.md#postgresql-asyncpg-and-sqlalchemy).
        connect_args={
            "command_timeout": settings.database_command_timeout,
            "timeout": settings.database_connect_timeout,
            "server_settings": {"timezone": "UTC", "application_name": "segments"},
            **_statement_caches(settings),
        },
    )


def _statement_caches(settings: DatabaseSettings) -> dict[str, int]:
    """Behind PgBouncer's transaction pooling each transaction may get another server
    connection, where a statement prepared under a name in an earlier one is missing or
    another client's ("prepared statement "__asyncpg_stmt_1__" already exists"). With both
    caches off, asyncpg and SQLAlchemy prepare statements unnamed and asyncpg parses them
    again with their parameters, so nothing outlives its transaction: one round trip more
    per statement (docs/operations.md#behind-pgbouncer). Unique names would not do: a named
    statement stays on the server connection it was prepared on."""
    if settings.database_pooling != "transaction":
        return {}
    return {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def session_url(settings: DatabaseSettings) -> str:
    """Where connections that keep session state go: LISTEN, session advisory locks (the
    relay's leadership, vendor slots) and migrations. `SEGMENTS_DATABASE_DIRECT_URL`, or the
    database URL."""
    return settings.database_direct_url or settings.database_url


def create_session_engine(settings: DatabaseSettings) -> AsyncEngine | None:
    """One connection on `SEGMENTS_DATABASE_DIRECT_URL`, for a holder of session advisory
    locks; None without that setting, when the main engine keeps sessions itself."""
    if not settings.database_direct_url:
        return None
    direct = settings.model_copy(
        update={"database_url": settings.database_direct_url, "database_pooling": "session"}
    )
    return create_engine(direct, pool_size=1)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool without transactions: a read costs one round trip, not three."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy one, in the same transaction.

    Hot paths use it directly: asyncpg caches prepared statements per connection and skips
    SQLAlchemy's statement and result processing (measured: about 1.5 times as fast for a
    segment view, several times for simple lookups). JSON parameters are passed as JSON text
    (SQLAlchemy's codec) and come back decoded.

    SQLAlchemy's asyncpg adapter sends BEGIN only with its own first statement; a statement
    sent straight to the driver before that would run in autocommit, outside the caller's
    transaction. So when the SQLAlchemy connection is in a transaction that has not reached
    the server yet, an empty statement through SQLAlchemy starts it: BEGIN, then the empty
    statement, one round trip more than BEGIN alone (a transaction that sends its first
    statement through SQLAlchemy avoids it). An autocommit connection, or a transaction
    already begun, sends nothing. tests/shared/test_db.py pins both.

    Behind transaction pooling (docs/operations.md#behind-pgbouncer) asyncpg's statement
    cache is off, but `Connection.cursor()` still names its statement: open a cursor from
    `prepare()`, whose statement is unnamed then.
    """
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    if (
        conn.in_transaction()
        and not driver.is_in_transaction()
        and raw.dbapi_connection is not None
        and not conn.dialect.detect_autocommit_setting(raw.dbapi_connection)
    ):
        await conn.exec_driver_sql(";")
    return driver


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One Core connection in one transaction, committed on success."""
    async with engine.begin() as conn:
        yield conn


def asyncpg_dsn(database_url: str | URL) -> str:
    """The plain libpq URL asyncpg understands, from a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
