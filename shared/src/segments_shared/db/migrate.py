"""Create the database if it is missing and migrate it to the newest revision."""

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from segments_shared.db.engine import asyncpg_dsn

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url)
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return config


async def create_database_if_missing(database_url: str) -> bool:
    """Create the database named in the URL; True if it had to be created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError("SEGMENTS_DATABASE_URL names no database")
    maintenance = asyncpg_dsn(url.set(database="postgres"))
    conn = await asyncpg.connect(maintenance)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        # Identifiers cannot be bound parameters; quote it the way PostgreSQL does.
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another process created it meanwhile
        return True
    finally:
        await conn.close()


def upgrade(database_url: str, revision: str = "head") -> None:
    asyncio.run(create_database_if_missing(database_url))
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """For callers already inside an event loop (tests): Alembic's env runs its own loop."""
    await create_database_if_missing(database_url)
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)
