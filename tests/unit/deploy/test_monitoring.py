"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules` and their
unit tests (`promtool test rules`), the dashboard's queries are valid PromQL, and every query
of either names only metrics the services export (SPEC section 2)."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.promql import exported_metric_names, grafana_to_promql, metric_names
from tests.unit.deploy.sources import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "segments.json"

# SPEC section 2: what operators alert on, and the gauges of what is waiting.
EXPECTED_ALERTS = {
    "SegmentsOutboxBacklogGrowing": "segments_outbox_backlog",
    "SegmentsOutboxEventTooOld": "segments_outbox_oldest_age_seconds",
    "SegmentsDeadLetters": "segments_dead_letter_depth",
    "SegmentsSyncFailures": "segments_sync_runs_ended_total",
    "SegmentsSubscriptionsOverdue": "segments_subscriptions_overdue",
    "SegmentsNoWorkerReady": "segments_ready",
}
WAITING_GAUGES = (
    "segments_outbox_backlog",
    "segments_outbox_oldest_age_seconds",
    "segments_queue_depth",
    "segments_dead_letter_depth",
    "segments_subscriptions_overdue",
    "segments_ready",
)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("SEGMENTS_TEST_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is not installed (`make test-unit` installs it as root)")
        pytest.skip("promtool is not installed: apt-get install prometheus (as root)")
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries: list[tuple[str, str]] = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    return queries


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    return exported_metric_names()


def test_the_metric_names_of_an_expression() -> None:
    expr = (
        'sum by (le, route) (rate(a_seconds_bucket{route=~"/v1/{id}", x="b c"}[5m])) > 0.5 '
        'and on (route) absent(b_total offset 1h == 1) or vector(1) * 2e3 + c:ratio{q="a[1]"}'
        "[1h:5m] unless group_left (z) max without (instance) (d)"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:ratio", "d"}
    assert metric_names(grafana_to_promql("rate(e_total[$__rate_interval])")) == {"e_total"}


def test_alert_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    tested = run_promtool("test", "rules", ALERT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_expected_alerts_exist_on_their_metrics() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert set(EXPECTED_ALERTS) <= names, f"missing {sorted(set(EXPECTED_ALERTS) - names)}"
    for alert, metric in EXPECTED_ALERTS.items():
        used = set().union(*(metric_names(r["expr"]) for r in rules if r["alert"] == alert))
        assert metric in used, f"{alert} does not look at {metric}"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    # Every alert's unit tests make it fire at least once.
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert names <= fired, f"never fired in alerts.test.yml: {sorted(names - fired)}"


def test_alert_rules_name_only_exported_metrics(exported: frozenset[str]) -> None:
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} names metrics no service exports: {unknown}"
    # The unit tests feed the rules series the services really export.
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            assert metric_names(series["series"]) <= exported, series["series"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool checks PromQL in rule files: each query becomes a recording rule."""
    queries = dashboard_queries()
    assert queries
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)}
                    for n, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run_promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_queries_name_only_exported_metrics(exported: frozenset[str]) -> None:
    shown: set[str] = set()
    for title, expr in dashboard_queries():
        promql = grafana_to_promql(expr)
        assert "$" not in promql, f"{title}: a Grafana variable this test does not know"
        names = metric_names(promql)
        assert names, f"{title}: {expr} names no metric"
        assert names <= exported, f"{title} queries metrics no service exports: {names - exported}"
        shown |= names
    missing = set(WAITING_GAUGES) - shown
    assert not missing, f"the dashboard shows none of {sorted(missing)}"


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ids = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        # Each panel reads the Prometheus the importer picks.
        uid = panel["datasource"]["uid"]
        assert uid.startswith("${"), panel["title"]
        assert variables[uid[2:-1]]["query"] == "prometheus", panel["title"]
    assert len(ids) == len(set(ids)), "panel ids repeat"
