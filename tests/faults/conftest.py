"""The fault suite's world, built once for the module: its own PostgreSQL cluster reached
through a proxy the tests can slow down or break, a three-node RabbitMQ cluster, and two
replicas of each service pointed at every node of it."""

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.faults.clusters import PgCluster, RabbitCluster
from tests.faults.ledger import Ledger
from tests.fixtures.infra import ADMIN_KEY, FAKES_ALLOWED
from tests.fixtures.processes import BIN, PORT_VARIABLES, ServiceProcess, free_port
from tests.fixtures.proxy import TcpProxy

REPLICAS = 2
# The load: writes per second across the API replicas.
RATE = float(os.environ.get("FAULTS_RATE", "50"))

pytestmark = pytest.mark.faults


@dataclass
class World:
    postgres: PgCluster
    rabbit: RabbitCluster
    proxy: TcpProxy
    prefix: str
    engine: AsyncEngine  # straight to the database, not through the proxy
    services: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)

    @property
    def api_urls(self) -> list[str]:
        return [replica.url for replica in self.services["segment-api"]]

    def every_service(self) -> list[ServiceProcess]:
        return [replica for replicas in self.services.values() for replica in replicas]

    def logs(self) -> str:
        return "".join(
            f"--- {service.name}:{service.port} ---\n{service.logs()[-4000:]}\n"
            for service in self.every_service()
        )


def service_env(world_url: str, amqp_url: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "SEGMENTS_DATABASE_URL": world_url,
        "SEGMENTS_AMQP_URL": amqp_url,
        "SEGMENTS_BUS_PREFIX": prefix,
        "SEGMENTS_BOOTSTRAP_API_KEY": ADMIN_KEY,
        "SEGMENTS_SECRET_KEY": "faults-secret-" + prefix,
        "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS": FAKES_ALLOWED,
        "SEGMENTS_BIND_HOST": "127.0.0.1",
        # Six processes share one server: small pools, as an operator would size them.
        "SEGMENTS_DATABASE_POOL_SIZE": "20",
        "SEGMENTS_DATABASE_POOL_OVERFLOW": "5",
        # Shed load after 3 s instead of queueing 10 s for a connection: when the database
        # is slow, requests queued for the pool are what keeps the API behind after it
        # recovers (docs/operations.md#when-the-database-or-the-broker-is-away).
        "SEGMENTS_DATABASE_POOL_TIMEOUT": "3",
        "SEGMENTS_DATABASE_COMMAND_TIMEOUT": "10",
        "SEGMENTS_SYNC_RETRY_BASE_SECONDS": "0.05",
        "SEGMENTS_SYNC_RETRY_CAP_SECONDS": "1",
        "SEGMENTS_SYNC_LEASE_SECONDS": "5",
    }


@pytest_asyncio.fixture(scope="module")
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    # Not pytest's temporary folders: other runs on the machine rotate those away, and the
    # services' logs are what explains a failure here.
    home = Path(tempfile.mkdtemp(prefix="segments-faults-"))
    postgres = PgCluster()
    rabbit = RabbitCluster.planned(home)
    proxy = TcpProxy("127.0.0.1", postgres.port)
    world: World | None = None
    try:
        await asyncio.gather(postgres.create(), rabbit.start())
        await proxy.start()
        direct = postgres.url
        proxied = make_url(direct).set(port=proxy.port).render_as_string(hide_password=False)
        prefix = f"faults{uuid.uuid4().hex[:8]}"
        env = service_env(proxied, rabbit.url, prefix)
        migrate = await asyncio.create_subprocess_exec(
            str(BIN / "segments-db"), "upgrade", env={**env, "SEGMENTS_DATABASE_URL": direct}
        )
        assert await migrate.wait() == 0
        world = World(
            postgres, rabbit, proxy, prefix, create_async_engine(direct, pool_pre_ping=True)
        )
        for name, variable in PORT_VARIABLES.items():
            world.services[name] = []
            for i in range(REPLICAS):
                port = free_port()
                world.services[name].append(
                    ServiceProcess(
                        name, port, {**env, variable: str(port)}, home / f"{name}{i}.log"
                    )
                )
        # The APIs first: they create the bootstrap key and the default segments.
        await asyncio.gather(*(api.start() for api in world.services["segment-api"]))
        await asyncio.gather(
            *(
                replica.start()
                for name in ("sync-worker", "metrics-worker")
                for replica in world.services[name]
            )
        )
        yield world
    finally:
        if world is not None:
            if os.environ.get("FAULTS_SHOW_LOGS"):
                sys.stderr.write(world.logs())
            await asyncio.gather(
                *(service.stop() for service in world.every_service()), return_exceptions=True
            )
            await world.engine.dispose()
        await proxy.cut()
        await rabbit.stop()
        await postgres.drop()
        if request.session.testsfailed:
            sys.stderr.write(f"\nthe services' logs are kept in {home}\n")
        else:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_service_outlives_its_test() -> None:
    """The services belong to the module's world, which restarts some of them in one test
    for the next ones: the integration tier's fixture that kills them at the end of each
    test (tests/fixtures/processes.py) must not run here."""
