"""`make bench` (`python -m bench`) lists every benchmark, and every command docs/benchmarks.md
records runs a module that exists."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_make_bench_lists_every_benchmark() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    runnable = {
        path.stem
        for path in (ROOT / "bench").glob("*.py")
        if not path.stem.startswith("_") and '__name__ == "__main__"' in path.read_text()
    }
    assert {"rules_targets", "rules_operations", "sync_throughput"} <= runnable
    assert set(re.findall(r"-m bench\.(\w+)", listed)) == runnable


def test_recorded_commands_name_existing_benchmarks() -> None:
    recorded = set(re.findall(r"-m bench\.(\w+)", (ROOT / "docs" / "benchmarks.md").read_text()))
    assert recorded
    assert {name for name in recorded if not (ROOT / "bench" / f"{name}.py").exists()} == set()
