"""Check that PostgreSQL and RabbitMQ answer before starting the suite; say how to start
whichever does not."""

import asyncio
import logging
import sys

import asyncpg
from sqlalchemy.engine import make_url

from segments_shared.bus.addresses import BrokerAddress
from segments_shared.bus.connection import BrokerUnreachable, broker_addresses, connect_first
from segments_shared.config import BrokerSettings, DatabaseSettings
from segments_shared.db.engine import asyncpg_dsn

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
}


async def _postgres(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(make_url(url).set(database="postgres")), timeout=5)
    except Exception as exc:
        return repr(exc)
    await conn.close()
    return None


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
    database_url = make_url(database.database_url)
    addresses = broker_addresses(broker.amqp_url.get_secret_value())
    results = await asyncio.gather(_postgres(database.database_url), _rabbitmq(addresses))
    problems = []
    for (name, where), error in zip(
        (
            ("PostgreSQL", f"{database_url.host}:{database_url.port or 5432}"),
            ("RabbitMQ", ", ".join(address.where for address in addresses)),
        ),
        results,
        strict=True,
    ):
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
