"""A relay on loopback in front of a real downstream SMTP server: what most end-to-end tests
start. A test file subclasses Site for what is its own (certificates, users, its send()), and
keeps its config text; the ports, the downstream server, the relay process, the mail log and
the queue's state come from here."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

from downstream import Downstream
from support.relay import free_port, start_relay, until, write_config

__all__ = ["Site"]


class Site:
    #: The config's listeners; each gets a free port, written into the config as {NAME}.
    listeners: tuple[str, ...] = ("main",)

    def __init__(self, tmp_path: Path, config: str, *, start_down: bool = True,
                 **fields: object) -> None:
        """``config`` is the TOML text with {main}, {down} (the downstream server's port),
        {noport} (a port nobody listens on) and any ``fields`` to fill in."""
        self.tmp = tmp_path
        self.ports = {name: free_port() for name in self.listeners}
        self.down = Downstream(free_port())
        self.down_port = self.down.port
        if start_down:
            self.down.start()
        self.config = write_config(tmp_path, config, down=self.down_port, noport=free_port(),
                                   **self.ports, **fields)
        self.data_dir = tmp_path / "var"
        self.relay = start_relay(self.config, self.data_dir, self.ports)

    def close(self) -> None:
        self.relay.stop()
        self.down.stop()

    def smtp(self, listener: str = "main", source: str = "127.0.0.1",
             helo: str = "client.test") -> smtplib.SMTP:
        """An smtplib session on a listener, after EHLO."""
        c = smtplib.SMTP("127.0.0.1", self.ports[listener], source_address=(source, 0),
                         timeout=30)
        c.ehlo(helo)
        return c

    def maillog(self) -> str:
        self.relay.flush_logs()
        return self.relay.logs("mail", ".log")

    def wait_log(self, pattern: str, timeout: float = 20.0) -> str:
        """The mail log once ``pattern`` (a regex) is in it: each look flushes the relay's
        logs on demand (SIGUSR1), so this waits for the event, not for a timer."""
        return self.relay.wait_log(pattern, timeout)

    def witness(self, to: str = "witness@example.com"):
        """Absence, proven by an event: a message sent now to the downstream server, waited
        for there. Once it has arrived, the delivery side has been running since the test's
        step before; mail it would have sent by then (a due message comes first: the queue
        is worked in due order) would be there too. Returns what the server holds."""
        with self.smtp() as c:
            c.mail("app@example.com")
            assert c.rcpt(to)[0] == 250
            code, text = c.data(b"Subject: witness\r\n\r\nwitness\r\n")
            assert code == 250, text
        until(lambda: any(to in m.recipients for m in self.down.messages),
              what="the witness never arrived")
        return list(self.down.messages)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`relaywarden ARGS --config CONFIG`; with ``check``, it must succeed."""
        proc = subprocess.run([sys.executable, "-m", "relaywarden", *args, "--config",
                               str(self.config)], capture_output=True, text=True, timeout=60)
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    def statuses(self) -> dict:
        """Each queued recipient's status, by address."""
        return {r["address"]: r["status"] for m in self.relay.messages()
                for r in m["recipients"]}

    def wait(self, predicate, timeout: float = 20.0) -> dict:
        """statuses() once ``predicate`` holds for it."""
        return until(self.statuses, predicate, timeout=timeout, step=0.1,
                     what="queue never got there")

    def wait_queue(self, predicate, timeout: float = 20.0) -> list[dict]:
        """The queue's rows (relay.messages()) once ``predicate`` holds for them."""
        return until(self.relay.messages, predicate, timeout=timeout, step=0.1,
                     what="queue never got there")
