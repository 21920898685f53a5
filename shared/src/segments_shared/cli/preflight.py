"""Check that PostgreSQL and RabbitMQ answer before starting the suite; say how to start
whichever does not."""

import asyncio
import logging
import sys
from collections.abc import Awaitable

import asyncpg
from sqlalchemy.engine import URL, make_url

from segments_shared.bus.addresses import BrokerAddress
from segments_shared.bus.connection import BrokerUnreachable, broker_addresses, connect_first
from segments_shared.config import BrokerSettings, DatabaseSettings
from segments_shared.db.engine import asyncpg_dsn, session_url

HOW_TO_START = {
    "PostgreSQL": (
        "docker compose up -d postgres, or start the system service "
        "(sudo systemctl start postgresql, or "
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
    ),
    "RabbitMQ": (
        "docker compose up -d rabbitmq, or start the system service "
        "(sudo systemctl start rabbitmq-server, or rabbitmq-server -detached)"
    ),
    "The pooler (PgBouncer) of SEGMENTS_DATABASE_URL": (
        "sudo systemctl start pgbouncer, and check that its [databases] section serves the "
        "database named in SEGMENTS_DATABASE_URL (docs/operations.md#behind-pgbouncer)"
    ),
}


async def _postgres(url: URL, *, missing_database_ok: bool = False) -> str | None:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    except asyncpg.InvalidCatalogNameError:
        # The pooler reached the server, which lacks the database yet: `segments-db upgrade`
        # creates it through the direct URL.
        return None if missing_database_ok else f"database {url.database!r} does not exist"
    except Exception as exc:
        return repr(exc)
    await conn.close()
    return None


def _where(url: URL) -> str:
    return f"{url.host}:{url.port or 5432}"


async def _rabbitmq(addresses: list[BrokerAddress]) -> str | None:
    """Reachable when one node answers: the services fail over to it."""
    try:
        connection, _ = await connect_first(addresses, "segments-preflight")
    except BrokerUnreachable as exc:
        return str(exc)
    await connection.close()
    return None


async def check() -> list[str]:
    database = DatabaseSettings()
    broker = BrokerSettings()
    problems = []
    pooled = database.database_pooling == "transaction"
    if pooled and not database.database_direct_url:
        problems.append(
            "SEGMENTS_DATABASE_POOLING=transaction needs SEGMENTS_DATABASE_DIRECT_URL: LISTEN, "
            "session advisory locks and migrations cannot go through transaction pooling "
            "(docs/operations.md#behind-pgbouncer)"
        )
    # The server through its `postgres` database, which is there before ours is created: on
    # the direct URL when there is one, since a PgBouncer seldom serves `postgres`.
    server = make_url(session_url(database))
    checks: list[tuple[str, str, Awaitable[str | None]]] = [
        ("PostgreSQL", _where(server), _postgres(server.set(database="postgres")))
    ]
    if pooled:
        # The pooled URL against its own database, the one the services query through it.
        url = make_url(database.database_url)
        checks.append(
            (
                "The pooler (PgBouncer) of SEGMENTS_DATABASE_URL",
                _where(url),
                _postgres(url, missing_database_ok=True),
            )
        )
    addresses = broker_addresses(broker.amqp_url.get_secret_value())
    checks.append(
        ("RabbitMQ", ", ".join(address.where for address in addresses), _rabbitmq(addresses))
    )
    results = await asyncio.gather(*(probe for _, _, probe in checks))
    for (name, where, _), error in zip(checks, results, strict=True):
        if error is not None:
            problems.append(
                f"{name} is not reachable at {where} ({error}).\n  Start it: {HOW_TO_START[name]}"
            )
    return problems


def main() -> int:
    logging.disable(logging.CRITICAL)  # the drivers' own connection errors repeat ours
    problems = asyncio.run(check())
    for problem in problems:
        sys.stderr.write(problem + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
