"""Running the real relay as a process on loopback, as an admin would: free ports, the
config file, the process and what it wrote (queue, logs)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from relaywarden.queue.store import QueueReader

__all__ = ["RelayProcess", "free_port", "start_relay", "until", "wait_admin", "wait_port",
           "write_config"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now, and never one this test run handed out before: the
    kernel can give the same free port to two bind(0) calls in a row, and a test's relay
    and its downstream server on one port made the test talk to the wrong server (seen:
    ETRN answered by aiosmtpd)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def until(probe, predicate=bool, *, timeout: float = 20.0, step: float = 0.05,
          what: str = "never got there"):
    """``probe()``'s value once ``predicate`` holds for it (by default: once it is true);
    the test fails with ``what`` and the last value if ``timeout`` seconds pass first. The
    one polling loop of the tests: wait for the event, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"{what}: {value!r}"[:3000]
        time.sleep(step)


def inflow_counts(data_dir: Path, listener: str) -> tuple[float, float]:
    """Back-pressure's counters for ``listener`` as GET /metrics shows them (read from the
    metrics files): (answers or batches held back, seconds they waited); 0 before any."""
    from relaywarden import metrics

    body = metrics.exposition(data_dir)[0]
    found = [re.search(rb'relaywarden_inflow_delay%s_total\{listener="%s"\} (\S+)'
                       % (name, listener.encode()), body) for name in (b"ed", b"_seconds")]
    delayed, seconds = (float(m.group(1)) if m else 0.0 for m in found)
    return delayed, seconds


def delivery_pid(relay_pid: int) -> int:
    """The delivery process (`relaywarden delivery-worker`) a relay process started."""
    children = Path(f"/proc/{relay_pid}/task/{relay_pid}/children").read_text().split()
    for child in children:
        if b"delivery-worker" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no delivery process among {children}")


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(512)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"relay did not listen on {host}:{port}")


@dataclass
class RelayProcess:
    proc: subprocess.Popen
    config: Path
    data_dir: Path
    ports: dict[str, int]

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def reader(self) -> QueueReader:
        return QueueReader(self.data_dir)

    def messages(self) -> list[dict]:
        if not (self.data_dir / "queue.sqlite3").exists():
            return []
        r = self.reader()
        try:
            return r.list()
        finally:
            r.close()

    def body(self, queue_id: str) -> bytes:
        r = self.reader()
        try:
            return r.body(queue_id)
        finally:
            r.close()

    def logs(self, prefix: str, suffix: str) -> str:
        log_dir = self.data_dir / "log"
        return "".join(
            p.read_text() for p in sorted(log_dir.glob(f"{prefix}*{suffix}"))
            if p.name.endswith(suffix)
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def _flushes(self, process: str) -> tuple[int, str]:
        try:
            count, _, note = (self.data_dir / "run" / f"log-flush.{process}").read_text().partition(" ")
        except FileNotFoundError:
            return -1, ""
        return int(count), note.strip()

    def wait_log(self, pattern: str, timeout: float = 20.0) -> str:
        """The mail log once ``pattern`` (a regex) is in it. Each look flushes the relay's
        logs on demand (flush_logs), so this waits for the event, not for a timer."""
        deadline = time.monotonic() + timeout
        while True:
            self.flush_logs()
            log = self.logs("mail", ".log")
            if re.search(pattern, log):
                return log
            assert time.monotonic() < deadline, f"never logged {pattern!r}:\n{log[-3000:]}"
            time.sleep(0.1)

    def flush_logs(self, timeout: float = 10) -> None:
        """Until the relay has written out its buffered log lines: SIGUSR1 to the relay,
        which flushes and passes the signal on to its delivery process; each says it is done
        by counting in data_dir/run/log-flush.PROCESS (instead of sleeping through the
        once-a-second flush)."""
        if self.proc.poll() is not None:
            return      # a relay that stopped wrote its logs out on the way
        before = self._flushes("receiving")[0]
        delivery_before = self._flushes("delivery")[0]
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            count, note = self._flushes("receiving")
            if count > before and (note != "delivery"
                                   or self._flushes("delivery")[0] > delivery_before):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not flush its logs (exit {self.proc.poll()})")
            time.sleep(0.01)


def write_config(tmp_path: Path, body: str, **ports: int) -> Path:
    path = tmp_path / "relay.toml"
    text = textwrap.dedent(body)
    for name, port in ports.items():
        text = text.replace(f"{{{name}}}", str(port))
    path.write_text(text)
    return path


def start_relay(config: Path, data_dir: Path, ports: dict[str, int],
                host: str = "127.0.0.1") -> RelayProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaywarden", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    relay = RelayProcess(proc=proc, config=config, data_dir=data_dir, ports=ports)
    try:
        for port in ports.values():
            wait_port(host, port, proc)
    except Exception:
        relay.stop(signal.SIGKILL)
        raise
    return relay


def wait_admin(base: str, proc: subprocess.Popen, timeout: float = 30, verify=True) -> None:
    """Until the relay's admin server answers over HTTP(S) at ``base``."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{base}/api/v1/openapi.json", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the admin server did not answer at {base}")
