#!/usr/bin/env python3
"""Where relaywarden's CPU goes on the benchmark's load: py-spy on each of its processes.

Starts relaywarden as bench/relay_bench.py does (its defaults, one smtp-sink next hop),
attaches py-spy (sampling, --nonblocking: the relay is not paused) to the receiving, the
delivery and the admin process (the history indexer: its CPU is counted once it has caught
up with the load), runs smtp-source, and prints for each process the functions with the
most samples, by self time and by total time (a function and what it calls), plus the
share of samples in a few named parts (the queue writer thread, the log, the protocol
logs, the SMTP core, the session, policy, outbound SMTP, the event loop's own C code).

    .venv/bin/python bench/profile_relay.py --messages 20000 [--reuse] [--top 30]
    .venv/bin/python bench/profile_relay.py --perf     # perf stat instead of py-spy
    RELAY_BENCH_EXTRA_TOML='[delivery]\\nhandoff = false' ... (an A/B of one setting)

With ``--perf``, `perf stat` instead of py-spy: per message, each process's CPU, context
switches and read/write/futex system calls (what the thread hand-offs cost: the issue
counts futex wake-ups against the probe's).

With ``--cprofile``, each process runs under cProfile instead (a sitecustomize.py put on
the relay's PYTHONPATH starts it, and writes its stats at the process's exit): Python calls
per message, which are the same from run to run where timings are not, and the functions
and files they go to. Times are the main thread's CPU under the profiler (every call costs
more under it); other threads (the queue writer, the indexer's) are not profiled.

With ``--callgrind``, each process runs under valgrind's callgrind with its counting
switched on (callgrind_control -i on) only for the load: machine instructions per message,
which do not drift with the machine's hour as CPU time does (the same run twice: within
0.2%), so that a change of 1% can be seen. Instructions are not time (cache misses and the
kernel's work are not in them), and the relay runs ~50 times slower under valgrind, so
its batches (group commit, the client's pipelining) are larger than at full speed: an A/B
of the same load, not a figure to set beside Postfix's. Use a few thousand messages.

Needs py-spy (pip install py-spy) or perf (Debian's linux-perf), and Postfix's
smtp-source/smtp-sink (scripts/bench.sh installs those). Loopback only.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_bench import Probe, Relaywarden, Sink, smtp_source  # noqa: E402

#: Parts of the code, by the file a sampled frame is in (first match wins, innermost frame
#: first): what the profile says in one line per part.
PARTS = [
    ("queue writer (SQLite)", ("queue/store.py:_transaction", "queue/store.py:_write_batch",
                               "sqlite3")),
    ("hand-off log", ("queue/log.py",)),
    ("protocol/mail logs", ("logs/",)),
    ("SMTP core (smtp/)", ("relaywarden/smtp/",)),
    ("policy", ("relaywarden/policy/",)),
    ("session", ("server/session.py", "server/trace.py")),
    ("outbound (delivery/)", ("relaywarden/delivery/",)),
    ("queue (store)", ("queue/store.py", "queue/spool.py")),
]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of one process, its threads included: Python and uvloop
    run in user time; sends, fdatasync and the loopback TCP stack in system time."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


PERF_EVENTS = ("task-clock", "context-switches", "syscalls:sys_enter_write",
               "syscalls:sys_enter_read", "syscalls:sys_enter_futex",
               "syscalls:sys_enter_fdatasync", "syscalls:sys_enter_io_uring_enter",
               "syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_epoll_pwait",
               "syscalls:sys_enter_getpid")


def settle(pid: int, quiet: float = 1.5, limit: float = 30.0) -> None:
    """Until the process has used no CPU for ``quiet`` seconds (at most ``limit``): the
    admin process indexes the history once a second, behind the load, and its share is
    only whole once it has caught up."""
    deadline = time.monotonic() + limit
    last = sum(cpu_of(pid))
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = sum(cpu_of(pid))
        if now - last < 0.01:
            return
        last = now


def perf_summary(out: Path, messages: int) -> str:
    """perf stat's CSV (-x ,): value,unit,event,... per line (with --per-thread, the thread
    first: comm-tid,value,unit,event,...); per message."""
    lines = []
    for line in out.read_text().splitlines():
        fields = line.split(",")
        thread = ""
        if fields and not fields[0].replace(".", "").isdigit() and len(fields) > 3:
            thread, fields = fields[0], fields[1:]
        if len(fields) < 3 or line.startswith("#") or not fields[0].replace(".", "").isdigit():
            continue
        value, event = float(fields[0]), fields[2]
        if thread and value == 0:
            continue
        where = f"  [{thread}]" if thread else ""
        if event == "task-clock":
            lines.append(f"    {value / messages:8.3f} ms  CPU (task-clock){where}")
        else:
            lines.append(f"    {value / messages:8.2f}     {event}{where}")
    return "\n".join(["  per message:"] + lines)


def summarise(raw: Path, top: int) -> str:
    """py-spy's raw output: one collapsed stack per line, "frame;frame;... count"."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_text)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
        part = "other (event loop, threads, C code)"
        for frame in reversed(frames):
            name = next((p for p, keys in PARTS if any(k in frame for k in keys)), None)
            if name is not None:
                part = name
                break
        parts[part] += n
    out = [f"  {samples} samples"]
    out.append("  parts (innermost relaywarden frame decides):")
    for name, n in parts.most_common():
        out.append(f"    {100 * n / samples:5.1f}%  {name}")
    out.append(f"  top {top} by self time:")
    for frame, n in own.most_common(top):
        out.append(f"    {100 * n / samples:5.1f}%  {frame}")
    out.append(f"  top {top} by total time:")
    for frame, n in total.most_common(top):
        out.append(f"    {100 * n / samples:5.1f}%  {frame}")
    return "\n".join(out)


#: Put on the relay's PYTHONPATH by --cprofile: the relay's processes (and only they) run
#: under cProfile, each writing <role>.prof into RELAYWARDEN_CPROFILE_DIR at its exit.
SITECUSTOMIZE = """\
import atexit, cProfile, os, sys, time
_roles = {"serve": "receiving", "delivery-worker": "delivery", "admin-worker": "admin"}
_role = next((_roles[a] for a in sys.argv if a in _roles), None)
_dir = os.environ.get("RELAYWARDEN_CPROFILE_DIR")
if _role and _dir:
    _profile = cProfile.Profile(time.thread_time)     # CPU, not the loop's idle waits

    def _dump():
        _profile.disable()
        _profile.dump_stats(os.path.join(_dir, _role + ".prof"))
    atexit.register(_dump)
    _profile.enable()
"""


def cprofile_summary(path: Path, messages: int, top: int) -> str:
    """Python calls per message, the files they are in, and the functions with the most
    time of their own (the profiler's time: compare calls, and shares within one run)."""
    stats = pstats.Stats(str(path)).stats          # type: ignore[attr-defined]
    def where(filename: str) -> str:
        for mark in ("src/", "python3.11/", "site-packages/"):
            if mark in filename:
                return filename.split(mark)[-1]
        return filename
    calls = sum(v[1] for v in stats.values())
    own = sum(v[2] for v in stats.values()) or 1.0
    by_file: collections.Counter[str] = collections.Counter()
    calls_by_file: collections.Counter[str] = collections.Counter()
    for (filename, _, _), (_, ncalls, tottime, _, _) in stats.items():
        key = "C functions" if filename == "~" else where(filename)
        by_file[key] += tottime
        calls_by_file[key] += ncalls
    out = [f"  {calls / messages:.0f} Python calls per message (coroutine resumes count as"
           " calls)", "  by file (own time, calls per message):"]
    for key, tottime in by_file.most_common(top):
        out.append(f"    {100 * tottime / own:5.1f}%  {calls_by_file[key] / messages:7.1f}  {key}")
    out.append(f"  top {top} functions by own time (calls per message):")
    ranked = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    for (filename, line, name), (_, ncalls, tottime, _, _) in ranked:
        out.append(f"    {100 * tottime / own:5.1f}%  {ncalls / messages:7.2f}  "
                   f"{where(filename)}:{line} {name}")
    return "\n".join(out)


def callgrind_summary(path: Path, messages: int) -> str:
    """Instructions per message: callgrind's total (its "summary:" or "totals:" line) over
    the messages."""
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    return f"  {total / messages / 1000:,.1f} thousand instructions per message"


def _py_spy() -> str:
    """py-spy from PATH, else beside this interpreter (a virtual environment's bin/)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        sys.exit("py-spy not found: pip install py-spy")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="connections reused (smtp-source -d)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--perf", action="store_true",
                    help="perf stat (context switches, system calls) instead of py-spy")
    ap.add_argument("--probe", action="store_true",
                    help="measure the throw-away probe (shared/anchors) the same way, for the"
                         " floor beside relaywarden's figures")
    ap.add_argument("--threads", action="store_true",
                    help="with --perf: the counts of each thread, not of the process")
    ap.add_argument("--cprofile", action="store_true",
                    help="cProfile in each process instead of py-spy: calls per message")
    ap.add_argument("--callgrind", action="store_true",
                    help="valgrind's callgrind in each process, counting during the load only:"
                         " instructions per message, which do not drift (an A/B of a change)")
    ap.add_argument("--gil", action="store_true",
                    help="sample only the thread holding the GIL: Python's own CPU, not the"
                         " time threads spend in system calls (fdatasync, send) or waiting")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    if args.cprofile:
        if args.perf or args.probe:
            sys.exit("--cprofile profiles relaywarden's own processes, without --perf or --probe")
        site = workdir / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        # Inherited by the relay and its children (and by the tools, which are not Python).
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
        os.environ["RELAYWARDEN_CPROFILE_DIR"] = str(workdir)
    sink = Sink()
    relay: Relaywarden | Probe = Probe(workdir) if args.probe else Relaywarden(workdir)
    if args.callgrind:
        if args.perf or args.cprofile or args.probe:
            sys.exit("--callgrind counts relaywarden's own processes, without --perf,"
                     " --cprofile or --probe")
        if shutil.which("valgrind") is None:
            sys.exit("valgrind not found (Debian's package valgrind)")
        # Every process the relay starts (its delivery and admin processes are exec'd)
        # runs under callgrind, not counting until told to: start-up is not the load.
        wrapper = workdir / "python-under-callgrind"
        wrapper.write_text(
            "#!/bin/sh\nexec valgrind -q --tool=callgrind --trace-children=yes"
            " --instr-atstart=no --dump-line=no"
            f" --callgrind-out-file={workdir}/callgrind.%p {sys.executable} \"$@\"\n")
        wrapper.chmod(0o755)
        relay.python = str(wrapper)
    try:
        port = relay.start(sink)
    except BaseException:
        sink.stop()         # a relay that did not start (a bad RELAY_BENCH_EXTRA_TOML, say)
        raise
    pids = {"probe" if args.probe else "receiving": relay.proc.pid}
    for child in children(relay.proc.pid):
        if "delivery-worker" in cmdline(child):
            pids["delivery"] = child
        elif "admin-worker" in cmdline(child):
            pids["admin"] = child       # the history indexer, the metrics sampler
    spies = {}
    for name, pid in pids.items():
        if args.cprofile:
            spies[name] = (workdir / f"{name}.prof", None)
            continue
        if args.callgrind:      # counting on: the load starts
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spies[name] = (workdir / f"callgrind.{pid}", None)
            continue
        out = workdir / f"{name}.{'perf' if args.perf else 'raw'}"
        command = (["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "-p", str(pid),
                    *(["--per-thread"] if args.threads else []), "-o", str(out)]
                   if args.perf else
                   [_py_spy(), "record", "--pid", str(pid), "--rate", str(args.rate),
                    "--nonblocking", "--threads", "--format", "raw", "--output", str(out),
                    *(["--gil"] if args.gil else [])])
        spies[name] = (out, subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
    time.sleep(1.0)     # py-spy attached
    cpu0 = {name: cpu_of(pid) for name, pid in pids.items()}
    elapsed = smtp_source(port, messages=args.messages, size=args.size,
                          sessions=args.sessions, reuse=args.reuse)
    sink.wait(args.messages, timeout=300)
    if "admin" in pids:
        settle(pids["admin"])
    cpu = {name: tuple(now - before for now, before in zip(cpu_of(pid), cpu0[name]))
           for name, pid in pids.items()}
    if args.perf:
        for _, spy in spies.values():
            spy.send_signal(signal.SIGINT)     # perf stat writes its counts and exits
    if args.callgrind:      # counting off: the stop is not the load
        for pid in pids.values():
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = relay.stop()            # SIGTERM: py-spy sees its target go and writes its file
    for _, spy in spies.values():
        if spy is None:
            continue
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.terminate()
    sink.stop()
    mode = "reused" if args.reuse else "new connection per message"
    print(f"{args.messages} messages of {args.size} B, {mode}: {args.messages / elapsed:,.0f}"
          f" msgs/s accepted; {relay.name} CPU {1000 * stats['cpu_s'] / args.messages:.3f} ms"
          " per message (all processes, the profiler's own work included)")
    for name, (out, _) in spies.items():
        user, system = (1000 * part / args.messages for part in cpu[name])
        print(f"\n{name} process (pid {pids[name]}): {user + system:.3f} ms of CPU per message"
              f" (user {user:.3f}, system {system:.3f})")
        if not out.exists():
            print("  (nothing written)")
        elif args.perf:
            print(perf_summary(out, args.messages))
        elif args.cprofile:
            print(cprofile_summary(out, args.messages, args.top))
        elif args.callgrind:
            print(callgrind_summary(out, args.messages))
        else:
            print(summarise(out, args.top))


if __name__ == "__main__":
    main()
