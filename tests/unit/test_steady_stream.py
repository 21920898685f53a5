"""The arithmetic of bench.steady_stream: percentiles, CPU accounting from /proc snapshots,
backlog growth, refresh lags, and matching membership changes to their `metrics.updated`."""

import math
import os
import random

import pytest

from bench import cpu
from bench.stream_figures import (
    MembershipChange,
    MetricsEvent,
    RefreshJob,
    RefreshTracker,
    match_changes,
    pending_trend,
    summary,
    trend,
)
from bench.stream_load import Plan, build, change_ids, schedule
from bench.stream_services import moved, parse_metrics

STAT = (
    "4242 (python -m bench) S 1 4242 4242 0 -1 4194560 9000 0 0 0 "
    f"{3 * cpu.TICKS} {cpu.TICKS // 2} 0 0 20 0 3 0 100 0 0"
)


def test_summary_takes_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    figures = summary(values)
    assert figures["n"] == 100
    assert figures["p50"] == 51  # index round(0.5 * 99) = 50
    assert figures["p95"] == 95
    assert figures["p99"] == 99
    assert figures["max"] == 100
    assert math.isnan(summary([])["p99"])


def test_stat_line_gives_user_plus_system_seconds() -> None:
    # The command holds a space and parentheses must not shift the fields.
    assert cpu.parse_stat(STAT) == pytest.approx(3.5)


def test_stat_line_gives_the_parent_and_its_reaped_children() -> None:
    # cutime and cstime follow utime and stime (fields 16 and 17).
    line = STAT.replace(" 0 0 20 0 3", f" {2 * cpu.TICKS} {cpu.TICKS} 20 0 3")
    parent, reaped = cpu.parse_reaped(line)
    assert parent == 1
    assert reaped == pytest.approx(3.0)


def test_machine_line_counts_idle_iowait_and_steal_as_not_busy() -> None:
    ticks = cpu.TICKS
    line = " ".join(str(n * ticks) for n in (100, 0, 20, 50, 5, 0, 5, 20, 0, 0))
    line = f"cpu  {line}\n"
    busy, total = cpu.parse_machine(line + "cpu0 1 2 3\n")
    assert busy == pytest.approx(125)
    assert total == pytest.approx(200)


def test_spent_counts_new_processes_whole_and_forgets_gone_ones() -> None:
    before = {1: 10.0, 2: 5.0, 3: 7.0}
    after = {1: 12.5, 2: 5.0, 4: 0.75, 3: 1.0}  # 3 is a reused pid: a new process
    used = cpu.spent(before, after)
    assert used == {1: 2.5, 2: 0.0, 4: 0.75, 3: 1.0}
    labels = {1: "segment-api", 4: "postgres (segment-api)", 3: "postgres (segment-api)"}
    assert cpu.by_label(used, labels) == {"segment-api": 2.5, "postgres (segment-api)": 1.75}
    assert cpu.hottest(used, labels) == {"segment-api": 2.5, "postgres (segment-api)": 1.0}


def test_our_own_series_of_a_metrics_page_and_what_moved() -> None:
    page = "\n".join(
        [
            "# HELP segments_jobs_total Jobs ended",
            'segments_jobs_total{queue="kpi_fold",outcome="done"} 12.0',
            'segments_job_seconds_bucket{queue="kpi_fold",le="0.1"} 3.0',
            'segments_job_seconds_sum{queue="kpi_fold"} 1.5',
            'segments_jobs_created{queue="kpi_fold",outcome="done"} 1.7e9',
            "process_cpu_seconds_total 4.0",
        ]
    )
    after = parse_metrics(page)
    assert after == {
        'segments_jobs_total{queue="kpi_fold",outcome="done"}': 12.0,
        'segments_job_seconds_sum{queue="kpi_fold"}': 1.5,
    }
    before = {"api": {'segments_jobs_total{queue="kpi_fold",outcome="done"}': 10.0}}
    assert moved(before, {"api": after}) == {
        "api": {
            'segments_jobs_total{queue="kpi_fold",outcome="done"}': 2.0,
            'segments_job_seconds_sum{queue="kpi_fold"}': 1.5,
        }
    }


def test_this_process_is_measured() -> None:
    seconds = cpu.process_seconds(os.getpid())
    assert seconds is not None
    assert seconds > 0
    assert os.getpid() in cpu.descendants(os.getpid())
    assert cpu.process_seconds(2**22 + 7) is None


def test_a_saw_tooth_backlog_is_steady_and_a_rising_floor_grows() -> None:
    saw = [(float(t), float(t % 10) * 30) for t in range(90)]
    assert trend(saw, window=30).growing is False
    rising = [(float(t), float(t % 10) * 30 + 2 * t) for t in range(90)]
    grown = trend(rising, window=30)
    assert grown.growing is True
    assert grown.end > grown.start
    assert trend(saw[:50], window=30).growing is None  # shorter than two windows
    noise = [(float(t), float(t % 3)) for t in range(90)]
    assert trend(noise, window=30, slack=10).growing is False


def test_pending_customers_are_judged_on_floors_beside_their_arrivals() -> None:
    # 150 customers a second, drained by a refresh every 60 s, sampled every second: the
    # floor is what arrived before the next sample, 75 to 150, whichever refresh it follows.
    def saw(floors: list[float]) -> list[tuple[float, float]]:
        points = []
        for cycle, floor in enumerate(floors):
            points += [(cycle * 60.0 + t, floor + 150.0 * t) for t in range(60)]
        return points

    assert pending_trend(saw([75, 150, 150]), window=60, debounce=60).growing is False
    # A refresh that stops draining: the floor climbs by a minute's arrivals.
    assert pending_trend(saw([75, 9000, 18000]), window=60, debounce=60).growing is True


def test_refresh_delays_run_from_the_request_to_the_sample_that_sees_it_done() -> None:
    tracker = RefreshTracker(debounce=60)
    assert tracker.observe(100, {}, None) == {}
    tracker.track("a")
    assert tracker.observe(101, {}, None) == {"a": 0.0}
    # Requested at 102, waiting; claimed (generation 1) at 163; done by 166.
    assert tracker.observe(110, {"a": RefreshJob(0, False, 102.0)}, None) == {"a": 8.0}
    assert tracker.observe(163, {"a": RefreshJob(1, True, None)}, None) == {"a": 61.0}
    # A change arrived during the refresh: a new request, while the first still runs.
    lags = tracker.observe(165, {"a": RefreshJob(1, True, 164.0)}, None)
    assert lags == {"a": 63.0}
    assert tracker.observe(166, {"a": RefreshJob(1, False, 164.0)}, None) == {"a": 2.0}
    assert tracker.delays["a"] == [(166, 64.0)]
    # Claimed and done between two samples, the row gone.
    assert tracker.observe(230, {}, None) == {"a": 0.0}
    assert tracker.delays["a"][-1] == (230, 66.0)
    # Signals not yet folded into a request count for every rule segment.
    assert tracker.observe(231, {}, 229.5) == {"a": 1.5}


def test_a_claim_never_seen_waiting_counts_from_a_debounce_before() -> None:
    tracker = RefreshTracker(debounce=60)
    tracker.observe(100, {"b": RefreshJob(3, False, 90.0)}, None)
    tracker.observe(200, {"b": RefreshJob(5, True, None)}, None)  # claimed twice meanwhile
    tracker.observe(201, {"b": RefreshJob(5, False, None)}, None)
    assert tracker.delays["b"] == [(201, 111.0)]
    tracker.observe(300, {"b": RefreshJob(6, True, None)}, None)  # never seen waiting
    tracker.observe(301, {}, None)
    assert tracker.delays["b"][-1] == (301, 61.0)


def test_changes_match_their_event_by_correlation_or_by_count() -> None:
    changes = [
        MembershipChange(0, True, "c-0", due=10.0, sent=10.01, status=200),
        MembershipChange(1, False, "c-1", due=12.0, sent=12.0, status=200),
        MembershipChange(2, True, "c-2", due=14.0, sent=14.0, status=500),
        MembershipChange(3, False, "c-3", due=16.0, sent=16.0, status=200),
    ]
    events = [
        MetricsEvent(received=10.3, time=10.2, correlation_id="c-0", customers=110),
        # An order change of a member folded after change 1 took the event's id.
        MetricsEvent(received=11.0, time=10.9, correlation_id="order-9", customers=110),
        MetricsEvent(received=12.4, time=12.3, correlation_id="order-7", customers=100),
    ]
    matched = match_changes(changes, events, members=100, batch=10)
    assert matched.by_correlation == 1
    assert matched.by_count == 1
    assert matched.unmatched == 1  # change 3 never got one; change 2 failed
    assert matched.latencies == pytest.approx([0.3, 0.4])


def test_the_load_schedule_and_its_requests() -> None:
    plan = Plan(
        customers=1000,
        orders=5000,
        orders_rate=10,
        customers_rate=4,
        seconds=4,
        warm_up=1,
        segment="s",
        segment_every=100,
        members_batch=3,
        first_change=4,
    )
    items = schedule(plan)
    kinds = [kind for _, kind, _ in items]
    assert kinds.count("order") == 50
    assert kinds.count("customer") == 20
    assert [index for _, kind, index in items if kind == "members"] == [4, 5]
    assert [offset for offset, _, _ in items] == sorted(offset for offset, _, _ in items)
    # Adds and removes alternate over the same customers, none a member (id % 100 == 0).
    assert change_ids(plan, 4) == change_ids(plan, 5) == ["c0000601", "c0000701", "c0000801"]
    assert all(int(c[1:]) <= plan.customers for k in range(100) for c in change_ids(plan, k))
    rng = random.Random(1)
    add, remove = build(plan, "members", 4, rng), build(plan, "members", 5, rng)
    assert (add.method, add.path) == ("POST", "/v1/segments/s/members")
    assert remove.path == "/v1/segments/s/members/remove"
    assert add.headers == [("X-Correlation-ID", "stream-0-4")]
    order = build(plan, "order", 7, rng)
    assert order.method == "PUT"
    assert order.path.startswith("/v1/orders/")
