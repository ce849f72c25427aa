"""A failing disk under the queue: the client gets 451 4.3.0, nothing half-stored is kept or
delivered, and the relay goes on when the disk is healthy again.

The relay runs in this process (relaywarden.app.Relay, the same object `relaywarden serve`
runs), on 127.0.0.1, with a queue built on a FileOps that fails on demand (tests/faultfs.py):
the fault is handed to the relay when it is built, not selected by any configuration key.
Real SMTP clients (smtplib) send to it; a real downstream server (tests/downstream.py)
receives what it delivers (delivery runs inline, in the same process, on the same store).

`site` is the index path (delivery.handoff = false: every message is a SQLite transaction
before its 250; with hand-off on, the default, large bodies and held mail still take it);
`handoff_site` the hand-off log's (its entry and fdatasync are the durable record).
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from support.relay import free_port, until, write_config
from downstream import Downstream
from faultfs import FaultyFiles, eio
from relaywarden.app import Relay
from relaywarden.config.load import load_config
from relaywarden.metrics import _events
from relaywarden.queue import log as qlog
from relaywarden.queue.spool import SPOOL_MEMORY_LIMIT
from relaywarden.queue.store import QueueReader

CONFIG = """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com"]

[delivery]
process = "inline"
handoff = false
retry_schedule = [1]
connect_timeout = 2
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


class InProcessRelay:
    """relaywarden's Relay on its own event loop in a thread, with the given FileOps."""

    def __init__(self, config: Path, files: FaultyFiles) -> None:
        self.cfg = load_config(config)
        self.relay = Relay(self.cfg, files=files)
        self.relay.config_path = config      # the admin process it starts reads the same file
        self.data_dir = self.cfg.data_dir
        self.port = next(iter(self.cfg.listeners.values())).port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                await self.relay.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._started.set()
            await self.relay.wait_stopped()
            await self.relay.stop()
        asyncio.run(main())

    def start(self) -> "InProcessRelay":
        self._thread.start()
        assert self._started.wait(30), "the relay did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.relay.request_stop)
            self._thread.join(60)
        _events.stop()   # the relay's metrics state lives in this process

    def queued(self) -> int:
        reader = QueueReader(self.data_dir)
        try:
            return reader.count()
        finally:
            reader.close()

    def files_in(self, name: str) -> list[str]:
        return sorted(p.name for p in (self.data_dir / name).iterdir())


@pytest.fixture
def site(tmp_path):
    down_port, main = free_port(), free_port()
    config = write_config(tmp_path, CONFIG, main=main, down=down_port, noport=free_port())
    down = Downstream(down_port).start()
    files = FaultyFiles()
    relay = InProcessRelay(config, files).start()
    yield relay, files, down
    relay.stop()
    down.stop()


def body(token: str, size: int = 0) -> bytes:
    head = f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {token}\r\n\r\n".encode()
    filler = b"".join(b"%07d filler filler filler filler filler filler filler\r\n" % i
                      for i in range(size // 60 + 1)) if size else b""
    return head + filler + f"end of {token}\r\n".encode()


def send(port: int, token: str, size: int = 0) -> tuple[int, bytes]:
    """One message; the reply to its final dot."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.mail("a@example.com")[0] == 250
        assert c.rcpt("b@example.com")[0] == 250
        return c.data(body(token, size))


def subjects(down: Downstream) -> list[str]:
    with down.lock:
        return [m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                for m in down.messages]


def assert_refused(reply: tuple[int, bytes]) -> None:
    code, text = reply
    assert (code, text[:5]) == (451, b"4.3.0"), reply


def assert_nothing_kept(relay: InProcessRelay) -> None:
    assert relay.queued() == 0
    assert relay.files_in("bodies") == []
    assert relay.files_in("tmp") == []        # the spool file went with the refusal


def healthy_again(relay: InProcessRelay, down: Downstream, token: str, size: int) -> None:
    """The next message is accepted and delivered, and it is the only one that arrives."""
    code, text = send(relay.port, token, size)
    assert code == 250, text
    down.wait_for(1)
    # Anything refused earlier that the relay still meant to send (or this one, again)
    # would be a row in the queue: a row leaves only once its delivery got its 250.
    until(relay.queued, lambda n: n == 0, what="messages left in the queue")
    assert subjects(down) == [token]


LARGE = 3 * SPOOL_MEMORY_LIMIT   # spills to a spool file while DATA arrives


def test_a_failing_spool_write_is_answered_451_after_data_and_nothing_is_stored(site):
    relay, files, down = site
    files.fail_write = eio("spool write")
    # The failure comes in the middle of DATA: the relay reads the rest of the message
    # and answers its final dot (the connection is not dropped mid-transfer).
    assert_refused(send(relay.port, "broken-write", LARGE))
    assert files.calls.get("write", 0) >= 1
    assert_nothing_kept(relay)
    files.fail_write = None
    healthy_again(relay, down, "after-write", LARGE)


def test_a_failing_spool_fsync_is_answered_451_and_leaves_no_row_and_no_file(site):
    relay, files, down = site
    files.fail_fsync = eio("fsync")
    assert_refused(send(relay.port, "broken-fsync", LARGE))
    assert files.calls["fsync"] == 1
    assert files.calls.get("link", 0) == 0        # never named as a queued body
    assert_nothing_kept(relay)
    files.fail_fsync = None
    healthy_again(relay, down, "after-fsync", LARGE)


def test_a_failing_directory_fsync_takes_the_body_name_back(site):
    relay, files, down = site
    files.fail_fsync_dir = eio("directory fsync")
    assert_refused(send(relay.port, "broken-dir", LARGE))
    assert files.calls["link"] == 1               # it had been named bodies/<id> ...
    assert_nothing_kept(relay)                    # ... and the name went with the 451
    files.fail_fsync_dir = None
    healthy_again(relay, down, "after-dir", LARGE)


def test_a_failing_commit_refuses_every_message_of_its_batch(site):
    relay, files, down = site
    files.fail_commit = sqlite3.OperationalError("disk I/O error")
    files.hold(messages_at_least=1)   # not the delivery side's claims: a message's COMMIT
    replies: dict[str, tuple[int, bytes]] = {}

    def client(token: str) -> None:
        replies[token] = send(relay.port, token)

    first = threading.Thread(target=client, args=("first",))
    first.start()
    assert files.held.wait(10)       # "first" is in a transaction, held at its COMMIT
    others = [threading.Thread(target=client, args=(f"batch-{i}",)) for i in range(4)]
    for t in others:
        t.start()
    # The other four wait for the writer (their sessions wait for the queue's answer to
    # their final dot): they will share its next transaction.
    services = relay.relay.services

    def committing() -> int:
        return sum(1 for s in list(services.sessions)
                   if s._waiting and s.txn is not None and s.txn.spool is not None)
    deadline = time.monotonic() + 10
    while committing() < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert committing() == 5
    files.release()
    for t in [first, *others]:
        t.join(30)
    assert sorted(replies) == ["batch-0", "batch-1", "batch-2", "batch-3", "first"]
    for reply in replies.values():
        assert_refused(reply)
    # The four were one transaction (four rows in it when COMMIT failed), then each was
    # tried alone (one row each) before it was refused: no message made it by itself.
    assert 4 in files.messages_at_commit
    assert relay.queued() == 0
    files.fail_commit = None
    healthy_again(relay, down, "after-commit", 0)


# --- hand-off (delivery.handoff = true): the durable record is a log entry ----------------

@pytest.fixture
def handoff_site(tmp_path):
    down_port, main = free_port(), free_port()
    config = write_config(tmp_path, CONFIG.replace("handoff = false", "handoff = true"),
                          main=main, down=down_port, noport=free_port())
    down = Downstream(down_port).start()
    files = FaultyFiles()
    relay = InProcessRelay(config, files).start()
    yield relay, files, down
    relay.stop()
    down.stop()


@pytest.mark.parametrize("fault", ["datasync", "write"])
def test_a_failing_log_write_or_fdatasync_is_answered_451_and_nothing_is_delivered(handoff_site, fault):
    """The message's durable record is its log entry: when its write or the batch's
    fdatasync fails, the client gets 451 4.3.0 and the message is neither handed to
    delivery nor left where a restart would find it."""
    relay, files, down = handoff_site
    setattr(files, f"fail_{fault}", eio(f"log {fault}"))
    assert_refused(send(relay.port, f"broken-log-{fault}"))
    assert files.calls[fault] >= 1
    assert relay.queued() == 0
    setattr(files, f"fail_{fault}", None)
    healthy_again(relay, down, "healthy", 0)
    # What a restart would recover: nothing (the refused entry went with its segment).
    assert qlog.scan(qlog.directory(relay.data_dir))[0] == {}
