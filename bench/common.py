"""Set-up shared by the benchmarks: a fresh database and bus prefix of their own."""

import asyncio
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import aio_pika
import asyncpg
import httpx
from sqlalchemy.engine import make_url

from segments_shared.bus.topology import Topology, delete_all
from segments_shared.db.engine import asyncpg_dsn
from segments_shared.db.migrate import upgrade_async

SERVER_URL = os.environ.get(
    "SEGMENTS_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("SEGMENTS_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def fresh_database(name: str) -> str:
    """Drop and re-create a database, migrated to head; returns its URL."""
    admin = await asyncpg.connect(asyncpg_dsn(make_url(SERVER_URL).set(database="postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    await upgrade_async(url)
    return url


def bench_prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


async def remove_topology(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await delete_all(await connection.channel(), Topology(prefix))
    finally:
        await connection.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    parts = [
        f"p{int(fraction * 100)} {percentile(values, fraction) * 1000:.1f} ms"
        for fraction in (0.5, 0.95, 0.99)
    ]
    return ", ".join([*parts, f"mean {statistics.fmean(values) * 1000:.1f} ms"])


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    """Poll a condition another task makes true (the benchmarks' consumers append to lists)."""
    deadline = time.monotonic() + within
    while True:
        if condition() or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def api_env(url: str, prefix: str, port: int, key: str) -> dict[str, str]:
    """The environment of a benchmark's segment-api: its database, bus prefix, port, key."""
    return {
        **os.environ,
        "SEGMENTS_DATABASE_URL": url,
        "SEGMENTS_AMQP_URL": AMQP_URL,
        "SEGMENTS_BUS_PREFIX": prefix,
        "SEGMENTS_API_PORT": str(port),
        "SEGMENTS_BOOTSTRAP_API_KEY": key,
        "SEGMENTS_LOG_LEVEL": "WARNING",
    }


async def start_service(
    command: str, env: dict[str, str], port: int, within: float = 60.0
) -> asyncio.subprocess.Process:
    """One of the installed console commands as its own process, once its /readyz says so."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / command), env=env, stdout=asyncio.subprocess.DEVNULL
    )
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{command} did not become ready")


def print_pairs(runs: dict[str, list[float]], names: Sequence[str], width: int) -> None:
    """Each operation's median through the service beside its bare statement's, and their
    ratio; `runs` holds the times under "<name> service" and "<name> bare"."""
    for name in names:
        ours = statistics.median(runs[f"{name} service"])
        bare = statistics.median(runs[f"{name} bare"])
        print(
            f"{name:{width}} service {ours:6.3f} s   bare statement {bare:6.3f} s   "
            f"ratio {ours / bare:5.2f}"
        )
