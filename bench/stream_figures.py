"""The arithmetic of bench.steady_stream, kept free of I/O so that tests can check it:
percentile summaries, whether a backlog grows, how far behind each rule segment's refreshes
are, and which `metrics.updated` answered which membership change."""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentile


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of the values (NaN without any), and their count."""
    if not values:
        nan = math.nan
        return {"n": 0, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


@dataclass(frozen=True)
class Trend:
    """A backlog over a run: its floor (least value) over the first and the last window, its
    peak, and whether it grew (None: the run is shorter than two windows)."""

    start: float
    end: float
    peak: float
    growing: bool | None


def trend(points: Sequence[tuple[float, float]], window: float, slack: float = 10.0) -> Trend:
    """`points` are (time, level). A queue that keeps up drains to about the same floor
    again and again (a saw-tooth of batches, debounces, refreshes); one that falls behind
    never does, and its floor rises. So the floors of the first and the last `window` are
    compared (a window must hold at least one drain), with `slack` items (or a quarter of
    the first floor, if more) allowed for noise."""
    if not points:
        return Trend(0.0, 0.0, 0.0, None)
    first_time, last_time = points[0][0], points[-1][0]
    head = [level for at, level in points if at <= first_time + window]
    tail = [level for at, level in points if at >= last_time - window]
    start, end = min(head), min(tail)
    peak = max(level for _, level in points)
    if last_time - first_time < 2 * window:
        return Trend(start, end, peak, None)
    return Trend(start, end, peak, end > start + max(slack, 0.25 * start))


def pending_trend(points: Sequence[tuple[float, float]], window: float, debounce: float) -> Trend:
    """`trend` of one rule segment's pending customers. A floor needs a refresh inside each
    window (a debounce and then some); a refresh empties the set, but the sample after it
    already holds what arrived since, so two samples' worth of arrivals (the peak being a
    debounce's worth) is the floor's noise, not growth."""
    peak = max((level for _, level in points), default=0.0)
    slack = max(10.0, 2 * peak / max(1.0, debounce))
    return trend(points, max(window, debounce + 10), slack)


@dataclass(frozen=True)
class RefreshJob:
    """A `rule_refresh` row of `jobs` as one sample saw it (times in epoch seconds)."""

    generation: int
    leased: bool
    requested_at: float | None


@dataclass
class _Refreshing:
    job: RefreshJob | None = None
    # The oldest change the running refresh covers, and the oldest one waiting for the next.
    running_since: float | None = None
    waiting_since: float | None = None


@dataclass
class RefreshTracker:
    """How long each rule segment's changes wait for the refresh that covers them, from the
    `rule_refresh` jobs sampled every second.

    A job row carries `requested_at` (the first request not yet served) until it is claimed;
    a claim bumps `generation` and holds a lease; a finished job loses the lease or goes. So
    a refresh that covered a request ended at the latest at the first sample that shows it
    over; the delay recorded is from the request to that sample (an upper bound, by one
    sampling interval). `lag()` is the age of the oldest change still uncovered now, change
    signals not yet folded into requests included."""

    # When a claim was never seen waiting (claimed between two samples), its request is
    # taken as `debounce` before the claim was seen.
    debounce: float
    segments: dict[str, _Refreshing] = field(default_factory=dict)
    # (when, seconds from the request) of each refresh seen ending, per segment.
    delays: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def track(self, key: str) -> None:
        """Follow this segment (its lag is 0 until a job for it shows up)."""
        self.segments.setdefault(key, _Refreshing())

    def observe(
        self, now: float, jobs: Mapping[str, RefreshJob], oldest_signal: float | None
    ) -> dict[str, float]:
        """Take one sample; returns each tracked segment's current lag in seconds."""
        lags = {}
        for key in set(self.segments) | set(jobs):
            state = self.segments.setdefault(key, _Refreshing())
            self._step(key, state, now, jobs.get(key))
            oldest = [t for t in (state.running_since, state.waiting_since) if t is not None]
            if oldest_signal is not None:
                oldest.append(oldest_signal)
            lags[key] = max(0.0, now - min(oldest)) if oldest else 0.0
        return lags

    def _step(self, key: str, state: _Refreshing, now: float, job: RefreshJob | None) -> None:
        previous = state.job
        claimed_since = (
            previous is not None and job is not None and (job.generation > previous.generation)
        )
        # The refresh seen running ended: gone, no longer leased, or another claim since.
        if state.running_since is not None and (job is None or not job.leased or claimed_since):
            self._ended(key, now, state.running_since)
            state.running_since = None
        if claimed_since and job is not None:
            covered = state.waiting_since
            if covered is None:
                covered = now - self.debounce
            if job.leased:
                state.running_since = covered
            else:
                self._ended(key, now, covered)  # claimed and done between two samples
            state.waiting_since = None
        elif previous is None and job is not None and job.leased:
            state.running_since = now - self.debounce  # first seen running
        if job is None:
            if state.waiting_since is not None:
                self._ended(key, now, state.waiting_since)
            state.waiting_since = None
        elif job.requested_at is not None:
            state.waiting_since = job.requested_at
        elif not job.leased:
            state.waiting_since = None
        state.job = job

    def _ended(self, key: str, now: float, since: float) -> None:
        self.delays.setdefault(key, []).append((now, max(0.0, now - since)))


@dataclass(frozen=True)
class MembershipChange:
    """One change the load generator made to the manual segment (wall-clock times)."""

    index: int
    adds: bool
    correlation_id: str
    due: float
    sent: float
    status: int


@dataclass(frozen=True)
class MetricsEvent:
    """A `metrics.updated` of the manual segment as received."""

    received: float
    time: float  # the event's own time (when the fold made it)
    correlation_id: str | None
    customers: int


@dataclass
class Matched:
    """Seconds from each change's due time to its `metrics.updated`, and how each was
    found: by its correlation id, or (the event carrying a later change's id) by the member
    count the change made, in an event made after the change was sent."""

    latencies: list[float] = field(default_factory=list)
    by_correlation: int = 0
    by_count: int = 0
    unmatched: int = 0


def match_changes(
    changes: Iterable[MembershipChange],
    events: Sequence[MetricsEvent],
    members: int,
    batch: int,
) -> Matched:
    """Changes alternate: even indexes add `batch` customers to a segment of `members`, odd
    ones remove them again. A change that failed is left out."""
    matched = Matched()
    by_id = {event.correlation_id: event for event in events if event.correlation_id}
    for change in sorted(changes, key=lambda c: c.index):
        if not 200 <= change.status < 300:
            continue
        event = by_id.get(change.correlation_id)
        if event is not None:
            matched.by_correlation += 1
        else:
            expected = members + batch if change.adds else members
            event = next(
                (
                    e
                    for e in events
                    if e.customers == expected
                    and e.time >= change.sent
                    and e.received >= change.sent
                ),
                None,
            )
            if event is None:
                matched.unmatched += 1
                continue
            matched.by_count += 1
        matched.latencies.append(event.received - change.due)
    return matched


def parse_change(record: Mapping[str, Any]) -> MembershipChange:
    return MembershipChange(
        index=int(record["index"]),
        adds=bool(record["adds"]),
        correlation_id=str(record["correlation_id"]),
        due=float(record["due"]),
        sent=float(record["sent"]),
        status=int(record["status"]),
    )
