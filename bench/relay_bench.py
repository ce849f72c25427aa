#!/usr/bin/env python3
"""Side-by-side receive benchmark: relaywarden and Postfix, same load, same machine, one run.

Load: Postfix's smtp-source (20 sessions by default), N messages of a given size, a new
connection per message or connections reused. Each system runs with its safety settings on:
relaywarden with its defaults (fsync before 250, protocol and mail logs, Received header,
policy checks); Postfix as Debian ships it, relaying to an smtp-sink next hop
(shared/anchors/postfix-relay.sh).

Both systems relay to their own smtp-sink; a third column ("direct") sends straight into an
smtp-sink, the ceiling of the machine. Figures: the ACCEPT rate (messages per second until
smtp-source has its last 250), the END-TO-END rate (until the sink has counted every message),
and each server's CPU seconds per 1,000 messages (all its processes, exited ones included) and
peak RSS, and how idle the machine was meanwhile (near 0%: the cores were the bound; well
above: the clients' round trips were). Every run checks at the sink that every message
arrived exactly once (its count equals the number sent, no more).

Issue 13's inbound guard adds columns (--systems): relaywarden+rspamd and postfix+rspamd,
each asking the same rspamd (one instance this script starts on loopback, with a loopback
DNS that answers at once) about every message before its 250, after a self-check that
rspamd does the same work for both; relaywarden+validation (recipient validation from a
file) and relaywarden+hosted (the same hosted domain without it), whose ratios to plain
relaywarden are what each costs.

Issue 15's layouts: relaywarden+index (every message through the SQLite queue before its
250, delivery.handoff = false: the default before 2026-12-06), relaywarden+inline (one
process, hand-off) and relaywarden+inline+index; relaywarden+handoff and
relaywarden+inline+handoff say hand-off explicitly (the commands of earlier runs).

An A/B of a change: relaywarden@PATH runs the code of another checkout (PATH/src) beside
this tree's in the same runs, alternately, so both share the machine's hour:

    .venv/bin/python bench/relay_bench.py --sizes 1024 --runs 5 \
        --systems relaywarden,relaywarden@../before    # git worktree add ../before <commit>

    bash scripts/bench.sh              # 3 runs x (1 KB, 50 KB, 5 MB) x (new conn, reused)
    bash scripts/bench.sh --quick      # one short run, under a minute

Loopback only, fixed counts, time limits; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rspamd_milter import NxResolver, Rspamd

ROOT = Path(__file__).resolve().parent.parent


def _anchors() -> Path:
    """The reference set-up beside the checkout (shared/anchors), or beside the folder that
    holds it (a git worktree in a folder of worktrees); RELAY_BENCH_ANCHORS names it."""
    if os.environ.get("RELAY_BENCH_ANCHORS"):
        return Path(os.environ["RELAY_BENCH_ANCHORS"])
    for parent in (ROOT.parent, ROOT.parent.parent):
        if (parent / "shared" / "anchors").is_dir():
            return parent / "shared" / "anchors"
    return ROOT.parent / "shared" / "anchors"


ANCHORS = _anchors()
ANCHOR = ANCHORS / "postfix-relay.sh"
# The design probe of issue 15 (shared/anchors/pyrelay_proto.py, not part of relaywarden):
# a floor for what Python can do on this machine, shown beside the product when asked.
PROBE = ANCHORS / "pyrelay_proto.py"
TIMEOUT = 600


def machine() -> str:
    """What the figures were measured on: CPU model and count, memory, kernel."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return (f"{os.cpu_count()} x {model}, {mem_kb / 1048576:.0f} GB RAM, "
            f"Linux {os.uname().release}")


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


def _family(pid: int) -> list[int]:
    """The process and its children (relaywarden's delivery process runs as a child)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU of the process and its children, including children that have already exited
    and been reaped (Postfix's master reaps its smtpd, cleanup and smtp processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime + stime + cutime + cstime
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
    return total


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine since boot, all cores (proc(5),
    /proc/stat's "cpu" line; idle counts iowait too: a core waiting for the disk is free)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])     # steal included, guest already in user


def settle(pid: int, timeout: float = 15) -> None:
    """Wait until the server is idle (its delivery process has finished starting), so that
    start-up is not counted as work for the first messages."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


def peak_rss_mb(pid: int) -> float:
    total = 0.0
    for p in _family(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(l.split()[1]) for l in lines if l.startswith("VmHWM:")) / 1024
    return total


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


class Sink:
    """smtp-sink with its running counter (-c), read from its output; with ``dump``, it
    also appends every message it gets to that file (-D)."""

    def __init__(self, dump: Path | None = None) -> None:
        self.port = free_port()
        self.count = 0
        self.proc = subprocess.Popen(
            [tool("smtp-sink"), "-u", "postfix", "-c", *(["-D", str(dump)] if dump else []),
             f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port)

    def _read(self) -> None:
        buf = b""
        while chunk := self.proc.stdout.read1(4096):
            buf = (buf + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.count = int(found[-1])

    def wait(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sink got {self.count} of {n} messages in {timeout:.0f}s")
            time.sleep(0.005)
        return time.monotonic()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def seed_held(data_dir: Path, count: int) -> None:
    """A queue that already holds `count` messages for a held domain, written through the
    relay's own store (same schema), in large transactions."""
    import asyncio

    from relaywarden.queue.store import (Envelope, RecipientRecord, RecipientStatus, Store,
                                         new_queue_id)

    async def fill() -> None:
        store = Store.open(data_dir)
        body = b"Subject: held\r\n\r\n" + b"x" * 1000 + b"\r\n"
        batch = []
        for i in range(count):
            spool = store.new_spool()
            spool.write(body)
            env = Envelope(queue_id=new_queue_id(), received_at=time.time(), listener="seed",
                           client_ip="127.0.0.1", client_name=None, helo="seed",
                           auth_user=None, sender="seed@example.com",
                           recipients=(RecipientRecord(address=f"u{i}@held.test",
                                                       status=RecipientStatus.HELD,
                                                       rule="seed"),))
            batch.append(store.commit(env, spool))
            if len(batch) == 2000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
        store.close()

    asyncio.run(fill())
    index_history(data_dir)


def index_history(data_dir: Path) -> None:
    """The queue's journal moved into the message history, as the admin process does while
    a relay receives mail: seeded messages are in the history like any others, and the runs
    do not pay for indexing a million entries at once (a relay that received them over
    weeks indexed them as they came)."""
    from relaywarden.history.indexer import index_once
    from relaywarden.history.store import History
    from relaywarden.queue.journal import Journal

    history, journal = History.open(data_dir), Journal(data_dir)
    try:
        while index_once(history, journal, batch=20000):
            pass
    finally:
        journal.close()
        history.close()


class Relaywarden:
    name = "relaywarden"
    console = False

    def __init__(self, workdir: Path, *, keep_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.keep_dir = keep_dir   # reuse this directory (a seeded queue), keep it at stop

    # What a variant adds to the config: lines of [relay], lines of the listener, tables.
    def relay_lines(self) -> str:
        return ""

    def listener_lines(self) -> str:
        return ""

    def tables(self) -> str:
        return ""

    def env(self) -> dict[str, str] | None:
        """The relay's environment (None: this process's)."""
        return None

    #: The interpreter the relay runs on (relaywarden%PYTHON: another one).
    python = sys.executable

    def start(self, sink: Sink) -> int:
        self.dir = self.keep_dir or Path(tempfile.mkdtemp(dir=self.workdir, prefix="rw-"))
        self.port = free_port()
        config = self.dir / "relay.toml"
        # Defaults everywhere (fsync before 250, protocol and mail logs on, Received header,
        # policy checks); only the next hop and a loopback-only DNS are set.
        config.write_text(
            f'[relay]\nhostname = "bench.test"\ndata_dir = "var"\n{self.relay_lines()}\n'
            f'[dns]\nnameservers = ["127.0.0.1"]\nport = 1\n\n'
            f'[routes."*"]\nnext_hops = ["[127.0.0.1]:{sink.port}"]\n\n'
            f'[routes."held.test"]\nhold = true\n\n'
            f'{self.tables()}'
            f'[listeners.bench]\naddress = "127.0.0.1"\nport = {self.port}\n'
            f'{self.listener_lines()}'
            f'[listeners.bench.relay]\nnetworks = ["127.0.0.0/8"]\n'
        )
        # Settings to try on top of the defaults (an A/B of one setting), as TOML tables.
        extra = os.environ.get("RELAY_BENCH_EXTRA_TOML", "")
        if extra:
            with config.open("a") as f:
                f.write("\n" + extra.replace("\\n", "\n") + "\n")
        if self.console:
            self.admin_port = free_port()
            with config.open("a") as f:
                f.write(f'\n[admin]\nenabled = true\naddress = "127.0.0.1"\n'
                        f'port = {self.admin_port}\nusers_file = "admin-users"\n')
            subprocess.run([self.python, "-m", "relaywarden", "admin-user", "add", "bench",
                            "--role", "viewer", "--config", str(config), "--password-stdin"],
                           input=b"bench-password\n", check=True, stdout=subprocess.DEVNULL,
                           env=self.env())
        self.proc = subprocess.Popen(
            [self.python, "-m", "relaywarden", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env(),
        )
        wait_port(self.port)
        if self.console:
            wait_port(self.admin_port)
        settle(self.proc.pid)
        self.cpu0 = cpu_seconds(self.proc.pid)
        if self.console:
            self.watcher = ConsoleWatcher(self.admin_port)
        return self.port

    def stop(self) -> dict:
        if self.console:
            self.watcher.stop()
        stats = {"cpu_s": cpu_seconds(self.proc.pid) - self.cpu0,
                 "peak_rss_mb": peak_rss_mb(self.proc.pid)}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.keep_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return stats


class ConsoleWatcher:
    """What an admin leaves running beside the relay: Prometheus scraping /metrics every
    second, and the console's dashboard open (it asks for /api/v1/stats and /api/v1/status
    every 5 seconds, as the page does)."""

    def __init__(self, port: int) -> None:
        import http.cookiejar
        import urllib.request

        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        login = urllib.request.Request(
            f"{self.base}/api/v1/session", method="POST",
            data=json.dumps({"username": "bench", "password": "bench-password"}).encode(),
            headers={"Content-Type": "application/json"})
        self.opener.open(login, timeout=10).read()
        self.requests = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _get(self, path: str) -> None:
        try:
            self.opener.open(f"{self.base}{path}", timeout=10).read()
            self.requests += 1
        except OSError:
            self.errors += 1

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(1.0):
            self._get("/metrics")
            if tick % 5 == 0:
                self._get("/api/v1/stats?window=hour")
                self._get("/api/v1/status")
            tick += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if self.errors:
            raise RuntimeError(f"console watcher: {self.errors} of "
                               f"{self.requests + self.errors} requests failed")


class RelaywardenConsole(Relaywarden):
    """relaywarden with the admin server on, scraped and watched (see ConsoleWatcher)."""
    name = "relaywarden+console"
    console = True


class Postfix:
    name = "postfix"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self, sink: Sink) -> int:
        if not ANCHOR.exists():
            raise SystemExit(f"the Postfix reference set-up {ANCHOR} is not there (it sits "
                             "beside the checkout, in shared/anchors); without it, run "
                             "--systems relaywarden,direct")
        self.dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix="pf-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        subprocess.run(["bash", str(ANCHOR), "start", str(self.port), str(sink.port),
                        str(self.dir / "pf")], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        pid_file = self.dir / "pf" / "queue" / "pid" / "master.pid"
        self.master = int(pid_file.read_text().split()[0])
        self.cpu0 = cpu_seconds(self.master)
        return self.port

    def stop(self) -> dict:
        # Postfix's processes: the master, the daemons it runs, and those it has reaped.
        stats = {"cpu_s": cpu_seconds(self.master) - self.cpu0,
                 "peak_rss_mb": peak_rss_mb(self.master)}
        subprocess.run(["bash", str(ANCHOR), "stop", str(self.dir / "pf")], timeout=60,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        return stats


class RspamdService:
    """The one rspamd that relaywarden+rspamd and postfix+rspamd both use as their milter,
    started at first use (bench/rspamd_milter.py: its proxy worker in milter mode, one
    process, logging at "info" as rspamd does by default: one line per message with its
    symbols, scan time and DNS requests). Its DNS goes to a loopback server that answers
    every question at once with NXDOMAIN: a lookup costs rspamd the same whichever MTA sent
    the message, never a timeout, and nothing leaves the machine."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rspamd: Rspamd | None = None
        self.dns: NxResolver | None = None

    def socket(self) -> str:
        if self.rspamd is None:
            self.dns = NxResolver()
            self.rspamd = Rspamd(self.workdir / "rspamd", dns_port=self.dns.port,
                                 log_level="info")
            self.rspamd.start()
            settle_pids(self.rspamd.cpu_seconds)
        return self.rspamd.socket

    def sample(self) -> tuple[float, int]:
        """rspamd's CPU seconds so far, and where its log ends now."""
        assert self.rspamd is not None
        return self.rspamd.cpu_seconds(), self.rspamd.log_size()

    def scans(self, since: int, expected: int, timeout: float = 10) -> list[dict]:
        """The messages rspamd scanned since log offset ``since``, waiting (up to timeout)
        until it has logged ``expected`` of them."""
        assert self.rspamd is not None
        deadline = time.monotonic() + timeout
        while True:
            found = Rspamd.scans(self.rspamd.log(since))
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def stop(self) -> None:
        if self.rspamd is not None:
            self.rspamd.stop()
        if self.dns is not None:
            self.dns.stop()


def settle_pids(cpu, timeout: float = 15) -> None:
    """Wait until cpu() stops growing (a process that has finished starting)."""
    deadline = time.monotonic() + timeout
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu()
        if now - last < 0.02:
            return
        last = now


class RelaywardenRspamd(Relaywarden):
    """relaywarden asking rspamd (RspamdService) about every message before its 250:
    [milters.rspamd] on the listener, on_failure = "tempfail" (nothing unfiltered passes)."""
    name = "relaywarden+rspamd"

    def __init__(self, workdir: Path, milter: RspamdService) -> None:
        super().__init__(workdir)
        self.milter = milter

    def listener_lines(self) -> str:
        return 'milters = ["rspamd"]\n'

    def tables(self) -> str:
        return (f'[milters.rspamd]\nsocket = "{self.milter.socket()}"\n'
                f'on_failure = "tempfail"\n\n')


class PostfixRspamd(Postfix):
    """The Postfix reference relay with the same rspamd as its milter (smtpd_milters,
    milter_default_action = tempfail: as relaywarden+rspamd, nothing unfiltered passes).

    smtpd_peername_lookup = no: otherwise Postfix names the client "localhost" (from
    /etc/hosts) in the milter's connect, and rspamd then looks that name and the HELO name
    up in three domain blocklists (six DNS requests per message), which it does not do for
    relaywarden's "[127.0.0.1]" (relaywarden's reverse lookups need DNS, off in the bench).
    With it, rspamd gets the same facts from both and does the same work."""
    name = "postfix+rspamd"

    def __init__(self, workdir: Path, milter: RspamdService) -> None:
        super().__init__(workdir)
        self.milter = milter

    def start(self, sink: Sink) -> int:
        socket_text = self.milter.socket()
        port = super().start(sink)
        config_dir = str(self.dir / "pf")
        # The anchor writes main.cf afresh at each start; the milter goes on top of it. No
        # smtpd has run yet, so every one the reload's master starts reads the milter.
        subprocess.run(["postconf", "-c", config_dir, "-e", f"smtpd_milters = {socket_text}",
                        "milter_default_action = tempfail", "smtpd_peername_lookup = no"],
                       check=True, timeout=60)
        subprocess.run(["postfix", "-c", config_dir, "reload"], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)   # the reload is asynchronous: let the master re-read main.cf
        return port


RECIPIENT = "sink@example.net"     # smtp-source's recipient (-t) for every message


class RelaywardenIndex(Relaywarden):
    """relaywarden with every message through the SQLite queue before its 250
    (delivery.handoff = false): the default until 2026-12-06, the baseline of hand-off."""
    name = "relaywarden+index"

    def tables(self) -> str:
        return '[delivery]\nhandoff = false\n\n'


class RelaywardenTree(Relaywarden):
    """relaywarden from another checkout: ``relaywarden@PATH`` in --systems runs the code of
    PATH/src (put first on PYTHONPATH; the same Python and packages) beside this tree's,
    alternately inside each run, so that both share the machine's hour. An A/B of a change
    made in separate runs drifts with the hour: on a shared machine the same code's CPU per
    message moved by a third within minutes (docs/benchmarks.md, 2026-12-07)."""

    def __init__(self, workdir: Path, tree: Path) -> None:
        super().__init__(workdir)
        self.tree = tree
        self.name = f"rw@{tree.name}"[:24]

    def env(self) -> dict[str, str]:
        path = [str(self.tree / "src"), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


class RelaywardenPython(Relaywarden):
    """relaywarden on another Python: ``relaywarden%PYTHON`` in --systems runs this tree's
    code with the interpreter PYTHON (a virtual environment with relaywarden installed,
    made from another build of CPython), alternately with the others inside each run. The
    same source used 10-15% less CPU on Debian's python3.11 (PGO, LTO, libpython linked into
    the executable) than on a CPython built with --enable-shared and no optimisations, as
    pyenv builds it (docs/benchmarks.md, 2026-12-07): an interpreter is part of a figure."""

    def __init__(self, workdir: Path, python: Path) -> None:
        super().__init__(workdir)
        self.python = str(python)
        self.name = f"rw%{python.parent.parent.name}"[:24]


class RelaywardenInline(Relaywarden):
    """relaywarden with one process receiving and delivering (delivery.process = "inline");
    hand-off as by default: the message goes to delivery from memory."""
    name = "relaywarden+inline"

    def tables(self) -> str:
        return '[delivery]\nprocess = "inline"\n\n'


class RelaywardenInlineIndex(Relaywarden):
    """One process, every message through the SQLite queue (handoff = false)."""
    name = "relaywarden+inline+index"

    def tables(self) -> str:
        return '[delivery]\nprocess = "inline"\nhandoff = false\n\n'


class RelaywardenHandoff(Relaywarden):
    """Hand-off said explicitly (issue 15, queue/log.py; the default since 2026-12-06, so
    the same as relaywarden): kept so that the commands of earlier runs still work."""
    name = "relaywarden+handoff"

    def tables(self) -> str:
        return '[delivery]\nhandoff = true\n\n'


class RelaywardenInlineHandoff(Relaywarden):
    """One process, hand-off said explicitly (the same as relaywarden+inline now)."""
    name = "relaywarden+inline+handoff"

    def tables(self) -> str:
        return '[delivery]\nprocess = "inline"\nhandoff = true\n\n'


class RelaywardenHosted(Relaywarden):
    """relaywarden with the recipients' domain (example.net) hosted, and its own route to
    the sink: relaywarden+validation without the validation. Against it, the ratio is what
    the validation itself costs; against plain relaywarden, what hosting the domain adds."""
    name = "relaywarden+hosted"

    def relay_lines(self) -> str:
        return 'hosted_domains = ["example.net"]\n'

    def tables(self) -> str:
        return f'[routes."example.net"]\nnext_hops = ["[127.0.0.1]:{self.sink_port}"]\n\n'

    def start(self, sink: Sink) -> int:
        self.sink_port = sink.port
        return super().start(sink)


class RelaywardenValidation(RelaywardenHosted):
    """relaywarden with recipient validation from a file: example.net hosted, its
    recipients listed in a file of 10,000 addresses (the bench's one recipient among them);
    the file source answers from memory, as a warm cache does. Against plain relaywarden
    in the same run, the ratio is what validation costs (1.00 = free). At each start, one
    session checks that validation is on: an unlisted address gets 550 5.1.1."""
    name = "relaywarden+validation"

    def tables(self) -> str:
        listed = [f"user{i}@example.net" for i in range(9_999)] + [RECIPIENT]
        (self.dir / "recipients.txt").write_text("\n".join(listed) + "\n")
        return ('[recipients."example.net"]\nfiles = ["recipients.txt"]\n\n'
                + super().tables())

    def start(self, sink: Sink) -> int:
        port = super().start(sink)
        import smtplib

        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("bench.test")
            client.mail("bench@example.com")
            unknown = client.rcpt("nobody@example.net")
            known = client.rcpt(RECIPIENT)
            client.rset()
        if unknown[0] != 550 or known[0] != 250:
            raise RuntimeError(f"{self.name}: validation is not on: RCPT of an unlisted address "
                               f"got {unknown}, of the listed one {known}")
        self.cpu0 = cpu_seconds(self.proc.pid)   # the check is not the benchmark's work
        return port


class Probe:
    """The throw-away probe (PROBE): group-commit spool with fdatasync before 250, pipelined
    persistent next-hop connections, uvloop; no policy, logs, TLS or retries. A floor, not
    a competitor: run only with --systems ...,probe."""
    name = "probe"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self, sink: Sink) -> int:
        if not PROBE.exists():
            raise SystemExit(f"the probe {PROBE} is not there (it sits beside the checkout, in "
                             "shared/anchors)")
        self.dir = Path(tempfile.mkdtemp(dir=self.workdir, prefix="probe-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(PROBE), "--port", str(self.port), "--next-port", str(sink.port),
             "--durability", "group", "--spool-dir", str(self.dir), "--uvloop",
             "--max-seconds", str(TIMEOUT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)
        settle(self.proc.pid)
        self.cpu0 = cpu_seconds(self.proc.pid)
        return self.port

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


class Direct:
    """No relay: smtp-source straight into smtp-sink, the ceiling of this machine."""
    name = "direct"

    def __init__(self, workdir: Path) -> None:
        pass

    def start(self, sink: Sink) -> int:
        return sink.port

    def stop(self) -> dict:
        return {}


def one_run(system, *, messages: int, size: int, sessions: int, reuse: bool) -> dict:
    sink = Sink()
    milter = getattr(system, "milter", None)
    try:
        port = system.start(sink)
        try:
            if milter is not None:
                milter_cpu0, log0 = milter.sample()
            idle0, total0 = machine_ticks()
            started = time.monotonic()
            accepted = started + smtp_source(port, messages=messages, size=size,
                                             sessions=sessions, reuse=reuse)
            arrived = sink.wait(messages, TIMEOUT)
            idle1, total1 = machine_ticks()
            time.sleep(0.5)   # a duplicate would arrive now: exactly once is checked below
            if milter is not None:
                milter_cpu1, _ = milter.sample()
                scans = milter.scans(log0, messages)
        finally:
            stats = system.stop()
        if milter is not None:
            # rspamd's own log: it scanned each message once, with these DNS requests.
            if len(scans) != messages:
                raise RuntimeError(f"{system.name}: rspamd logged {len(scans)} scans for "
                                   f"{messages} messages")
            stats["milter_cpu_s"] = milter_cpu1 - milter_cpu0
            stats["milter_dns"] = sum(scan["dns"] for scan in scans)
            stats["milter_scan_ms"] = statistics.median(scan["ms"] for scan in scans)
        if sink.count != messages:
            raise RuntimeError(f"{system.name}: the sink got {sink.count} messages, "
                               f"{messages} were sent (each must arrive exactly once)")
    finally:
        sink.stop()
    # The machine's idle share while the messages went through: near 0, the cores were the
    # bound; well above it, the clients' round trips were (issue 15).
    idle = 100 * (idle1 - idle0) / max(total1 - total0, 1)
    return {"accept": messages / (accepted - started), "e2e": messages / (arrived - started),
            "idle_pct": idle, **stats}


def spamd_result(message: str) -> tuple[str, list[str]]:
    """rspamd's verdict line and its symbols (sorted names) from a message's
    X-Spamd-Result header (folded over several lines)."""
    found = re.search(r"^X-Spamd-Result:(.*(?:\r?\n[ \t].*)*)", message, re.M | re.I)
    if not found:
        return "", []
    value = " ".join(found.group(1).split())
    return value.split(";", 1)[0].strip(), sorted(re.findall(r"([A-Z][A-Z0-9_]*)\(", value))


def compared(symbols: list[str]) -> list[str]:
    """The symbols without those of the receiving MTA's own Received header (see
    milter_self_check)."""
    return [s for s in symbols if not s.startswith("RCVD_") and s != "PREVIOUSLY_DELIVERED"]


def milter_self_check(systems: list, workdir: Path) -> dict[str, dict]:
    """One message through each system that uses rspamd, caught at a dumping sink: rspamd's
    verdict and symbols for each (from the X-Spamd-Result header it added), and how many
    DNS questions it asked. The systems are compared only if rspamd did the same work for
    each: same symbols, same number of questions; otherwise this stops the benchmark.

    One difference is expected and left out of the comparison: relaywarden's milters see
    the Received header it adds (rspamd then counts one: RCVD_COUNT_ONE, RCVD_NO_TLS_LAST,
    PREVIOUSLY_DELIVERED from its "for <...>"), Postfix's do not see Postfix's own
    (RCVD_COUNT_ZERO). Those are header rules rspamd runs for both; only their results
    differ."""
    dumps = workdir / "dumps"
    dumps.mkdir(exist_ok=True)
    os.chmod(dumps, 0o777)   # smtp-sink runs as postfix
    seen: dict[str, dict] = {}
    for system in systems:
        dump = dumps / system.name
        sink = Sink(dump)
        try:
            port = system.start(sink)
            try:
                _, log0 = system.milter.sample()
                smtp_source(port, messages=1, size=1024, sessions=1, reuse=False)
                sink.wait(1, 60)
                scans = system.milter.scans(log0, 1)
            finally:
                system.stop()
        finally:
            sink.stop()
        verdict, symbols = spamd_result(dump.read_text(errors="replace"))
        if not verdict:
            raise RuntimeError(f"{system.name}: the message arrived without rspamd's "
                               "X-Spamd-Result header: the milter was not asked")
        if len(scans) != 1 or scans[0]["symbols"] != symbols:
            raise RuntimeError(f"{system.name}: rspamd's log does not show the one scan of "
                               f"the message (header: {symbols}; log: {scans})")
        seen[system.name] = {"verdict": verdict, "symbols": symbols, "dns": scans[0]["dns"],
                             "scan_ms": scans[0]["ms"]}
        print(f"rspamd self-check, one message through {system.name}: {verdict}; "
              f"symbols {' '.join(symbols)}; {scans[0]['dns']} DNS requests; "
              f"scanned in {scans[0]['ms']:.1f} ms", file=sys.stderr, flush=True)
    first = next(iter(seen.values()))
    for entry in seen.values():
        if (compared(entry["symbols"]), entry["dns"]) != (compared(first["symbols"]),
                                                          first["dns"]):
            raise RuntimeError(
                "rspamd did not do the same work for each MTA, so their rates are not "
                "comparable: " + "; ".join(f"{n}: {e['symbols']}, {e['dns']} DNS questions"
                                           for n, e in seen.items()))
    return seen


def held_queue(args) -> int:
    """The end-to-end rate with an empty queue and with N messages held for another domain,
    alternating, median of --runs each. The held queue is seeded once and reused (each run
    delivers its own messages and leaves the held ones where they are)."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-held-"))
    try:
        seeded = workdir / "seeded"
        seeded.mkdir()
        started = time.monotonic()
        seed_held(seeded / "var", args.held)
        print(f"seeded {args.held:,} held messages (and indexed their history) in"
              f" {time.monotonic() - started:.0f} s",
              flush=True)
        rates: dict[int, list[float]] = {0: [], args.held: []}
        for run in range(args.runs):
            for held in (0, args.held):
                system = Relaywarden(workdir, keep_dir=seeded if held else None)
                entry = one_run(system, messages=args.messages, size=1024,
                                sessions=args.sessions, reuse=False)
                rates[held].append(entry["e2e"])
                print(f"run {run + 1}: {held:>9,} held: {entry['e2e']:,.0f} msgs/s end to end",
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    empty, full = statistics.median(rates[0]), statistics.median(rates[args.held])
    print(f"\n1 KB, new connection per message, median of {args.runs} "
          f"({args.messages:,} messages per run, {args.sessions} sessions):")
    print(f"  empty queue: {empty:,.0f} msgs/s ({min(rates[0]):,.0f}-{max(rates[0]):,.0f})")
    print(f"  {args.held:,} held: {full:,.0f} msgs/s "
          f"({min(rates[args.held]):,.0f}-{max(rates[args.held]):,.0f})")
    print(f"ratio: {full / empty:.2f}")
    if args.json_path:
        out = Path(args.json_path)
        out.parent.mkdir(parents=True, exist_ok=True)   # bench/results/ on a fresh clone
        out.write_text(json.dumps(
            {"held": args.held, "runs": args.runs, "messages": args.messages,
             "e2e_empty": rates[0], "e2e_held": rates[args.held], "ratio": full / empty},
            indent=2))
    return 0


def idle_sessions(count: int) -> dict:
    """RSS with `count` idle sessions open, and how fast a new client is greeted then.

    The sessions come from 100 loopback addresses (127.0.1.1 ...), so the default
    max_connections_per_ip (50) stays in force; max_connections is raised to hold them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-idle-"))
    port = free_port()
    config = workdir / "relay.toml"
    config.write_text(
        f'[relay]\nhostname = "bench.test"\ndata_dir = "var"\n\n'
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = 1\n\n'
        f'[routes."*"]\nnext_hops = ["[127.0.0.1]:1"]\n\n'
        f'[listeners.bench]\naddress = "127.0.0.1"\nport = {port}\n'
        f'[listeners.bench.limits]\nmax_connections = {count + 1000}\n'
        f'[listeners.bench.relay]\nnetworks = ["127.0.0.0/8"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "relaywarden", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        wait_port(port)
        base_rss = peak_rss_mb(proc.pid)
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=30,
                                         source_address=(f"127.0.1.{i % 100 + 1}", 0))
            socks.append(s)
        greeted = sum(1 for s in socks if s.recv(512).startswith(b"220 "))
        latencies = []
        for _ in range(50):
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10,
                                          source_address=("127.0.2.1", 0)) as s:
                if not s.recv(512).startswith(b"220 "):
                    raise RuntimeError("no greeting")
            latencies.append((time.monotonic() - started) * 1000)
        rss = sum(
            int(line.split()[1]) for p in _family(proc.pid)
            for line in Path(f"/proc/{p}/status").read_text().splitlines()
            if line.startswith("VmRSS:")) / 1024
        return {"sessions": count, "greeted": greeted, "rss_mb": rss, "rss_before_mb": base_rss,
                "greeting_ms_median": statistics.median(latencies),
                "greeting_ms_max": max(latencies)}
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


# The ratio rows: (what it says, numerator, denominator), shown when both ran.
RATIOS = [
    ("relaywarden / postfix", "relaywarden", "postfix"),
    ("relaywarden+rspamd / postfix+rspamd (same rspamd)", "relaywarden+rspamd", "postfix+rspamd"),
    ("validation's cost: relaywarden+validation / relaywarden (1.00 = free)",
     "relaywarden+validation", "relaywarden"),
    ("validation's own cost: relaywarden+validation / relaywarden+hosted (1.00 = free)",
     "relaywarden+validation", "relaywarden+hosted"),
    ("hosting the domain: relaywarden+hosted / relaywarden (1.00 = free)",
     "relaywarden+hosted", "relaywarden"),
    ("the console's cost: relaywarden+console / relaywarden (1.00 = free)",
     "relaywarden+console", "relaywarden"),
]
RATIO_COLUMNS = dict(zip([label for label, _, _ in RATIOS],
                         ["rw/pf", "rspamd rw/pf", "validation", "valid/hosted", "hosted",
                          "console"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--big-messages", type=int, default=100,
                    help="messages per run for sizes of 1 MB and more (default 100)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--sizes", default="1024,51200,5242880",
                    help="message sizes in bytes, comma separated")
    ap.add_argument("--systems", default="relaywarden,postfix,direct",
                    help="relaywarden, postfix, direct (smtp-source into smtp-sink: the ceiling), "
                    "relaywarden+console (the admin server on, /metrics scraped every second and "
                    "the dashboard open; with relaywarden, the 'console' ratio is its cost), "
                    "relaywarden+rspamd and postfix+rspamd (each with the same rspamd as its "
                    "milter, started once by the benchmark; the 'rspamd rw/pf' ratio), "
                    "relaywarden+validation (recipient validation from a file; with relaywarden, "
                    "the 'validation' ratio is its cost), relaywarden+hosted (the recipients' "
                    "domain hosted, without validation: the 'valid/hosted' ratio isolates the "
                    "validation), probe (the design probe of "
                    "shared/anchors/pyrelay_proto.py: a floor for Python on this machine, not a "
                    "product), relaywarden@PATH (the code of another checkout, PATH/src, beside "
                    "this one's in the same runs: an A/B of a change), relaywarden%%PYTHON "
                    "(this tree's code run by the interpreter PYTHON, a virtual environment's "
                    "python with relaywarden installed: an A/B of interpreters)")
    ap.add_argument("--json", dest="json_path", default="bench/results/latest.json")
    ap.add_argument("--held", type=int, metavar="N",
                    help="only compare the end-to-end rate with N messages already held in the queue")
    ap.add_argument("--idle", type=int, metavar="N",
                    help="only measure RSS and greeting latency with N idle sessions (e.g. 5000)")
    args = ap.parse_args()
    if args.held:
        return held_queue(args)
    if args.idle:
        result = idle_sessions(args.idle)
        print(f"{result['sessions']} idle sessions ({result['greeted']} greeted): relaywarden RSS "
              f"{result['rss_mb']:.0f} MB (before: {result['rss_before_mb']:.0f} MB); a new client "
              f"is greeted in {result['greeting_ms_median']:.1f} ms (median of 50, max "
              f"{result['greeting_ms_max']:.1f} ms)")
        return 0
    if args.quick:
        args.runs, args.messages, args.sizes = 1, 500, "1024"
        args.systems = args.systems.replace(",direct", "")

    sizes = [int(s) for s in args.sizes.split(",")]

    def count(size: int) -> int:
        return args.big_messages if size >= 1 << 20 else args.messages
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    os.chmod(workdir, 0o755)
    milter = RspamdService(workdir)
    systems = {"relaywarden": Relaywarden(workdir), "postfix": Postfix(workdir),
               "direct": Direct(workdir), "relaywarden+console": RelaywardenConsole(workdir),
               "probe": Probe(workdir),
               "relaywarden+rspamd": RelaywardenRspamd(workdir, milter),
               "postfix+rspamd": PostfixRspamd(workdir, milter),
               "relaywarden+validation": RelaywardenValidation(workdir),
               "relaywarden+hosted": RelaywardenHosted(workdir),
               "relaywarden+index": RelaywardenIndex(workdir),
               "relaywarden+inline": RelaywardenInline(workdir),
               "relaywarden+inline+index": RelaywardenInlineIndex(workdir),
               "relaywarden+handoff": RelaywardenHandoff(workdir),
               "relaywarden+inline+handoff": RelaywardenInlineHandoff(workdir)}
    for name in args.systems.split(","):
        if name.startswith("relaywarden@"):
            tree = Path(name.split("@", 1)[1]).expanduser().resolve()
            if not (tree / "src" / "relaywarden" / "__init__.py").is_file():
                ap.error(f"--systems: {name}: no src/relaywarden in {tree}")
            systems[name] = RelaywardenTree(workdir, tree)
        elif name.startswith("relaywarden%"):
            python = Path(name.split("%", 1)[1]).expanduser().absolute()
            if not (python.is_file() and os.access(python, os.X_OK)):
                ap.error(f"--systems: {name}: {python} is not an executable")
            systems[name] = RelaywardenPython(workdir, python)
    unknown = [s for s in args.systems.split(",") if s not in systems]
    if unknown:
        ap.error(f"--systems: unknown {', '.join(unknown)} (known: {', '.join(systems)})")
    chosen = [systems[s] for s in args.systems.split(",")]
    results: dict[str, list[dict]] = {}
    self_check: dict[str, dict] = {}
    try:
        with_milter = [s for s in chosen if getattr(s, "milter", None) is not None]
        if with_milter:
            self_check = milter_self_check(with_milter, workdir)
        for run in range(args.runs):
            for size in sizes:
                for reuse in (False, True):
                    for system in chosen:   # alternate systems inside each run
                        entry = one_run(system, messages=count(size), size=size,
                                        sessions=args.sessions, reuse=reuse)
                        key = f"{system.name} {size}B {'reused' if reuse else 'new-conn'}"
                        results.setdefault(key, []).append(entry)
                        print(f"run {run + 1}: {key}: {entry['accept']:,.0f} msgs/s accepted, "
                              f"{entry['e2e']:,.0f} msgs/s end to end, machine "
                              f"{entry['idle_pct']:.0f}% idle", file=sys.stderr)
    finally:
        milter.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    table = []
    for size in sizes:
        for mode in ("new-conn", "reused"):
            row: dict = {"size": size, "mode": mode}
            for system in chosen:
                runs = results.get(f"{system.name} {size}B {mode}", [])
                cell = {}
                for metric in ("accept", "e2e"):
                    rates = [r[metric] for r in runs]
                    cell[metric] = {"median": statistics.median(rates), "min": min(rates),
                                    "max": max(rates)}
                if runs:
                    cell["idle_pct"] = statistics.median(r["idle_pct"] for r in runs)
                if runs and "cpu_s" in runs[0]:
                    cell["cpu_s_per_1000"] = statistics.median(
                        r["cpu_s"] / count(size) * 1000 for r in runs)
                    cell["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                if runs and "milter_cpu_s" in runs[0]:
                    cell["rspamd_cpu_s_per_1000"] = statistics.median(
                        r["milter_cpu_s"] / count(size) * 1000 for r in runs)
                    cell["rspamd_dns_per_message"] = statistics.median(
                        r["milter_dns"] / count(size) for r in runs)
                    cell["rspamd_scan_ms"] = statistics.median(r["milter_scan_ms"] for r in runs)
                row[system.name] = cell
            row["ratios"] = {
                label: {m: row[a][m]["median"] / row[b][m]["median"] for m in ("accept", "e2e")}
                for label, a, b in RATIOS if a in row and b in row}
            if row["ratios"]:
                # The first of them, under the name earlier results used.
                row["ratio"] = next(iter(row["ratios"].values()))
            table.append(row)

    print(f"\nmsgs/s, median of {args.runs} (min-max); {args.messages} messages per run "
          f"({args.big_messages} of 1 MB and more), {args.sessions} sessions; "
          f"{time.strftime('%Y-%m-%d')}, {machine()}")
    labels = [label for label, a, b in RATIOS if any(label in row["ratios"] for row in table)]
    for metric, title in (("e2e", "end to end"), ("accept", "accepted")):
        print(f"\n{title}:")
        print(f"{'size':>7} {'mode':<9}" + "".join(f" {s.name:>24}" for s in chosen)
              + "".join(f" {RATIO_COLUMNS[label]:>12}" for label in labels))
        for row in table:
            cells = "".join(
                f" {row[s.name][metric]['median']:>9,.0f} "
                f"({row[s.name][metric]['min']:,.0f}-{row[s.name][metric]['max']:,.0f})".rjust(25)
                for s in chosen)
            ratios = "".join(f" {row['ratios'][label][metric]:12.2f}" for label in labels)
            print(f"{row['size']:>7} {row['mode']:<9}{cells}{ratios}")
    if labels:
        print("\nratios: " + "; ".join(f"{RATIO_COLUMNS[label]} = {label}" for label in labels))
    measured = [s for s in chosen if s.name != "direct"]
    if measured:
        print("\nserver CPU s per 1,000 messages (all its processes, not rspamd's), peak RSS MB:")
        print(f"{'size':>7} {'mode':<9}" + "".join(f" {s.name:>24}" for s in measured))
        for row in table:
            cells = "".join(
                f"{row[s.name]['cpu_s_per_1000']:>9.2f} s {row[s.name]['peak_rss_mb']:>7.0f} MB".rjust(25)
                for s in measured if "cpu_s_per_1000" in row[s.name])
            print(f"{row['size']:>7} {row['mode']:<9}{cells}")
    print("\nthe machine idle while the messages went through (% of all cores, median):")
    print(f"{'size':>7} {'mode':<9}" + "".join(f" {s.name:>24}" for s in chosen))
    for row in table:
        print(f"{row['size']:>7} {row['mode']:<9}"
              + "".join(f"{row[s.name]['idle_pct']:>23.0f} %" for s in chosen))
    if with_milter:
        print("\nrspamd (the one milter, shared): its CPU s per 1,000 messages; from its log, "
              "the median scan time (ms) and DNS requests per message:")
        print(f"{'size':>7} {'mode':<9}" + "".join(f" {s.name:>30}" for s in with_milter))
        for row in table:
            cells = "".join(
                (f"{row[s.name]['rspamd_cpu_s_per_1000']:.2f} s {row[s.name]['rspamd_scan_ms']:.1f} ms "
                 f"{row[s.name]['rspamd_dns_per_message']:.2f} dns").rjust(31)
                for s in with_milter)
            print(f"{row['size']:>7} {row['mode']:<9}{cells}")
        print("rspamd's symbols for one message through each (self-check): "
              + "; ".join(f"{n}: {e['verdict']}, {' '.join(e['symbols'])}"
                          for n, e in self_check.items()))
    out = Path(args.json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
                               "args": vars(args), "rspamd_self_check": self_check,
                               "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
