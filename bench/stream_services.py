"""The three services of bench.steady_stream as processes (the installed console commands,
default settings, a bus prefix of their own), their logs kept in files, and the wait for
their start-up work."""

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.common import AMQP_URL, free_port
from segments_shared.db.engine import asyncpg_dsn

PORT_VARIABLES = {
    "segment-api": "SEGMENTS_API_PORT",
    "sync-worker": "SEGMENTS_SYNC_WORKER_PORT",
    "metrics-worker": "SEGMENTS_METRICS_WORKER_PORT",
}


@dataclass
class Service:
    name: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def problems(self) -> Counter[str]:
        """Warnings and errors the service logged, by message."""
        found: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                found[line[:120]] += 1  # not ours: a traceback, a library printing
                continue
            if entry.get("level") in ("warning", "error", "critical"):
                found[f"{entry['level']}: {entry.get('message', '')[:120]}"] += 1
        return found


def suite_env(url: str, prefix: str, key: str) -> tuple[dict[str, str], dict[str, int]]:
    """The services' environment: only what tells them where things are (the rest is
    default settings)."""
    ports = {name: free_port() for name in PORT_VARIABLES}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
        "SEGMENTS_DATABASE_URL": url,
        "SEGMENTS_AMQP_URL": AMQP_URL,
        "SEGMENTS_BUS_PREFIX": prefix,
        "SEGMENTS_BOOTSTRAP_API_KEY": key,
        **{variable: str(ports[name]) for name, variable in PORT_VARIABLES.items()},
    }
    return env, ports


async def start(name: str, env: dict[str, str], port: int, logs: Path) -> Service:
    """Start a service and wait for its /readyz (imports take seconds of CPU)."""
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / name),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    service = Service(name, port, log_path, process)
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"{name} exited; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return service
            await asyncio.sleep(0.2)
    await stop(service)
    raise RuntimeError(f"{name} not ready in 120 s; see {log_path}")


def parse_metrics(text: str) -> dict[str, float]:
    """Our own series (`segments_*`) of a Prometheus text page, by name and labels;
    histogram buckets left out (their sums and counts stay)."""
    found = {}
    for line in text.splitlines():
        if not line.startswith("segments_") or "_bucket{" in line or "_created" in line:
            continue
        series, _, value = line.rpartition(" ")
        try:
            found[series] = float(value)
        except ValueError:
            continue
    return found


async def scrape(services: list[Service]) -> dict[str, dict[str, float]]:
    """Each running service's own series now (empty for one that does not answer)."""
    pages: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for service in services:
            try:
                response = await client.get(f"http://127.0.0.1:{service.port}/metrics")
                pages[service.name] = parse_metrics(response.text)
            except httpx.HTTPError:
                pages[service.name] = {}
    return pages


def moved(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """What each series moved by between two scrapes (the ones that moved)."""
    return {
        name: {
            series: value - before.get(name, {}).get(series, 0.0)
            for series, value in page.items()
            if value != before.get(name, {}).get(series, 0.0)
        }
        for name, page in after.items()
    }


async def stop(service: Service, grace: float = 30.0) -> None:
    if service.process.returncode is not None:
        return
    service.process.terminate()
    try:
        await asyncio.wait_for(service.process.wait(), grace)
    except TimeoutError:
        service.process.kill()
        await service.process.wait()


# What start-up work leaves behind while it runs. Periodic jobs wait for their next period
# (a day, an hour) once done, so only jobs due soon or running count.
_UNSETTLED = """
    SELECT
      (SELECT count(*) FROM segments WHERE active AND definition->>'type' = 'rule'
          AND (refreshed_at IS NULL OR status <> 'ready')) AS rules_not_ready,
      (SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL
          OR due_at < now() + interval '10 minutes') AS jobs_busy,
      (SELECT count(*) FROM jobs WHERE queue IN ('rfm', 'kpi_check')
          AND last_finished_at IS NULL) AS first_runs_missing,
      (SELECT count(*) FROM metrics_changes) AS metrics_changes,
      (SELECT count(*) FROM segment_refresh_signals) AS refresh_signals,
      (SELECT count(*) FROM rule_refresh_pending) AS rule_refresh_pending,
      (SELECT count(*) FROM segments s
          WHERE NOT EXISTS (SELECT 1 FROM segment_kpis k WHERE k.segment_id = s.id))
          AS without_kpis,
      (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished
"""


async def settle(url: str, within: float) -> tuple[float, dict[str, int]]:
    """Wait until the start-up work is done (the rule segments computed, the first KPIs,
    the first RFM run and KPI check, nothing pending), three polls in a row; returns the
    seconds waited and what was left if `within` ran out first."""
    started = time.monotonic()
    conn = await asyncpg.connect(asyncpg_dsn(make_url(url)))
    quiet = 0
    shown = started
    try:
        while True:
            row = dict(await conn.fetchrow(_UNSETTLED))
            # The first runs' job rows appear once the metrics-worker has made them.
            made = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE queue IN ('rfm', 'kpi_check')"
            )
            left = {name: int(value) for name, value in row.items() if value}
            if made < 2:
                left["first_runs_missing"] = 2 - int(made)
            quiet = quiet + 1 if not left else 0
            waited = time.monotonic() - started
            if quiet >= 3 or waited > within:
                return waited, left
            if time.monotonic() - shown >= 15:
                shown = time.monotonic()
                print(f"  start-up work after {waited:.0f} s: {left or 'settling'}", flush=True)
            await asyncio.sleep(1.0)
    finally:
        await conn.close()
