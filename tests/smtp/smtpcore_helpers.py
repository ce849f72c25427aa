"""A scripted driver for the sans-IO server core: bytes in, replies and events out.

It plays the part of server/: answers every decision event (by default positively) and
records what happened, so that tests read as "client sends X, server replies Y".
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from relaywarden.smtp.events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Closed,
    DataChunk,
    DataEnd,
    DataStart,
    Handled,
    Hello,
    MailFrom,
    RcptTo,
    StartTls,
)
from relaywarden.smtp.reply import START_DATA, Reply, reply
from relaywarden.smtp.server import ServerConnection, ServerSettings

GREETING = reply(220, None, "mx.test ESMTP")
SENDER_OK = reply(250, "2.1.0", "Sender OK")
RCPT_OK = reply(250, "2.1.5", "Recipient OK")
QUEUED = reply(250, "2.0.0", "Queued as X")
TLS_GO = reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_FAIL = reply(535, "5.7.8", "Authentication credentials invalid")
RCPT_REFUSED = reply(550, "5.1.1", "No such user")

# What the driver answers: a Reply, a function of the event giving a Reply, or the string
# "challenge:<bytes>" handled by Driver (AUTH).
Answer = Reply | Callable[[object], Reply]


def settings(**overrides) -> ServerSettings:
    return ServerSettings(hostname="mx.test", **overrides)


def parse_replies(data: bytes) -> list[Reply]:
    """Wire bytes -> the list of Reply values they hold (for assertions)."""
    out: list[Reply] = []
    lines: list[str] = []
    enhanced = None
    for raw in data.decode("utf-8").split("\r\n")[:-1]:
        code, sep, rest = int(raw[:3]), raw[3:4], raw[4:]
        parts = rest.split(" ", 1)
        if parts and _is_enhanced(parts[0]):
            enhanced = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
        else:
            enhanced = None
        lines.append(rest)
        if sep == " " or sep == "":
            out.append(Reply(code, enhanced, tuple(lines)))
            lines = []
    assert not lines, f"unterminated multi-line reply in {data!r}"
    return out


def _is_enhanced(word: str) -> bool:
    bits = word.split(".")
    return len(bits) == 3 and all(b.isdigit() for b in bits) and bits[0] in "245"


class Driver:
    """Drives a ServerConnection like server/ would, with configurable answers."""

    def __init__(self, conf: ServerSettings | None = None, *, greet: bool = True,
                 answers: dict[type, Answer] | None = None) -> None:
        self.conn = ServerConnection(conf or settings())
        self.events: list[object] = []
        self.answers: dict[type, Answer] = {
            Hello: lambda ev: self.conn.ehlo_reply("hello"),
            MailFrom: SENDER_OK,
            RcptTo: RCPT_OK,
            DataStart: START_DATA,
            DataEnd: lambda ev: ev.problem or QUEUED,
            StartTls: TLS_GO,
            Auth: AUTH_OK,
            AuthResponse: AUTH_OK,
        }
        if answers:
            self.answers.update(answers)
        self.challenges: list[bytes] = []       # queued auth_challenge() payloads
        self.start_tls_automatically = True
        self.out = bytearray()
        if greet:
            self.conn.greet(GREETING)
            self.conn.data_to_send()

    def send(self, data: bytes) -> list[Reply]:
        """Feed bytes, run the event loop, return the replies produced (b"": no-op, see eof)."""
        if data:
            self.conn.receive_data(data)
        return self.pump()

    def send_chunks(self, chunks: list[bytes]) -> list[Reply]:
        out: list[Reply] = []
        for chunk in chunks:
            out += self.send(chunk)
        return out

    def eof(self) -> list[Reply]:
        self.conn.receive_data(b"")
        return self.pump()

    def pump(self, max_events: int = 100_000) -> list[Reply]:
        before = len(self.out)
        for _ in range(max_events):
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            if isinstance(event, Closed):
                break
            self._answer(event)
        else:
            raise AssertionError("no NEED_DATA or Closed within the event bound")
        self.out += self.conn.data_to_send()
        return parse_replies(bytes(self.out[before:]))

    def _answer(self, event: object) -> None:
        answer = self.answers.get(type(event))
        if answer is None:
            return                                 # information event
        if isinstance(event, (Auth, AuthResponse)) and self.challenges:
            self.conn.auth_challenge(self.challenges.pop(0))
            return
        rep = answer(event) if callable(answer) else answer
        self.conn.respond(rep)
        if isinstance(event, StartTls) and rep.code == 220 and self.start_tls_automatically:
            self.out += self.conn.data_to_send()
            self.conn.tls_started()

    # --- views on the record ---------------------------------------------------------------

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def body(self) -> bytes:
        return b"".join(e.data for e in self.of(DataChunk))

    @property
    def handled(self) -> list[Handled]:
        return self.of(Handled)

    @property
    def closed(self) -> Closed | None:
        closed = self.of(Closed)
        return closed[0] if closed else None


def codes(replies: list[Reply]) -> list[str]:
    """["250", "503 5.5.1", ...]: compact form for assertions."""
    return [f"{r.code} {r.enhanced}" if r.enhanced else str(r.code) for r in replies]


def open_transaction(driver: Driver, rcpts: int = 1) -> None:
    """EHLO, MAIL, RCPT xN, each answered positively."""
    lines = b"EHLO client.test\r\nMAIL FROM:<s@example.org>\r\n"
    lines += b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(rcpts))
    replies = driver.send(lines)
    assert all(r.positive for r in replies), replies


def stuff(body: bytes) -> bytes:
    """Dot-stuff a CRLF body for transmission (RFC 5321 4.5.2) and add the terminator.

    `body` is empty or ends with CRLF.
    """
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    out = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return out + b".\r\n"


def replace(conf: ServerSettings, **changes) -> ServerSettings:
    return dataclasses.replace(conf, **changes)
