#!/usr/bin/env python3
"""Side-by-side receive benchmark: relaywarden and Postfix, same load, same machine, one run.

Load: Postfix's smtp-source (20 sessions by default), N messages of a given size, a new
connection per message or connections reused. Each system runs with its safety settings on:
relaywarden with its defaults (fsync before 250, protocol and mail logs, Received header,
policy checks); Postfix as Debian ships it, relaying to an smtp-sink next hop
(shared/anchors/postfix-relay.sh).

What it measures now: the ACCEPT rate (messages per second until smtp-source has its last 250)
and relaywarden's CPU seconds per 1,000 messages and peak RSS. End-to-end figures (until the
sink has every message) need relaywarden's delivery half (the delivery issue) and are added
with it. Every relaywarden run checks that the queue holds exactly the messages sent.

    python3 bench/relay_bench.py              # 3 runs x (1 KB, 50 KB) x (new conn, reused)
    python3 bench/relay_bench.py --quick      # one short run, under a minute

Loopback only, fixed counts, time limits; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT.parent / "shared" / "anchors" / "postfix-relay.sh"
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        sys.exit(f"{name} not found: install Debian's postfix package (scripts/test.sh does)")
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks   # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def smtp_source(port: int, *, messages: int, size: int, sessions: int, reuse: bool) -> float:
    cmd = [tool("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", "bench@example.com", "-t", "sink@example.net"]
    if reuse:
        cmd.append("-d")   # keep the connection: the next message goes over the same one
    cmd.append(f"127.0.0.1:{port}")
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stderr.strip()}")
    return elapsed


class Relaywarden:
    name = "relaywarden"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self) -> int:
        self.dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix="rw-"))
        self.port = free_port()
        config = self.dir / "relay.toml"
        config.write_text(
            f'[relay]\nhostname = "bench.test"\ndata_dir = "var"\n\n'
            f'[listeners.bench]\naddress = "127.0.0.1"\nport = {self.port}\n'
            f'max_recipients = 100\n\n[listeners.bench.relay]\nnetworks = ["127.0.0.0/8"]\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaywarden", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_port(self.port)
        self.cpu0 = cpu_seconds(self.proc.pid)
        return self.port

    def queued(self) -> int:
        db = sqlite3.connect(f"file:{self.dir / 'var' / 'queue.sqlite3'}?mode=ro", uri=True)
        (n,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        db.close()
        return n

    def stop(self) -> dict:
        stats = {"cpu_s": cpu_seconds(self.proc.pid) - self.cpu0,
                 "peak_rss_mb": peak_rss_mb(self.proc.pid)}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return stats


class Postfix:
    name = "postfix"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self) -> int:
        self.dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix="pf-"))
        os.chmod(self.dir, 0o755)
        self.sink_port = free_port()
        self.sink = subprocess.Popen(
            [tool("smtp-sink"), "-u", "postfix", "-c", f"127.0.0.1:{self.sink_port}", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        wait_port(self.sink_port)
        self.port = free_port()
        subprocess.run(["bash", str(ANCHOR), "start", str(self.port), str(self.sink_port),
                        str(self.dir / "pf")], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        return self.port

    def queued(self) -> int | None:
        return None   # Postfix delivers on its own; counted by the sink for end-to-end runs

    def stop(self) -> dict:
        subprocess.run(["bash", str(ANCHOR), "flush-wait", str(self.dir / "pf"), "120"],
                       timeout=180, stdout=subprocess.DEVNULL)
        subprocess.run(["bash", str(ANCHOR), "stop", str(self.dir / "pf")], timeout=60,
                       stdout=subprocess.DEVNULL)
        self.sink.terminate()
        self.sink.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--sizes", default="1024,51200", help="message sizes in bytes, comma separated")
    ap.add_argument("--systems", default="relaywarden,postfix")
    ap.add_argument("--json", dest="json_path", default="bench/results/latest.json")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.messages, args.sizes = 1, 500, "1024"

    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    os.chmod(workdir, 0o755)
    systems = {"relaywarden": Relaywarden(workdir), "postfix": Postfix(workdir)}
    chosen = [systems[s] for s in args.systems.split(",")]
    results: dict[str, list[dict]] = {}
    try:
        for run in range(args.runs):
            for size in sizes:
                for reuse in (False, True):
                    for system in chosen:   # alternate systems inside each run
                        port = system.start()
                        try:
                            elapsed = smtp_source(port, messages=args.messages, size=size,
                                                  sessions=args.sessions, reuse=reuse)
                            queued = system.queued()
                        finally:
                            stats = system.stop()
                        if queued is not None and queued != args.messages:
                            raise RuntimeError(
                                f"{system.name}: {queued} messages queued, {args.messages} sent")
                        key = f"{system.name} {size}B {'reused' if reuse else 'new-conn'}"
                        rate = args.messages / elapsed
                        entry = {"rate": rate, **stats}
                        results.setdefault(key, []).append(entry)
                        print(f"run {run + 1}: {key}: {rate:,.0f} msgs/s accepted", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = []
    for size in sizes:
        for mode in ("new-conn", "reused"):
            row = {"size": size, "mode": mode}
            for system in chosen:
                runs = results.get(f"{system.name} {size}B {mode}", [])
                rates = [r["rate"] for r in runs]
                row[system.name] = {
                    "median": statistics.median(rates), "min": min(rates), "max": max(rates),
                }
                if runs and "cpu_s" in runs[0]:
                    row[system.name]["cpu_s_per_1000"] = statistics.median(
                        r["cpu_s"] / args.messages * 1000 for r in runs)
                    row[system.name]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            if "relaywarden" in row and "postfix" in row:
                row["ratio"] = row["relaywarden"]["median"] / row["postfix"]["median"]
            table.append(row)

    print(f"\naccept rate, msgs/s (median of {args.runs}; min-max), {args.messages} messages, "
          f"{args.sessions} sessions, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    header = f"{'size':>7} {'mode':<9}" + "".join(f" {s.name:>24}" for s in chosen) + "   ratio"
    print(header)
    for row in table:
        cells = "".join(
            f" {row[s.name]['median']:>9,.0f} ({row[s.name]['min']:,.0f}-{row[s.name]['max']:,.0f})".rjust(25)
            for s in chosen)
        ratio = f"{row['ratio']:7.2f}" if "ratio" in row else "      -"
        print(f"{row['size']:>7} {row['mode']:<9}{cells} {ratio}")
    rw = [r["relaywarden"] for r in table if "relaywarden" in r and "cpu_s_per_1000" in r["relaywarden"]]
    if rw:
        print("relaywarden CPU s / 1000 msgs: "
              + ", ".join(f"{r['cpu_s_per_1000']:.2f}" for r in rw)
              + f"; peak RSS {max(r['peak_rss_mb'] for r in rw):.0f} MB")
    out = Path(args.json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args),
                               "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
