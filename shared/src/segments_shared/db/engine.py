"""Engine and session factories. Callers own transactions: `async with session.begin()`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from segments_shared.config import DatabaseSettings


def create_engine(settings: DatabaseSettings, *, pool_size: int | None = None) -> AsyncEngine:
    size = pool_size if pool_size is not None else settings.database_pool_size
    return create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=size,
        pool_timeout=settings.database_pool_timeout,
        pool_pre_ping=True,
        # A cancelled request must not hold a connection forever (PITFALLS.md).
        connect_args={"command_timeout": settings.database_command_timeout},
    )


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
