"""The benchmark script itself, in short runs: it must keep working (the README's figures come
from it), count every message at the sink, and write its JSON. Postfix is started only by
the rspamd test, and only where it can be (root, the reference set-up beside the checkout);
relaywarden and the direct smtp-source -> smtp-sink ceiling everywhere."""

from __future__ import annotations

import json
import os
import shutil
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


def measured_beside(tmp_path: Path, system: str, column: str) -> None:
    """A quick run of ``system`` beside plain relaywarden: both measured in every row of the
    JSON (rates and CPU), the other one under ``column`` in the printed tables."""
    result = tmp_path / "ab.json"
    out = bench("--quick", "--systems", f"relaywarden,{system}", "--json", str(result))
    data = json.loads(result.read_text())
    for row in data["table"]:
        for name in ("relaywarden", column):
            assert row[name]["e2e"]["median"] > 0 and row[name]["cpu_s_per_1000"] > 0, name
    assert column in out.stdout


def refused(system: str) -> str:
    """The benchmark's error for a --systems entry it must refuse (before any run)."""
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--systems",
                          f"relaywarden,{system}"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout
    return out.stderr


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
        assert 0 <= rw["idle_pct"] <= 100
    assert "end to end:" in out.stdout and "relaywarden" in out.stdout
    assert "the machine idle while the messages went through" in out.stdout


def test_held_queue_mode_seeds_and_compares(tmp_path):
    result = tmp_path / "results" / "held.json"   # not made yet, as bench/results/ in a clone
    out = bench("--held", "3000", "--runs", "1", "--messages", "300", "--json", str(result))
    data = json.loads(result.read_text())
    assert data["held"] == 3000 and len(data["e2e_empty"]) == len(data["e2e_held"]) == 1
    assert data["ratio"] > 0
    assert "seeded 3,000 held messages" in out.stdout and "ratio:" in out.stdout


def test_idle_mode_reports_rss_and_greeting_latency():
    out = bench("--idle", "300")
    assert "300 idle sessions (300 greeted)" in out.stdout, out.stdout
    assert "a new client is greeted in" in out.stdout


def test_validation_systems_check_validation_and_show_its_ratios(tmp_path):
    """relaywarden+validation (a recipients file) and relaywarden+hosted (the same domain
    hosted, no validation) beside plain relaywarden: every message arrives once (the script
    checks at the sink), validation is on (each start sees an unlisted address refused,
    550), and the ratio rows name what each costs."""
    result = tmp_path / "validation.json"
    out = bench("--runs", "1", "--messages", "200", "--sizes", "1024", "--systems",
                "relaywarden,relaywarden+validation,relaywarden+hosted", "--json", str(result))
    data = json.loads(result.read_text())
    assert {(row["size"], row["mode"]) for row in data["table"]} == {(1024, "new-conn"),
                                                                     (1024, "reused")}
    for row in data["table"]:
        for system in ("relaywarden", "relaywarden+validation", "relaywarden+hosted"):
            assert row[system]["e2e"]["median"] > 0 and row[system]["cpu_s_per_1000"] > 0
        ratios = row["ratios"]
        assert set(ratios) == {
            "validation's cost: relaywarden+validation / relaywarden (1.00 = free)",
            "validation's own cost: relaywarden+validation / relaywarden+hosted (1.00 = free)",
            "hosting the domain: relaywarden+hosted / relaywarden (1.00 = free)"}
        for ratio in ratios.values():
            assert ratio["e2e"] > 0 and ratio["accept"] > 0
    assert "validation" in out.stdout and "valid/hosted" in out.stdout
    assert "validation = validation's cost" in out.stdout


def _anchor() -> Path | None:
    """The Postfix reference set-up, where the script looks for it (bench/relay_bench.py)."""
    root = Path(__file__).resolve().parent.parent
    candidates = [Path(os.environ["RELAY_BENCH_ANCHORS"])] if os.environ.get(
        "RELAY_BENCH_ANCHORS") else [root.parent / "shared" / "anchors",
                                     root.parent.parent / "shared" / "anchors"]
    for where in candidates:
        if (where / "postfix-relay.sh").exists():
            return where / "postfix-relay.sh"
    return None


@pytest.mark.skipif(_anchor() is None or os.geteuid() != 0,
                    reason="needs root and the Postfix reference set-up beside the checkout "
                           "(../shared/anchors/postfix-relay.sh)")
@pytest.mark.skipif(shutil.which("rspamd") is None, reason="needs Debian's rspamd")
def test_rspamd_systems_share_one_rspamd_that_does_the_same_work(tmp_path):
    """relaywarden+rspamd and postfix+rspamd with the one rspamd the script starts: the
    self-check sends one message through each and finds rspamd's header with the same
    symbols (but for the receiving MTA's own Received header) and the same DNS requests;
    every run's messages each arrive once and each is scanned once (rspamd's log); the
    ratio row is there."""
    result = tmp_path / "rspamd.json"
    out = bench("--runs", "1", "--messages", "100", "--sizes", "1024", "--systems",
                "relaywarden+rspamd,postfix+rspamd", "--json", str(result), timeout=400)
    data = json.loads(result.read_text())
    check = data["rspamd_self_check"]
    assert set(check) == {"relaywarden+rspamd", "postfix+rspamd"}
    rw, pf = check["relaywarden+rspamd"], check["postfix+rspamd"]
    assert rw["verdict"].startswith("default: False") and pf["verdict"].startswith("default: False")
    assert "MISSING_SUBJECT" in rw["symbols"] and "RCVD_COUNT_ZERO" in pf["symbols"]
    trace = ("RCVD_", "PREVIOUSLY_DELIVERED")
    assert ([s for s in rw["symbols"] if not s.startswith(trace)]
            == [s for s in pf["symbols"] if not s.startswith(trace)])
    assert rw["dns"] == pf["dns"] == 0
    for row in data["table"]:
        for system in ("relaywarden+rspamd", "postfix+rspamd"):
            cell = row[system]
            assert cell["e2e"]["median"] > 0 and cell["rspamd_cpu_s_per_1000"] > 0
            assert cell["rspamd_dns_per_message"] == 0
        assert row["ratios"]["relaywarden+rspamd / postfix+rspamd (same rspamd)"]["e2e"] > 0
    assert "rspamd rw/pf" in out.stdout and "rspamd self-check" in out.stderr


def test_the_profiler_counts_each_processes_python_calls_per_message():
    """bench/profile_relay.py --cprofile (what the performance notes cite): every relay
    process runs under cProfile and the summary divides by the messages relayed."""
    script = BENCH.parent / "profile_relay.py"
    out = subprocess.run([sys.executable, str(script), "--cprofile", "--reuse",
                          "--messages", "300", "--sessions", "5", "--top", "500"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert report.startswith("300 messages of 1024 B, reused:")
    for process in ("receiving", "delivery", "admin"):
        section = report.split(f"\n{process} process (pid ")[1]
        calls = int(section.split("\n")[1].split()[0])
        # A relayed message is hundreds of calls in the two SMTP processes (startup
        # counts too, divided by 300); the admin process's main thread does little.
        assert calls > (50 if process != "admin" else 0), section[:400]
    # Every file is listed (--top 500; with 300 messages the start-up's imports weigh as
    # much as the load, so ranks say little): each process's own code in its profile.
    receiving, delivery = report.split("\ndelivery process")
    assert "relaywarden/server/session.py" in receiving
    assert "relaywarden/delivery/engine.py" in delivery.split("\nadmin process")[0]


def test_another_checkout_runs_beside_this_one_in_the_same_runs(tmp_path):
    # A tree whose src holds this checkout's package and a sitecustomize.py that marks every
    # process started with it on PYTHONPATH: proof that relaywarden@PATH runs PATH/src.
    tree = tmp_path / "before"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "relaywarden").symlink_to(BENCH.parent.parent / "src" / "relaywarden")
    marks = tmp_path / "marks"
    marks.mkdir()
    (tree / "src" / "sitecustomize.py").write_text(
        f"import os\nopen(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\n")
    measured_beside(tmp_path, f"relaywarden@{tree}", "rw@before")
    assert list(marks.iterdir()), "no process ran with the other tree's src on PYTHONPATH"
    assert "no src/relaywarden" in refused(f"relaywarden@{tmp_path / 'nowhere'}")


def test_another_interpreter_runs_beside_this_one_in_the_same_runs(tmp_path):
    # An "interpreter" that marks each process it starts, then runs this one: proof that
    # relaywarden%PYTHON starts the relay with PYTHON (named by its environment's folder).
    python = tmp_path / "other" / "bin" / "python"
    python.parent.mkdir(parents=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    python.write_text(f"#!/bin/sh\ntouch {marks}/$$\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    measured_beside(tmp_path, f"relaywarden%{python}", "rw%other")
    assert list(marks.iterdir()), "no process was started with the other interpreter"
    python.chmod(0o644)
    assert "is not an executable" in refused(f"relaywarden%{python}")


def test_the_profiler_counts_instructions_per_message_during_the_load_only():
    """bench/profile_relay.py --callgrind (the A/Bs of docs/benchmarks.md since 2026-12-07):
    every relay process runs under callgrind, counting from the load's start to its end
    only, so a message's instructions do not include the start-up's imports."""
    script = BENCH.parent / "profile_relay.py"
    out = subprocess.run([sys.executable, str(script), "--callgrind", "--reuse",
                          "--messages", "300", "--sessions", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert report.startswith("300 messages of 1024 B, reused:")
    counts = {}
    for process in ("receiving", "delivery", "admin"):
        section = report.split(f"\n{process} process (pid ")[1]
        counts[process] = float(section.split("\n")[1].split()[0].replace(",", ""))
    # A relayed message is some hundred thousand instructions in each SMTP process; the
    # start-up (hundreds of millions, imports and config) would be over a million per
    # message of 300 if it were counted.
    for process in ("receiving", "delivery"):
        assert 50 < counts[process] < 1500, report
    assert 0 < counts["admin"] < 1500, report


@pytest.mark.parametrize("script", ["admin_bench.py", "engine_bench.py", "history_bench.py",
                                    "log_line_cost.py", "profile_relay.py", "relay_bench.py",
                                    "validation_cost.py"])
def test_each_benchmark_prints_its_help(script):
    # argparse %-formats every help string: a bare "%" (relaywarden%PYTHON) made --help
    # itself raise a ValueError.
    out = subprocess.run([sys.executable, str(BENCH.parent / script), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_the_line_cost_counts_instructions_per_line_of_a_formatter():
    script = BENCH.parent / "log_line_cost.py"
    out = subprocess.run([sys.executable, str(script), "--messages", "100", "--formats",
                          "json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figure = float(out.stdout.split("json", 1)[1].split()[0])
    # Thousands of instructions per JSON line: 9.4 at this writing. A count that took in
    # Python's start-up (~200 million instructions here, ~250 thousand a line) would be far
    # above, a count of nothing 0.
    assert 2 < figure < 40, out.stdout
    refused = subprocess.run([sys.executable, str(script), "--formats", "xml"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--formats: unknown xml" in refused.stderr
