"""One round trip per message to a PIPELINING next hop (RFC 2920 3.1, issue 15): the next
message's MAIL, RCPT and DATA follow the previous message's final dot before its reply has
come, over the same connection, through the real relay.

The next hop here is a small SMTP server of the test's own, which records what arrived in
each read and when it answered: aiosmtpd cannot show the order of bytes on the wire. It
answers the final dot late, so that the relay has the next message ready meanwhile, and it can
answer a final dot with 421 and hang up, the fault that the message behind the dot must
survive (tried again on a new connection, delivered exactly once)."""

from __future__ import annotations

import json
import smtplib
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from support.relay import free_port, start_relay, write_config

CONFIG = """
[relay]
hostname = "relay.test"
min_free_space = 0

[delivery]
retry_schedule = [1]
per_destination = 1
connect_timeout = 2
command_timeout = 5
data_timeout = 10
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


@dataclass
class Conn:
    number: int
    reads: list[bytes] = field(default_factory=list)
    # ("in", command line) and ("out", reply line), in the order they happened
    wire: list[tuple[str, str]] = field(default_factory=list)


class PipeliningServer:
    """A next hop that offers PIPELINING, answers each final dot after `dot_delay` seconds
    (or with 421 and a hang-up, for the dots numbered in `fail_dots`), and keeps every
    message it said 250 to."""

    def __init__(self, port: int, *, dot_delay: float, fail_dots: set[int] = frozenset()):
        self.port = port
        self.dot_delay = dot_delay
        self.fail_dots = set(fail_dots)
        self.dots = 0
        self.accepted: list[bytes] = []
        self.conns: list[Conn] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", port))
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                conn = Conn(len(self.conns) + 1)
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(s, conn), daemon=True).start()

    def _send(self, s: socket.socket, conn: Conn, line: str) -> None:
        conn.wire.append(("out", line))
        s.sendall(line.encode() + b"\r\n")

    def _serve(self, s: socket.socket, conn: Conn) -> None:
        with s:
            self._send(s, conn, "220 next.test ESMTP")
            buf, data, body = b"", False, b""
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                conn.reads.append(chunk)
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if data:
                        if line != b".":
                            body += line + b"\r\n"
                            continue
                        data = False
                        conn.wire.append(("in", "."))
                        with self.lock:
                            self.dots += 1
                            number = self.dots
                        time.sleep(self.dot_delay)
                        if number in self.fail_dots:
                            self._send(s, conn, "421 4.3.2 going down")
                            return
                        with self.lock:
                            self.accepted.append(body)
                        self._send(s, conn, "250 2.0.0 ok")
                        body = b""
                        continue
                    text = line.decode()
                    conn.wire.append(("in", text))
                    verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
                    if verb == "EHLO":
                        for r in ("250-next.test", "250-PIPELINING", "250 8BITMIME"):
                            self._send(s, conn, r)
                    elif verb == "DATA":
                        self._send(s, conn, "354 go on")
                        data = True
                    elif verb == "QUIT":
                        self._send(s, conn, "221 bye")
                        return
                    else:
                        self._send(s, conn, "250 ok")

    def subjects(self) -> list[str]:
        with self.lock:
            return [next(l for l in b.decode().splitlines() if l.startswith("Subject:"))
                    .split(": ", 1)[1] for b in self.accepted]


def _relay(tmp_path, **server):
    ports = {"main": free_port()}
    down_port = free_port()
    config = write_config(tmp_path, CONFIG, main=ports["main"], down=down_port,
                          noport=free_port())
    down = PipeliningServer(down_port, **server)
    relay = start_relay(config, tmp_path / "var", ports)
    return relay, down


def _queue(relay, count: int) -> list[str]:
    subjects = [f"m{i}" for i in range(count)]
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as c:
        for s in subjects:
            c.sendmail("app@example.com", [f"{s}@example.net"],
                       f"From: app@example.com\r\nSubject: {s}\r\n\r\nbody {s}\r\n")
    return subjects


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def chained(tmp_path):
    relay, down = _relay(tmp_path, dot_delay=0.3)
    yield relay, down
    relay.stop()
    down.stop()


def test_the_next_envelope_follows_the_final_dot_in_the_same_segment(chained):
    relay, down = chained
    subjects = _queue(relay, 6)
    _wait(lambda: len(down.accepted) >= 6, "six messages at the next hop")
    _wait(lambda: relay.messages() == [], "the queue to empty")
    # Each message arrived exactly once (the queue is empty: nothing more is sent).
    assert sorted(down.subjects()) == sorted(subjects)
    # One connection (per_destination = 1) carried them all...
    used = [c for c in down.conns if any(w == ("in", ".") for w in c.wire)]
    assert len(used) == 1
    wire = used[0].wire
    # ...and the next message's MAIL arrived in the same read as the previous final dot:
    # sent before the dot's reply existed (the server answers a dot only once it has read
    # it), in one write with it. One round trip per message.
    behind = [r for r in used[0].reads if b"\r\n.\r\nMAIL FROM:" in r]
    assert len(behind) >= 3, used[0].reads


def test_the_outbound_log_gives_each_reply_to_its_own_message(chained):
    relay, down = chained
    _queue(relay, 4)
    _wait(lambda: len(down.accepted) >= 4, "four messages at the next hop")
    # Every reply read (a message leaves the queue once its outcome is written): then the
    # stop writes out the log.
    _wait(lambda: relay.messages() == [], "the queue to empty")
    assert relay.stop() == 0
    rows = [json.loads(line) for line in relay.logs("out", ".jsonl").splitlines()]
    rows = [r for r in rows if r["cs-method"] in ("MAIL", "RCPT", "DATA", ".")]
    # Lines are written as replies come: one message's MAIL, RCPT, DATA and "." under its
    # own queue ID, then the next message's, although its MAIL went out before the ".".
    ids = [r["x-queue-id"] for r in rows]
    groups = [ids[i:i + 4] for i in range(0, len(ids), 4)]
    assert len(groups) == 4 and all(len(set(g)) == 1 for g in groups), ids
    assert len({g[0] for g in groups}) == 4
    assert all([r["cs-method"] for r in rows[i:i + 4]] == ["MAIL", "RCPT", "DATA", "."]
               for i in range(0, len(rows), 4))


def test_a_421_to_the_dot_does_not_lose_the_message_behind_it(tmp_path):
    # The second final dot gets 421 and a hang-up: that message is deferred (tried again
    # a second later); the one whose envelope followed that dot was never answered, and goes
    # again at once over a new connection. Every message arrives exactly once.
    relay, down = _relay(tmp_path, dot_delay=0.2, fail_dots={2})
    try:
        subjects = _queue(relay, 5)
        _wait(lambda: len(down.accepted) >= 5, "five messages at the next hop")
        _wait(lambda: relay.messages() == [], "the queue to empty")    # nothing more is sent
        assert sorted(down.subjects()) == sorted(subjects)
        assert len(down.conns) >= 2
        first = down.conns[0]
        assert ("out", "421 4.3.2 going down") in first.wire
        # the next envelope had followed the dot that got the 421
        assert any(b"\r\n.\r\nMAIL FROM:" in r for r in first.reads), first.reads
        assert relay.stop() == 0
        log = relay.logs("mail", ".log")
        assert "421 4.3.2 going down" in log
    finally:
        relay.stop()
        down.stop()
