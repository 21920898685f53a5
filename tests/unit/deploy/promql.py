"""The metric names a PromQL expression selects, and the metric names the services export.

The expressions are first checked by `promtool` (test_monitoring.py), so this only has to take
valid PromQL apart: strings, label matchers, ranges and label lists go, numbers and durations
go, and of the identifiers left, those not called like a function nor a keyword are metric
names."""

import importlib
import pkgutil
import re
from types import ModuleType

from prometheus_client import REGISTRY

import metrics_worker
import segment_api
import segments_shared
import sync_worker

# Grafana's interval variables, as a range Prometheus accepts.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBERS = re.compile(
    r"(?<![\w:])(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
    r"(?:(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)?)(?![\w:])"
)
_IDENTIFIERS = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metrics an expression selects by name (`name{...}` or a bare `name`)."""
    stripped = _STRINGS.sub('""', expr)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGES.sub(" ", stripped)
    stripped = _LABEL_LISTS.sub(" ", stripped)
    stripped = _NUMBERS.sub(" ", stripped)
    return {
        match.group(1)
        for match in _IDENTIFIERS.finditer(stripped)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    }


# The series each type of family exposes (prometheus_client names a counter's family without
# its `_total`).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}

SERVICE_PACKAGES: tuple[ModuleType, ...] = (
    segments_shared,
    segment_api,
    sync_worker,
    metrics_worker,
)


def exported_metric_names() -> frozenset[str]:
    """Every series name the services can export: each module of theirs imported (metrics
    are declared at import), then every family in the default registry, `/metrics`' source."""
    for package in SERVICE_PACKAGES:
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            # Alembic's environment runs migrations when imported.
            if ".migrations" not in module.name:
                importlib.import_module(module.name)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)
