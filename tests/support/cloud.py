"""What the cloud tests (OAuth2 to the fake identity platform, Graph) start alike: a CA the
relay trusts (ca.pem), the fake identity platform (tests/oauthfake.py), the client secret,
HTTPS kept on loopback, the relay, and the queue's deferral reasons."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import trustme

from oauthfake import TENANT, FakeIdentity
from support.relay import free_port, start_relay, write_config

__all__ = ["CloudSetup", "factory"]


class CloudSetup:
    def __init__(self, tmp_path: Path, monkeypatch, *, secret: str = "s3cret",
                 idp_up: bool = True) -> None:
        self.tmp = tmp_path
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        self.idp = FakeIdentity(port=free_port(), ca=self.ca)
        if idp_up:
            self.idp.start()
        (tmp_path / "m365.secret").write_text(secret + "\n")
        self.data_dir = tmp_path / "var"
        # Nothing but loopback: a request to another host goes to a closed proxy port.
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        self.relay = None

    def start(self, text: str, **fields: object) -> None:
        """The relay with the config ``text`` ({main}, {idp}, {noport}, {tenant} and
        ``fields`` filled in)."""
        self.ports = {"main": free_port()}
        self.config = write_config(self.tmp, text, main=self.ports["main"], idp=self.idp.port,
                                   noport=free_port(), tenant=TENANT, **fields)
        self.relay = start_relay(self.config, self.data_dir, self.ports)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        self.idp.stop()

    def maillog(self) -> str:
        self.relay.flush_logs()
        return self.relay.logs("mail", ".log")

    def last_errors(self) -> list[str]:
        """Each queued recipient's deferral reason ('' before its first attempt)."""
        reader = self.relay.reader()
        try:
            return [r["last_error"] or "" for m in reader.list()
                    for r in reader.show(m["id"])["recipients"]]
        finally:
            reader.close()

    def wait_reason(self, pattern: str, timeout: float = 20) -> str:
        """The deferral reason (the queue's last_error) of a recipient, once it matches."""
        deadline = time.monotonic() + timeout
        while True:
            for error in self.last_errors():
                if error and re.search(pattern, error):
                    return error
            assert time.monotonic() < deadline, \
                f"no deferral matching {pattern}: {self.last_errors()}"
            time.sleep(0.1)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relaywarden", *args, "--config",
                               str(self.config)], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ))


def factory(cls, *args):
    """The body of a `make` fixture: yields cls(*args, **kw) for each call, closes them all
    after the test."""
    made = []

    def make(**kw):
        made.append(cls(*args, **kw))
        return made[-1]
    yield make
    for s in made:
        s.close()
