"""Fixtures that run the real relay as a process on loopback, as an admin would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaywarden.queue.store import QueueReader


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

    def flush_logs(self) -> None:
        # The relay flushes its log buffers every second.
        time.sleep(1.3)


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


# Test configs never let the relay reach beyond loopback: DNS goes to a closed loopback
# port, and every domain routes to a closed loopback port, so accepted mail stays queued
# (deferred) where the receive tests can look at it.
HERMETIC = """
[dns]
nameservers = ["127.0.0.1"]
port = 1
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:1"]
"""

BASIC = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com", "*.example.org"]

[groups.scanners]
networks = ["127.0.0.3/32"]
recipient_domains = ["example.com", "*.example.com"]
senders = ["example.com"]
on_violation = "badmail"

[groups.printers]
networks = ["127.0.0.4/32"]
recipient_domains = ["example.com"]
on_violation = "reject"

[listeners.main]
address = "127.0.0.1"
port = {main}
max_message_size = "200KB"
max_recipients = 100
command_timeout = 3
data_timeout = 3

[listeners.main.access]
default = "allow"
deny = ["127.0.0.66/32"]

[listeners.main.relay]
networks = ["127.0.0.1/32", "127.0.0.3/32", "127.0.0.4/32"]

[listeners.main.line_endings]
bare_lf = "reject"
normalize_networks = ["127.0.0.9/32"]

# Above the defaults (1000, 50 per address): test_hostile opens 2,000 connections at once
# from 127.0.0.1. The limits themselves are tested in test_limits.py.
[listeners.main.limits]
max_connections = 5000
max_connections_per_ip = 5000
"""


@pytest.fixture
def relay(tmp_path):
    """The relay with the BASIC config: hosted example.com, relay for 127.0.0.1."""
    port = free_port()
    config = write_config(tmp_path, BASIC, main=port)
    r = start_relay(config, tmp_path / "var", {"main": port})
    yield r
    r.stop()
