"""Whether a stretch of bench.steady_stream's run met the issue's targets, whether it broke
(for the ladder), and what ran at full capacity."""

import math

from bench.stream_probe import SERVER
from bench.stream_report import CORES, NOT_CONSUMED, Figures, ms_text

SATURATED = 0.9  # of a core (a process), or of the machine's cores


def growing(figures: Figures) -> list[str]:
    return [
        f"{name} ({level.start:.0f} -> {level.end:.0f})"
        for name, level in figures.backlogs.items()
        if level.growing and name != NOT_CONSUMED
    ]


def broken(figures: Figures) -> list[str]:
    """Why this stretch counts as past the breaking point (empty: it held)."""
    reasons = [
        f"{kind} p99 {latency['p99']:.0f} ms"
        for kind, latency in figures.latency_ms.items()
        if latency["n"] and latency["p99"] > 1000
    ]
    reasons += [
        f"{kind}: {failed} failed"
        for kind, failed in figures.failed.items()
        if failed > 0.01 * max(1.0, figures.offered[kind] * figures.seconds)
    ]
    reasons += [f"{name} growing" for name in growing(figures)]
    return reasons


def saturated(figures: Figures) -> list[str]:
    """What ran at (nearly) full capacity: a process at a core, the database's backends or
    the whole machine at all its cores."""
    found = [
        f"{label} busiest process at {value:.0%} of a core"
        for label, value in figures.busiest.items()
        if value >= SATURATED and label != SERVER
    ]
    if figures.database_cores >= SATURATED * CORES:
        found.append(f"PostgreSQL backends at {figures.database_cores:.2f} of {CORES} cores")
    if figures.machine >= SATURATED * CORES:
        found.append(
            f"the machine at {figures.machine:.2f} of {CORES} cores "
            f"({figures.others:.2f} of them other processes)"
        )
    return found


def targets(figures: Figures, debounce: float) -> list[tuple[str, bool]]:
    """The issue's targets for the steady stream, each with whether this run met it."""
    worst_p99 = max((lat["p99"] for lat in figures.latency_ms.values() if lat["n"]), default=0)
    unknown = [
        name for name, t in figures.backlogs.items() if t.growing is None and name != NOT_CONSUMED
    ]
    worst_lag = max((lag["p95"] for lag in figures.kpi_lag.values()), default=0.0)
    change = figures.change_to_event
    refresh_worst = max(
        (
            max(seen["max_lag"], 0.0 if math.isnan(seen["max_delay"]) else seen["max_delay"])
            for seen in figures.refresh.values()
        ),
        default=0.0,
    )
    return [
        (f"API p99 under 250 ms (worst kind {worst_p99:.0f} ms)", worst_p99 < 250),
        (
            "no backlog growing"
            + (f" (too short to tell for {', '.join(unknown)})" if unknown else ""),
            not growing(figures) and not unknown,
        ),
        (f"KPI lag p95 at most 5 s in every segment (worst {worst_lag:.1f} s)", worst_lag <= 5),
        (
            f"manual change -> metrics.updated p95 under 1 s ({change['p95']:.2f} s, "
            f"{change['unmatched']:.0f} without an event)",
            change["p95"] < 1 and not change["unmatched"],
        ),
        (
            f"rule segments refreshed within debounce + 10 s = {debounce + 10:.0f} s "
            f"(worst {refresh_worst:.1f} s)",
            refresh_worst <= debounce + 10,
        ),
        (
            f"database CPU per order write under 5 ms ({figures.ms_per_order:.2f} ms)",
            figures.ms_per_order < 5,
        ),
    ]


LADDER_HEAD = (
    f"{'orders/s':>8} {'reached':>8} {'p99 ms o/c/m':>16} {'KPI lag p95':>11} "
    f"{'chg->evt p95':>12} {'DB ms/order':>11} {'DB cores':>8} {'machine':>7} {'others':>6}"
    "  state"
)


def ladder_row(figures: Figures) -> str:
    kinds = ("order", "customer", "members")
    p99 = "/".join(ms_text(figures.latency_ms[kind]["p99"]) for kind in kinds)
    lag = max((lag["p95"] for lag in figures.kpi_lag.values()), default=0.0)
    reasons = broken(figures)
    state = "held" if not reasons else "BROKE: " + "; ".join(reasons)
    hot = saturated(figures)
    if hot:
        state += " | saturated: " + "; ".join(hot)
    return (
        f"{figures.offered['order']:8.0f} {figures.reached['order']:8.1f} {p99:>16} "
        f"{lag:10.1f}s {figures.change_to_event['p95']:11.2f}s {figures.ms_per_order:11.2f} "
        f"{figures.database_cores:8.2f} {figures.machine:7.2f} {figures.others:6.2f}  {state}"
    )
