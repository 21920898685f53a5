"""What bench.steady_stream samples every second while its load runs:

- CPU of each watched process (the services, the load generator, this process), of
  RabbitMQ, and of every PostgreSQL backend of the benchmark's database, each backend
  labelled by the process at the other end of its connection (found through the local
  port of its TCP connection), plus the server's own background processes apart;
- backlogs: unpublished outbox rows, `metrics_changes`, `segment_refresh_signals`,
  `rule_refresh_pending` customers per rule segment, due jobs per queue of `jobs`, and the
  depth of every RabbitMQ queue of the bus prefix (a passive declare);
- KPI lag per segment: now minus the oldest pending `metrics_changes` row that concerns it
  (it names the segment, or a customer who is a member), 0 when none;
- refresh lag per rule segment (bench/stream_figures.py, `RefreshTracker`).

The probe's own PostgreSQL backend is measured apart (`postgres (probe)`), so that its
queries never count as the services' database work.
"""

import asyncio
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from bench import cpu
from bench.common import AMQP_URL
from bench.stream_figures import RefreshJob, RefreshTracker
from segments_shared.bus.topology import Topology
from segments_shared.db.engine import asyncpg_dsn

# Counts stop here: a backlog this deep is broken whatever its exact size.
CAP = 1_000_000
PROBE = "postgres (probe)"
SERVER = "postgres (server)"
# Other databases' backends: other users of the server (tests, other benchmarks).
ELSEWHERE = "postgres (other databases)"
# Backends that exited, of any database, over their whole lives (the postmaster's waited-for
# children): connections shorter than a sample interval show only here.
EXITED = "postgres (exited backends)"
DATABASE_COUNTS = (
    "xact_commit",
    "xact_rollback",
    "sessions",
    "active_time",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)
PENDING = "rule_refresh_pending"
QUEUES = ("kpi_fold", "kpi_check", "rfm", "rule_refresh", "sync_run")

_STATE = f"""
    SELECT extract(epoch FROM now())::float8 AS now,
      (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT {CAP}) o)
          AS outbox,
      (SELECT count(*) FROM (SELECT 1 FROM metrics_changes LIMIT {CAP}) m) AS metrics_changes,
      (SELECT count(*) FROM (SELECT 1 FROM segment_refresh_signals LIMIT {CAP}) s)
          AS refresh_signals,
      (SELECT extract(epoch FROM min(created_at))::float8 FROM segment_refresh_signals)
          AS oldest_signal,
      d.xact_commit, d.xact_rollback, d.sessions, d.active_time, d.tup_inserted,
      d.tup_updated, d.tup_deleted
    FROM pg_stat_database d WHERE d.datname = current_database()
"""
_PENDING = """
    SELECT segment_id, sum(cardinality(customer_ids)) AS customers
    FROM rule_refresh_pending GROUP BY segment_id
"""
_JOBS = """
    SELECT queue,
           count(*) FILTER (WHERE lease_owner IS NULL AND due_at <= now()
                            AND (retry_after IS NULL OR retry_after <= now())) AS due,
           count(*) FILTER (WHERE lease_owner IS NOT NULL) AS running
    FROM jobs GROUP BY queue
"""
_REFRESH_JOBS = """
    SELECT key, generation, lease_owner IS NOT NULL AS leased,
           extract(epoch FROM requested_at)::float8 AS requested_at
    FROM jobs WHERE queue = 'rule_refresh'
"""
# The oldest pending changes only (ids follow insertion): enough to date the oldest per
# segment while the fold keeps up, and cheap when it does not.
_KPI_LAG = """
    WITH pending AS MATERIALIZED (
        SELECT segment_id, customer_ids, created_at FROM metrics_changes ORDER BY id LIMIT 5000
    ),
    concerned AS (
        SELECT segment_id, created_at FROM pending WHERE segment_id IS NOT NULL
        UNION ALL
        SELECT m.segment_id, p.created_at
        FROM pending p CROSS JOIN LATERAL unnest(p.customer_ids) AS c(customer_id)
        JOIN segment_members m ON m.customer_id = c.customer_id
    )
    SELECT segment_id, extract(epoch FROM now() - min(created_at))::float8 AS lag
    FROM concerned GROUP BY segment_id
"""
_BACKENDS = """
    SELECT pid, datname IS NOT DISTINCT FROM current_database() AS ours,
           datname IS NULL AS background, backend_type, client_port, state,
           wait_event_type || '/' || wait_event AS waits, left(query, 400) AS query
    FROM pg_stat_activity
"""


@dataclass
class Sample:
    at: float  # wall clock, epoch seconds
    interval: float  # seconds since the previous sample
    cpu: dict[str, float]  # CPU seconds per label in the interval
    hottest: dict[str, float]  # the busiest single process of each label, seconds
    machine_busy: float  # seconds of all cores busy in the interval (anyone's processes)
    backlogs: dict[str, float]
    kpi_lag: dict[str, float]  # segment name -> seconds
    refresh_lag: dict[str, float]  # rule segment name -> seconds
    # What each of the database's active backends ran at the sample (by whom, the
    # statement's start): a coarse profile of where its CPU goes.
    active: list[str] = field(default_factory=list)
    # The database's own cumulative counts (pg_stat_database): commits, sessions opened,
    # milliseconds its backends spent running statements (exited ones included), rows.
    database: dict[str, float] = field(default_factory=dict)
    # Backends of the database first seen at this sample, by whom (connections opened; one
    # that lived less than an interval may be missed).
    opened: dict[str, int] = field(default_factory=dict)


@dataclass
class Probe:
    url: str
    prefix: str
    segments: Mapping[uuid.UUID, str]  # every segment watched for KPI lag, by name
    rule_segments: set[uuid.UUID]
    debounce: float
    # Label -> pid of the processes watched (each with the processes under it).
    processes: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    interval: float = 1.0

    def __post_init__(self) -> None:
        self.tracker = RefreshTracker(debounce=self.debounce)
        self._owners: dict[tuple[int, int | None], str] = {}
        self._previous: dict[int, float] = {}
        self._machine = cpu.machine_seconds()
        self._at = time.time()
        self._rabbit = [
            int(entry.name)
            for entry in cpu.PROC.iterdir()
            if entry.name.isdigit() and _command(int(entry.name)) == "beam.smp"
        ]
        self._pg_port = make_url(self.url).port or 5432
        self.own_backend = -1
        self.postmaster = -1
        self.failures = 0
        self._seen: set[tuple[int, int | None]] = set()
        self._opened: dict[str, int] = {}
        self._active: list[str] = []

    async def open(self) -> None:
        self.conn = await asyncpg.connect(
            asyncpg_dsn(make_url(self.url)), server_settings={"application_name": "bench-probe"}
        )
        self.own_backend = int(await self.conn.fetchval("SELECT pg_backend_pid()"))
        stat = cpu.read_stat(self.own_backend)
        self.postmaster = cpu.parse_reaped(stat)[0] if stat else -1
        self._reaped = self._reaped_seconds()
        self.amqp = await aio_pika.connect(AMQP_URL)
        self.channel = await self.amqp.channel()
        self.processes.setdefault("bench", os.getpid())
        # The first snapshot: later ones measure from here.
        self._previous = cpu.snapshot(await self._cpu_labels())
        self._machine, self._at = cpu.machine_seconds(), time.time()

    async def close(self) -> None:
        await self.conn.close()
        await self.amqp.close()

    def watch(self, label: str, pid: int) -> None:
        """Measure this process (and those under it) from now on: what it spent before (its
        start, imports) is not counted."""
        self.processes[label] = pid
        self._previous.update(cpu.snapshot(self._family(label, pid)))

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every `interval` until `stop` is set."""
        started = time.monotonic()
        ticks = 0
        while not stop.is_set():
            ticks += 1
            delay = started + ticks * self.interval - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            try:
                self.samples.append(await self.sample())
            except (OSError, asyncpg.PostgresError, aio_pika.exceptions.AMQPError) as exc:
                self.failures += 1  # a missing second; the figures say how many
                if self.failures == 1:
                    print(f"  probe: a sample failed ({exc!r}); going on", flush=True)

    async def sample(self) -> Sample:
        labels = await self._cpu_labels()
        now = cpu.snapshot(labels)
        used = cpu.spent(self._previous, now)
        self._previous = now
        reaped = self._reaped_seconds()
        exited, self._reaped = max(0.0, reaped - self._reaped), reaped
        machine = cpu.machine_seconds()
        busy = machine[0] - self._machine[0]
        self._machine = machine
        at = time.time()
        interval, self._at = at - self._at, at
        state = await self.conn.fetchrow(_STATE)
        backlogs = {
            "outbox (unpublished)": float(state["outbox"]),
            "metrics_changes": float(state["metrics_changes"]),
            "segment_refresh_signals": float(state["refresh_signals"]),
        }
        # Per segment: each drains at its own refresh, so only its own floor says whether
        # refreshes keep up (the sum's floor is wherever the others' debounces stand).
        pending = {row["segment_id"]: row["customers"] for row in await self.conn.fetch(_PENDING)}
        for segment_id in sorted(self.rule_segments, key=lambda s: self.segments.get(s, str(s))):
            name = self.segments.get(segment_id, str(segment_id))
            backlogs[f"{PENDING}: {name}"] = float(pending.get(segment_id, 0))
        jobs = {row["queue"]: row for row in await self.conn.fetch(_JOBS)}
        for queue in sorted(set(QUEUES) | set(jobs)):
            backlogs[f"jobs due: {queue}"] = float(jobs[queue]["due"] if queue in jobs else 0)
        backlogs.update(await self._queue_depths())
        return Sample(
            at=at,
            interval=interval,
            cpu={**cpu.by_label(used, labels), EXITED: exited},
            hottest=cpu.hottest(used, labels),
            machine_busy=busy,
            backlogs=backlogs,
            kpi_lag=await self._kpi_lag(),
            refresh_lag=await self._refresh_lag(state["now"], state["oldest_signal"]),
            active=self._active,
            database={name: float(state[name]) for name in DATABASE_COUNTS},
            opened=self._opened,
        )

    async def _queue_depths(self) -> dict[str, float]:
        depths = {}
        for name in Topology(self.prefix).all_queues():
            try:
                queue = await self.channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.AMQPError:
                # A failed passive declare closes the channel: a new one for the next.
                self.channel = await self.amqp.channel()
                continue
            count = queue.declaration_result.message_count
            depths[f"queue {name.removeprefix(self.prefix + '.')}"] = float(count or 0)
        return depths

    async def _kpi_lag(self) -> dict[str, float]:
        lags = {name: 0.0 for name in self.segments.values()}
        for row in await self.conn.fetch(_KPI_LAG):
            name = self.segments.get(row["segment_id"])
            if name is not None:
                lags[name] = max(0.0, float(row["lag"]))
        return lags

    async def _refresh_lag(self, now: float, oldest_signal: float | None) -> dict[str, float]:
        jobs = {
            row["key"]: RefreshJob(int(row["generation"]), bool(row["leased"]), row["requested_at"])
            for row in await self.conn.fetch(_REFRESH_JOBS)
        }
        rules = {str(segment_id) for segment_id in self.rule_segments}
        for key in rules:
            self.tracker.track(key)
        lags = self.tracker.observe(
            now, {key: job for key, job in jobs.items() if key in rules}, oldest_signal
        )
        return {self.segments[uuid.UUID(key)]: lag for key, lag in lags.items()}

    async def _cpu_labels(self) -> dict[int, str]:
        """pid -> label of every process measured now."""
        labels: dict[int, str] = {}
        for label, pid in self.processes.items():
            for each in self._family(label, pid):
                labels[each] = label
        for pid in self._rabbit:
            labels[pid] = "rabbitmq"
        backends = await self.conn.fetch(_BACKENDS)
        unknown = [
            row
            for row in backends
            if row["ours"] and (row["pid"], row["client_port"]) not in self._owners
        ]
        ports = self._ports_by_owner() if unknown else {}
        for row in unknown:
            owner = ports.get(row["client_port"])
            if row["backend_type"] != "client backend":
                owner = row["backend_type"]  # autovacuum worker, parallel worker
            if owner is not None:  # else looked up again next time (a watch may come)
                self._owners[(row["pid"], row["client_port"])] = f"postgres ({owner})"
        self._active = []
        self._opened = {}
        for row in backends:
            if row["ours"] and (row["pid"], row["client_port"]) not in self._seen:
                self._seen.add((row["pid"], row["client_port"]))
                owner = self._owners.get((row["pid"], row["client_port"]), "postgres (other)")
                self._opened[owner] = self._opened.get(owner, 0) + 1
            label = self._owners.get((row["pid"], row["client_port"]), "postgres (other)")
            if row["pid"] == self.own_backend:
                label = PROBE
            elif row["background"]:
                label = SERVER
            elif not row["ours"]:
                label = ELSEWHERE
            elif row["state"] == "active":
                waiting = f" [waits: {row['waits']}]" if row["waits"] else ""
                statement = " ".join(row["query"].split())[:90]
                self._active.append(f"{label}: {statement}{waiting}")
            labels[row["pid"]] = label
        labels[self.postmaster] = SERVER
        return labels

    @staticmethod
    def _family(label: str, pid: int) -> list[int]:
        """A watched process and those under it; this process alone (the services and the
        load generator are its children, watched on their own)."""
        return [pid] if label == "bench" else cpu.descendants(pid)

    def _reaped_seconds(self) -> float:
        stat = cpu.read_stat(self.postmaster)
        return cpu.parse_reaped(stat)[1] if stat else 0.0

    def _ports_by_owner(self) -> dict[int, str]:
        owners = {}
        for label, pid in self.processes.items():
            for each in self._family(label, pid):
                for port in cpu.tcp_ports_towards(each, self._pg_port):
                    owners[port] = label
        return owners


def _command(pid: int) -> str:
    try:
        return (cpu.PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""
