"""The fault suite's own servers: a PostgreSQL cluster on another port, made with Debian's
`pg_createcluster`, and a three-node RabbitMQ cluster (distinct node names, ports, data and one
shared Erlang cookie). They can be killed and restarted without touching the machine's
PostgreSQL and RabbitMQ, which other test runs share."""

import asyncio
import contextlib
import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from tests.fixtures.processes import free_port
from tests.fixtures.rabbit import PrivateBroker


async def run(*command: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {text}")
    return text


def postgres_version() -> str:
    return sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]


@dataclass
class PgCluster:
    """A PostgreSQL cluster of the suite's own, trusting local TCP connections."""

    name: str = field(default_factory=lambda: f"faults{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    version: str = field(default_factory=postgres_version)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/segments_faults"

    async def create(self) -> None:
        await run(
            "pg_createcluster",
            self.version,
            self.name,
            "--port",
            str(self.port),
            "--start",
            "-o",
            "max_connections=300",
            "-o",
            "fsync=off",
            "--",
            "--auth=trust",
        )

    async def ctl(self, action: str, *options: str) -> None:
        await run(
            "pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *options
        )

    async def restart_immediately(self, down_for: float = 0.0) -> None:
        """Stop without a checkpoint, as a crash would, and start again after `down_for`."""
        await self.ctl("stop", "-m", "immediate")
        await asyncio.sleep(down_for)
        await self.ctl("start")

    async def drop(self) -> None:
        await run("pg_dropcluster", "--stop", self.version, self.name, check=False)


class ClusterNode(PrivateBroker):
    """One node of the cluster: the same cookie as its peers, and their names to join."""

    def __init__(self, node: str, port: int, home: Path, cookie: str, peers: list[str]) -> None:
        super().__init__(node=node, port=port, home=home)
        self.cookie = cookie
        self.peers = peers

    async def start(self, within: float = 90.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.home / "rabbitmq-env.conf").write_text("")
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i} = {peer}\n"
            for i, peer in enumerate(self.peers, 1)
        )
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "cluster_formation.peer_discovery_backend = classic_config\n" + peers
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        log = (self.home / "server.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            str(self.server),
            env=self.env(),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            # Its own process group: the script runs the Erlang VM as a child, and a kill
            # must reach the VM.
            start_new_session=True,
        )
        log.close()
        await self.wait_answering(within)

    @property
    def server(self) -> Path:
        from tests.fixtures.rabbit import SERVER

        return SERVER

    def kill(self) -> None:
        """kill -9 of the node: no goodbye to clients or peers."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class RabbitCluster:
    nodes: list[ClusterNode]

    @classmethod
    def planned(cls, home: Path, size: int = 3) -> "RabbitCluster":
        tag = uuid.uuid4().hex[:8]
        names = [f"faults{tag}n{i}@localhost" for i in range(1, size + 1)]
        cookie = uuid.uuid4().hex.upper()
        return cls(
            [
                ClusterNode(name, free_port(), home / name.split("@")[0], cookie, names)
                for name in names
            ]
        )

    @property
    def url(self) -> str:
        """Every node, comma-separated, as SEGMENTS_AMQP_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    async def start(self) -> None:
        # The first node forms the cluster; the others find it in their peer list and join.
        await self.nodes[0].start()
        await asyncio.gather(*(node.start() for node in self.nodes[1:]))
        members = await self.running_nodes()
        assert sorted(members) == sorted(node.node for node in self.nodes), members

    async def running_nodes(self) -> list[str]:
        output = await self.nodes[0].ctl("eval", "rabbit_nodes:all_running().")
        return [
            name
            for name in output.replace("[", " ")
            .replace("]", " ")
            .replace("'", " ")
            .replace(",", " ")
            .split()
            if "@" in name
        ]

    async def leader_of(self, queue: str) -> ClusterNode:
        """The node leading a quorum queue."""
        for node in self.nodes:
            if node.process is None or node.process.returncode is not None:
                continue
            output = await node.ctl(
                "list_queues", "name", "leader", "--no-table-headers", "--quiet"
            )
            for line in output.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return next(n for n in self.nodes if n.node == parts[1])
        raise LookupError(f"no leader found for {queue}")

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)


async def queue_depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()
