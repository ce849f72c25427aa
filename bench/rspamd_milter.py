"""rspamd as a milter on loopback: the one copy of its configuration and start-up, used by
the benchmark (bench/relay_bench.py, systems relaywarden+rspamd and postfix+rspamd) and by
the milter tests (tests/test_milters.py).

A minimal rspamd: the stock modules (from /etc/rspamd), one proxy worker in milter mode
that scans by itself (self_scan: no normal worker, no redis), no fuzzy servers, and its
milter_headers module adding X-Spamd-Result (with the symbols) and X-Rspamd-Queue-Id to
every message, loopback clients included. Nothing leaves the machine: its DNS goes to one
loopback nameserver, either a dead port (the tests: every lookup times out after 0.2 s) or
a :class:`NxResolver` this module runs, which answers every question at once with NXDOMAIN
(the benchmark: a lookup costs rspamd the same for every MTA, never a timeout). Its remote
maps (maps.rspamd.com) are never fetched: their names do not resolve.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

# The DNS settings go in override.d/options.inc, included at a higher priority than the stock
# options.inc: a second `dns { }` block beside the stock one is not merged, rspamd reads
# only the stock one and sends its lookups to /etc/resolv.conf's nameserver.
RSPAMD_CONF = """
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}
logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "%(log_level)s"; }
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:%(port)d";
    milter = yes;
    timeout = 30s;
    count = %(count)d;
    upstream "local" { default = yes; self_scan = yes; }
}
"""

OPTIONS_OVERRIDE = """
dns { nameserver = ["127.0.0.1:%(dns_port)d"]; timeout = 0.2s; retransmits = 1; }
"""

LOCAL_D = {
    "fuzzy_check.conf": "enabled = false;\n",
    "milter_headers.conf": ('use = ["x-spamd-result", "x-rspamd-queue-id"];\n'
                            "skip_local = false;\nskip_authenticated = false;\n"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str | None:
    """rspamd's path, or None when Debian's rspamd package is not installed."""
    return shutil.which("rspamd")


class NxResolver:
    """A DNS server on 127.0.0.1 (UDP) that answers every question at once with NXDOMAIN,
    and counts the questions (``names``: "TYPE name" -> count). A stand-in for a local
    caching resolver: rspamd's lookups cost a round trip on loopback, never a timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.names: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def queries(self) -> int:
        with self._lock:
            return sum(self.names.values())

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.names)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 12:
                continue
            ident, flags, qdcount = struct.unpack("!HHH", data[:6])
            # The question: labels up to the root, then QTYPE and QCLASS.
            pos, labels = 12, []
            try:
                while data[pos]:
                    labels.append(data[pos + 1:pos + 1 + data[pos]].decode("ascii", "replace"))
                    pos += 1 + data[pos]
                qtype = struct.unpack("!H", data[pos + 1:pos + 3])[0]
                question = data[12:pos + 5]
            except (IndexError, struct.error):
                continue
            with self._lock:
                self.names[f"{qtype} {'.'.join(labels)}"] += 1
            # QR, the request's opcode and RD, RA, rcode 3 (NXDOMAIN); the question echoed.
            answer_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3
            reply = struct.pack("!HHHHHH", ident, answer_flags, min(qdcount, 1), 0, 0, 0)
            try:
                self.sock.sendto(reply + question, peer)
            except OSError:
                pass

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


class Rspamd:
    """rspamd's proxy worker in milter mode on ``127.0.0.1:port``, configured under ``root``
    (which this creates). ``dns_port``: where its DNS questions go (a dead port when None).
    ``log_level``: "error" (quiet), "info" (one line per message with its symbols), ...
    """

    def __init__(self, root: Path, *, rspamd: str | None = None, dns_port: int | None = None,
                 log_level: str = "error", workers: int = 1) -> None:
        self.root = Path(root)
        self.binary = rspamd or binary()
        if self.binary is None:
            raise RuntimeError("rspamd is not installed: apt-get install rspamd")
        self.dns_port = dns_port if dns_port is not None else free_port()
        self.log_level = log_level
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        """The milter socket, as relaywarden's [milters] and Postfix's smtpd_milters name it."""
        return f"inet:127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "rspamd.log"

    def start(self, timeout: float = 60) -> int:
        for sub in ("db", "run", "log", "local/local.d", "local/override.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.root / "rspamd.conf").write_text(RSPAMD_CONF % {
            "port": self.port, "log_level": self.log_level, "count": self.workers})
        (self.root / "local/override.d/options.inc").write_text(
            OPTIONS_OVERRIDE % {"dns_port": self.dns_port})
        for name, text in LOCAL_D.items():
            (self.root / "local/local.d" / name).write_text(text)
        stderr = (self.root / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            # As root, rspamd would switch to its own user: it stays root (-i allows that).
            [self.binary, "-f", *(["-i", "-u", "root", "-g", "root"] if os.geteuid() == 0 else []),
             "-c", str(self.root / "rspamd.conf"),
             f"--var=LOCAL_CONFDIR={self.root / 'local'}", f"--var=DBDIR={self.root / 'db'}",
             f"--var=RUNDIR={self.root / 'run'}", f"--var=LOGDIR={self.root / 'log'}"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        stderr.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = (self.root / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"rspamd exited ({self.proc.returncode}): {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self.port
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rspamd did not listen on 127.0.0.1:{self.port} "
                                       f"within {timeout:.0f} s") from None
                time.sleep(0.2)

    def pids(self) -> list[int]:
        """The main process and its workers (its session: it was started in a new one)."""
        if self.proc is None:
            return []
        out = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.proc.pid and int(entry.name) != self.proc.pid:
                    out.append(int(entry.name))   # field 4 of stat: pgrp
        return out

    def cpu_seconds(self) -> float:
        """CPU of rspamd's processes so far (user + system, reaped children included)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / ticks
        return total

    def log(self, since: int = 0) -> str:
        """The log from byte offset ``since`` on."""
        try:
            with self.log_file.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    @staticmethod
    def scans(log: str) -> list[dict]:
        """The messages scanned, from an "info" log: one rspamd_task_write_log line each,
        with its queue id (the MTA's macro i), symbols, scan time (ms) and DNS requests."""
        out = []
        for line in log.splitlines():
            if "rspamd_task_write_log" not in line:
                continue
            qid = re.search(r"qid: <([^>]*)>", line)
            took = re.search(r"time: ([0-9.]+)ms", line)
            dns = re.search(r"dns req: (\d+)", line)
            symbols = re.search(r"\]: \[(.*?)\]\), len:", line) or re.search(r"\] \[(.*?)\]\)", line)
            out.append({
                "qid": qid.group(1) if qid else "",
                "ms": float(took.group(1)) if took else 0.0,
                "dns": int(dns.group(1)) if dns else 0,
                "symbols": sorted(re.findall(r"([A-Z][A-Z0-9_]*)\(", symbols.group(1)))
                if symbols else []})
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Rspamd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
