"""The benchmark script itself, in short runs: it must keep working (the README's figures come
from it), count every message at the sink, and write its JSON. Postfix is not started here
(it needs root and the reference set-up beside the checkout); relaywarden and the direct
smtp-source -> smtp-sink ceiling are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "relay_bench.py"


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


# Each runs the benchmark script with real load: out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow


def test_quick_run_measures_both_modes_and_writes_json(tmp_path):
    result = tmp_path / "quick.json"
    out = bench("--quick", "--systems", "relaywarden,direct", "--json", str(result))
    data = json.loads(result.read_text())
    assert data["machine"] and data["args"]["quick"] is True
    modes = {(row["size"], row["mode"]) for row in data["table"]}
    assert modes == {(1024, "new-conn"), (1024, "reused")}
    for row in data["table"]:
        rw = row["relaywarden"]
        assert rw["e2e"]["median"] > 0 and rw["accept"]["median"] >= rw["e2e"]["median"] * 0.5
        assert rw["cpu_s_per_1000"] > 0 and rw["peak_rss_mb"] > 10
    assert "end to end:" in out.stdout and "relaywarden" in out.stdout


def test_held_queue_mode_seeds_and_compares(tmp_path):
    result = tmp_path / "held.json"
    out = bench("--held", "3000", "--runs", "1", "--messages", "300", "--json", str(result))
    data = json.loads(result.read_text())
    assert data["held"] == 3000 and len(data["e2e_empty"]) == len(data["e2e_held"]) == 1
    assert data["ratio"] > 0
    assert "seeded 3,000 held messages" in out.stdout and "ratio:" in out.stdout


def test_idle_mode_reports_rss_and_greeting_latency():
    out = bench("--idle", "300")
    assert "300 idle sessions (300 greeted)" in out.stdout, out.stdout
    assert "a new client is greeted in" in out.stdout
