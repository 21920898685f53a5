"""The figures bench.steady_stream reports for a stretch of its run (the measured run, or one
step of the ladder), from the load generator's result, the probe's samples and the
`metrics.updated` events received, and how they are printed."""

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stream_figures import (
    MetricsEvent,
    Trend,
    match_changes,
    parse_change,
    pending_trend,
    summary,
    trend,
)
from bench.stream_probe import ELSEWHERE, EXITED, PENDING, PROBE, SERVER, Sample

CORES = os.cpu_count() or 1
# Events nobody consumes wait there by design (bounded, oldest dropped): not a backlog.
NOT_CONSUMED = "queue unrouted"
# CPU that is not the benchmark database's work for the services: the probe's queries, the
# server's background processes, other databases, backends that exited (of any database).
NOT_THE_SERVICES = (PROBE, SERVER, ELSEWHERE, EXITED)


@dataclass
class Figures:
    name: str
    seconds: float
    offered: dict[str, float]  # requests/s due, per kind
    reached: dict[str, float]  # successful requests/s, per kind
    failed: dict[str, int]
    latency_ms: dict[str, dict[str, float]]  # per kind, from the due time
    backlogs: dict[str, Trend]
    kpi_lag: dict[str, dict[str, float]]  # per segment, seconds
    change_to_event: dict[str, float]  # seconds, and how the events were matched
    refresh: dict[str, dict[str, float]]  # per rule segment: refreshes seen, delays, lag
    cpu: dict[str, float]  # cores, mean over the stretch, per label
    busiest: dict[str, float]  # the busiest single process of each label, cores
    machine: float  # cores busy, everyone's processes
    database_seconds: float  # the benchmark database's backends, the probe's left out
    order_writes: int
    writes: int
    # Statements the database's backends were running at the samples, by whom: the mean
    # number of backends running each (the busiest first).
    active: dict[str, float]
    # How late the load generator put requests out (a starved generator delays them all).
    generator_late_ms: float = 0.0
    # What the database's pg_stat_database counts moved by over the stretch.
    database: dict[str, float] = field(default_factory=dict)
    # Connections opened per second, by whom (backends the probe saw appear).
    opened: dict[str, float] = field(default_factory=dict)
    # What each service's own counters (its /metrics) moved by over the stretch.
    counters: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def database_cores(self) -> float:
        return self.database_seconds / self.seconds if self.seconds else 0.0

    @property
    def others(self) -> float:
        """Cores the machine spent on processes that are not this benchmark's (a shared
        machine: other tests, other databases)."""
        ours = sum(v for label, v in self.cpu.items() if label not in (ELSEWHERE, EXITED))
        return max(0.0, self.machine - ours)

    @property
    def ms_per_order(self) -> float:
        return 1000 * self.database_seconds / self.order_writes if self.order_writes else math.nan

    def json(self) -> dict[str, Any]:
        data = asdict(self)
        data["database_ms_per_order_write"] = self.ms_per_order
        data["other_processes_cores"] = self.others
        return data


def within(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    return [sample for sample in samples if start < sample.at <= end]


def cores(samples: Sequence[Sample]) -> tuple[dict[str, float], dict[str, float], float]:
    """Mean cores per label, mean cores of each label's busiest process, and the machine."""
    elapsed = sum(sample.interval for sample in samples) or 1.0
    totals: dict[str, float] = {}
    busiest: dict[str, float] = {}
    for sample in samples:
        for label, seconds in sample.cpu.items():
            totals[label] = totals.get(label, 0.0) + seconds
        for label, seconds in sample.hottest.items():
            busiest[label] = busiest.get(label, 0.0) + seconds
    machine = sum(sample.machine_busy for sample in samples) / elapsed
    return (
        {label: seconds / elapsed for label, seconds in sorted(totals.items())},
        {label: seconds / elapsed for label, seconds in sorted(busiest.items())},
        machine,
    )


def database_seconds(samples: Sequence[Sample]) -> float:
    return sum(
        seconds
        for sample in samples
        for label, seconds in sample.cpu.items()
        if label.startswith("postgres (") and label not in NOT_THE_SERVICES
    )


def opened_per_owner(samples: Sequence[Sample]) -> Counter[str]:
    opened: Counter[str] = Counter()
    for sample in samples:
        opened.update(sample.opened)
    return opened


def figures(
    name: str,
    load: Mapping[str, Any],
    samples: Sequence[Sample],
    events: Sequence[MetricsEvent],
    refresh_delays: Mapping[str, Sequence[tuple[float, float]]],
    *,
    members: int,
    batch: int,
    debounce: float,
) -> Figures:
    start = float(load["measured_from"])
    seconds = float(load["seconds"])
    stretch = within(samples, start, start + seconds)
    span = max(1.0, seconds)
    backlogs = {}
    for backlog in stretch[0].backlogs if stretch else ():
        points = [(sample.at, sample.backlogs.get(backlog, 0.0)) for sample in stretch]
        window = max(10.0, span / 3)
        if backlog.startswith(PENDING):
            backlogs[backlog] = pending_trend(points, window, debounce)
        else:
            backlogs[backlog] = trend(points, window)
    kinds = load["kinds"]
    changes = [
        parse_change(record)
        for record in load["changes"]
        if start <= record["due"] <= start + seconds
    ]
    matched = match_changes(changes, events, members, batch)
    refresh = {}
    for segment in stretch[0].refresh_lag if stretch else ():
        delays = [d for at, d in refresh_delays.get(segment, ()) if start < at <= start + seconds]
        lags = [sample.refresh_lag.get(segment, 0.0) for sample in stretch]
        refresh[segment] = {
            "refreshes": len(delays),
            "max_delay": max(delays, default=math.nan),
            "max_lag": max(lags, default=0.0),
        }
    cpu, busiest, machine = cores(stretch)
    return Figures(
        name=name,
        seconds=seconds,
        offered={kind: value["offered_rate"] for kind, value in kinds.items()},
        reached={kind: value["rate"] for kind, value in kinds.items()},
        failed={kind: value["offered"] - value["ok"] for kind, value in kinds.items()},
        latency_ms={kind: summary(value["latencies_ms"]) for kind, value in kinds.items()},
        backlogs=backlogs,
        kpi_lag={
            segment: summary([sample.kpi_lag.get(segment, 0.0) for sample in stretch])
            for segment in (stretch[0].kpi_lag if stretch else ())
        },
        change_to_event={
            **{key: value for key, value in summary(matched.latencies).items()},
            "by_correlation": matched.by_correlation,
            "by_count": matched.by_count,
            "unmatched": matched.unmatched,
        },
        refresh=refresh,
        cpu=cpu,
        busiest=busiest,
        machine=machine,
        database_seconds=database_seconds(stretch),
        order_writes=int(kinds["order"]["ok"]),
        writes=sum(int(value["ok"]) for value in kinds.values()),
        generator_late_ms=float(load["dispatch_late_ms"]),
        opened={owner: n / seconds for owner, n in opened_per_owner(stretch).items()},
        database={
            name: stretch[-1].database.get(name, 0.0) - stretch[0].database.get(name, 0.0)
            for name in (stretch[0].database if len(stretch) > 1 else ())
        },
        active={
            statement: count / max(1, len(stretch))
            for statement, count in Counter(
                statement for sample in stretch for statement in sample.active
            ).most_common(10)
        },
    )


def ms_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def print_figures(figures: Figures, debounce: float) -> None:
    print(f"\n== {figures.name} ({figures.seconds:.0f} s measured)")
    print(
        f"requests (latency from the due time, ms; the generator sent them up to "
        f"{figures.generator_late_ms:,.0f} ms late):"
    )
    print(
        f"  {'kind':9} {'offered/s':>9} {'reached/s':>9} {'failed':>6} "
        f"{'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
    )
    for kind, latency in figures.latency_ms.items():
        print(
            f"  {kind:9} {figures.offered[kind]:9.1f} {figures.reached[kind]:9.1f} "
            f"{figures.failed[kind]:6d} {ms_text(latency['p50']):>7} {ms_text(latency['p95']):>7} "
            f"{ms_text(latency['p99']):>7} {ms_text(latency['max']):>7}"
        )
    print("backlogs (floor over the first and the last third, peak):")
    for name, level in figures.backlogs.items():
        verdict = {None: "too short to tell", True: "GROWING", False: "steady"}[level.growing]
        if name == NOT_CONSUMED:
            verdict = "not consumed by design"
        print(
            f"  {name:32} {level.start:9.0f} -> {level.end:9.0f}  peak {level.peak:9.0f}  {verdict}"
        )
    print("KPI lag per segment (s): p50 / p95 / max")
    for segment, lag in figures.kpi_lag.items():
        print(f"  {segment:32} {lag['p50']:6.1f} / {lag['p95']:6.1f} / {lag['max']:6.1f}")
    change = figures.change_to_event
    print(
        f"manual segment change -> metrics.updated: p50 {ms_text(change['p50'] * 1000)} ms, "
        f"p95 {ms_text(change['p95'] * 1000)} ms, max {ms_text(change['max'] * 1000)} ms "
        f"({change['by_correlation']:.0f} by correlation id, {change['by_count']:.0f} by "
        f"member count, {change['unmatched']:.0f} without an event)"
    )
    print(f"rule refreshes (debounce {debounce:.0f} s): refreshes seen, max delay, max lag")
    for segment, seen in figures.refresh.items():
        print(
            f"  {segment:32} {seen['refreshes']:4.0f}  {seen['max_delay']:7.1f} s  "
            f"{seen['max_lag']:7.1f} s"
        )
    print("CPU (cores, mean; busiest single process in brackets):")
    for label, value in figures.cpu.items():
        print(f"  {label:32} {value:5.2f} ({figures.busiest.get(label, 0.0):.2f})")
    print(
        f"  {'the machine (all processes)':32} {figures.machine:5.2f} of {CORES}, "
        f"{figures.others:.2f} of them not this benchmark's"
    )
    print("the services' counters over the stretch (their /metrics):")
    for service, counters in figures.counters.items():
        for series, value in sorted(counters.items()):
            if series.endswith(("_total", "_sum", "_count")):
                print(f"  {service:15} {series:80} {value:12,.2f}")
    if figures.database:
        writes = max(1, figures.order_writes)
        per = {name: value / writes for name, value in figures.database.items()}
        print(
            f"database counts per order write: {per['xact_commit']:.1f} commits, "
            f"{per['tup_inserted']:.1f} rows inserted, {per['tup_updated']:.1f} updated, "
            f"{per['tup_deleted']:.1f} deleted, {per['active_time']:.1f} ms of statements "
            f"running; {figures.database['sessions'] / figures.seconds:.1f} sessions opened/s"
        )
    opened = ", ".join(f"{owner} {rate:.2f}/s" for owner, rate in sorted(figures.opened.items()))
    print(f"database connections opened (backends seen appearing): {opened or 'none'}")
    print("statements running at the samples (mean backends running each):")
    for statement, share in figures.active.items():
        print(f"  {share:5.2f}  {statement}")
    print(
        f"database CPU: {figures.database_cores:.2f} cores; per order write "
        f"{figures.ms_per_order:.2f} ms ({figures.order_writes:,} order writes); per write of "
        f"any kind {1000 * figures.database_seconds / max(1, figures.writes):.2f} ms"
    )
    exited = figures.cpu.get(EXITED, 0.0) * figures.seconds
    print(
        f"  (backends that exited meanwhile, of any database, used {exited:.1f} s more: "
        f"{1000 * exited / max(1, figures.order_writes):.2f} ms per order write if they were "
        "ours, as on a quiet machine; sessions opened/s above says how many were)"
    )


def idle_figures(samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    """What the services cost doing nothing (pollers, timers): cores per label and the
    database's transactions per second."""
    stretch = within(samples, start, end)
    cpu, _, machine = cores(stretch)
    seconds = sum(sample.interval for sample in stretch) or 1.0
    counts = {
        name: (stretch[-1].database.get(name, 0.0) - stretch[0].database.get(name, 0.0)) / seconds
        for name in (stretch[0].database if len(stretch) > 1 else ())
    }
    return {
        "seconds": seconds,
        "cpu": cpu,
        "machine": machine,
        "database_cores": database_seconds(stretch) / seconds,
        "per_second": counts,
    }


def print_idle(idle: Mapping[str, Any]) -> None:
    per_second = idle["per_second"]
    busy = ", ".join(
        f"{label} {value:.2f}" for label, value in idle["cpu"].items() if value >= 0.005
    )
    print(
        f"idle, before the load ({idle['seconds']:.0f} s): database "
        f"{idle['database_cores']:.3f} cores, {per_second.get('xact_commit', 0):.0f} commits/s "
        f"and {per_second.get('xact_rollback', 0):.0f} rollbacks/s; cores: {busy}",
        flush=True,
    )
