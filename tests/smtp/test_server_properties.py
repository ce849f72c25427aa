"""Property tests of the server core (hypothesis): fuzzing, a command model, DATA round trip."""

from __future__ import annotations

import random
import re

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from smtpcore_helpers import RCPT_REFUSED, Driver, codes, settings, stuff

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
from relaywarden.smtp.reply import START_DATA, reply
from relaywarden.smtp.server import BareLineEnds, ServerConnection, ServerSettings, ServerState

# --- (1) any bytes, any chunking: well-defined output, never an exception ---------------------

FRAGMENTS = [
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"MAIL FROM:<> SIZE=10\r\n",
    b"RCPT TO:<r@x.y>\r\n", b"RCPT TO:<r@x.y> NOTIFY=NEVER\r\n", b"DATA\r\n", b"\r\n.\r\n",
    b".\r\n", b"..", b".", b"\r", b"\n", b"\r\n", b"\0", b"\xff", b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n", b"AUTH LOGIN dXNlcg==\r\n", b"*\r\n", b"=\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"QUIT\r\n", b"VRFY a\r\n", b"BDAT 1\r\n", b"x" * 100, "MAIL FROM:<jö@b.c>\r\n".encode(),
]

CONF = st.builds(
    ServerSettings,
    hostname=st.just("mx.test"),
    max_command_line=st.sampled_from([16, 40, 512]),
    max_text_line=st.sampled_from([0, 8, 1000]),
    max_message_size=st.sampled_from([0, 20, 10_000]),
    max_recipients=st.integers(0, 3),
    max_errors=st.integers(0, 6),
    bare_line_ends=st.sampled_from(list(BareLineEnds)),
    starttls=st.booleans(),
    auth_mechanisms=st.sampled_from([(), ("PLAIN", "LOGIN")]),
    smtputf8=st.booleans(),
    dsn=st.booleans(),
)

WIRE_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*")


def random_answer(conn: ServerConnection, event, rnd: random.Random) -> None:
    """Answer a decision like some driver could, valid but unpredictable."""
    bad = reply(rnd.choice([451, 550, 554]), None, "no")
    if isinstance(event, (Auth, AuthResponse)) and rnd.random() < 0.4:
        conn.auth_challenge(rnd.randbytes(rnd.randint(0, 8)))
        return
    if rnd.random() < 0.3:
        conn.respond(bad)
        return
    if isinstance(event, Hello):
        conn.respond(conn.ehlo_reply())
    elif isinstance(event, DataStart):
        conn.respond(START_DATA)
    elif isinstance(event, DataEnd):
        conn.respond(event.problem or reply(250, "2.0.0", "ok"))
    elif isinstance(event, StartTls):
        conn.respond(reply(220, "2.0.0", "go"))
        conn.tls_started()
    elif isinstance(event, (Auth, AuthResponse)):
        conn.respond(reply(235, "2.7.0", "ok"))
    else:
        conn.respond(reply(250, "2.0.0", "ok"))


def pump(conn: ServerConnection, rnd: random.Random, bound: int, log: list) -> None:
    for _ in range(bound):
        event = conn.next_event()
        if event is NEED_DATA:
            return
        log.append(event)
        if isinstance(event, Closed):
            return
        if not isinstance(event, (Handled, DataChunk)):
            random_answer(conn, event, rnd)
    raise AssertionError("neither NEED_DATA nor Closed within the bound")


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conf=CONF,
       pieces=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)),
                       max_size=30),
       cuts=st.lists(st.integers(0, 400), max_size=8),
       rnd=st.randoms(use_true_random=False))
def test_any_input_gives_well_defined_output(conf, pieces, cuts, rnd):
    conn = ServerConnection(conf)
    conn.greet(reply(220, None, "mx.test"))
    wire = b"".join(pieces)
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)])]
    log: list = []
    out = bytearray()
    for chunk in chunks:
        if chunk:
            conn.receive_data(chunk)
        # Each byte can give at most a few events (a reply, a chunk, a Closed).
        pump(conn, rnd, bound=4 * len(chunk) + 20, log=log)
        out += conn.data_to_send()
    conn.receive_data(b"")
    pump(conn, rnd, bound=4 * len(wire) + 20, log=log)
    out += conn.data_to_send()

    # Closed comes once, and then again on every call: nothing else follows it.
    first = next(i for i, e in enumerate(log) if isinstance(e, Closed))
    assert all(e is log[first] for e in log[first:]) and conn.closing
    assert conn.next_event() is log[first]
    lines = bytes(out).split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert WIRE_LINE.fullmatch(line) or line.startswith(b"334 "), line
    # DATA content only between an accepted DataStart and its DataEnd.
    in_data = False
    for event in log:
        if isinstance(event, DataChunk):
            assert in_data and event.data
        elif isinstance(event, DataEnd):
            in_data = False
        elif isinstance(event, DataStart):
            in_data = True       # refused DataStarts are not followed by chunks either
        elif not isinstance(event, Closed):
            in_data = False


# --- (2) a model of the command sequence ------------------------------------------------------

MAX_RCPT = 3
MAX_ERRORS = 8


class SessionModel(RuleBasedStateMachine):
    """Random valid and invalid commands; the model predicts every reply code."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = Driver(settings(max_recipients=MAX_RCPT, max_errors=MAX_ERRORS))
        self.phase = "greeted"          # greeted / ready / mail / rcpt
        self.accepted = 0
        self.given = 0
        self.errors = 0
        self.closed = False
        self.bodies: list[bytes] = []

    # helpers
    def expect(self, wire: bytes, expected: list[str]) -> None:
        replies = codes(self.driver.send(wire))
        for code in expected:
            if int(code[:3]) >= 400 and code != "452 4.5.3":
                self.errors += 1
        if self.errors >= MAX_ERRORS and any(int(c[:3]) >= 400 and c != "452 4.5.3"
                                             for c in expected):
            expected = expected + ["421 4.7.0"]
            self.closed = True
        assert replies == expected, (wire, replies, expected)

    def reset(self) -> None:
        self.accepted = self.given = 0

    # rules
    @precondition(lambda self: not self.closed)
    @rule(extended=st.booleans(), accept=st.booleans())
    def hello(self, extended, accept):
        self.driver.answers[Hello] = (
            (lambda ev: self.driver.conn.ehlo_reply()) if accept
            else reply(550, "5.7.1", "no"))
        if accept:
            self.phase = "ready"
            self.reset()
        self.expect(b"EHLO x\r\n" if extended else b"HELO x\r\n",
                    ["250"] if accept else ["550 5.7.1"])

    @precondition(lambda self: not self.closed)
    @rule(valid=st.booleans(), accept=st.booleans())
    def mail(self, valid, accept):
        self.driver.answers[MailFrom] = (reply(250, "2.1.0", "ok") if accept
                                         else reply(550, "5.7.1", "no"))
        wire = b"MAIL FROM:<a@b.c>\r\n" if valid else b"MAIL FROM:<a b@c>\r\n"
        if self.phase != "ready":
            expected = "503 5.5.1"
        elif not valid:
            expected = "501 5.1.7"
        elif accept:
            expected = "250 2.1.0"
            self.phase = "mail"
            self.reset()
        else:
            expected = "550 5.7.1"
        self.expect(wire, [expected])

    @precondition(lambda self: not self.closed)
    @rule(valid=st.booleans(), accept=st.booleans())
    def rcpt(self, valid, accept):
        self.driver.answers[RcptTo] = reply(250, "2.1.5", "ok") if accept else RCPT_REFUSED
        wire = b"RCPT TO:<r@x.y>\r\n" if valid else b"RCPT TO:<r@x..y>\r\n"
        if self.phase not in ("mail", "rcpt"):
            expected = "503 5.5.1"
        else:
            self.given += 1
            if not valid:
                expected = "501 5.1.3"
            elif self.accepted >= MAX_RCPT:
                expected = "452 4.5.3"
            elif accept:
                expected = "250 2.1.5"
                self.accepted += 1
                self.phase = "rcpt"
            else:
                expected = "550 5.1.1"
        self.expect(wire, [expected])

    @precondition(lambda self: not self.closed)
    @rule(start=st.booleans(), clean=st.booleans(),
          body=st.lists(st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"")
                                                   .replace(b"\n", b"")), max_size=4))
    def data(self, start, clean, body):
        self.driver.answers[DataStart] = START_DATA if start else reply(451, "4.3.0", "later")
        text = b"".join(line + b"\r\n" for line in body)
        if self.phase == "rcpt":
            if not start:
                self.expect(b"DATA\r\n", ["451 4.3.0"])
                return
            wire = stuff(text) if clean else b"bare\nlf\r\n" + stuff(text)
            self.phase = "ready"
            self.reset()
            self.expect(b"DATA\r\n" + wire, ["354", "250 2.0.0" if clean else "550 5.6.0"])
            if clean:
                self.bodies.append(text)
        elif self.phase == "mail" and self.given:
            self.expect(b"DATA\r\n", ["554 5.5.1"])
        else:
            self.expect(b"DATA\r\n", ["503 5.5.1"])

    @precondition(lambda self: not self.closed)
    @rule()
    def rset(self):
        if self.phase in ("mail", "rcpt"):
            self.phase = "ready"
        self.reset()
        self.expect(b"RSET\r\n", ["250 2.0.0"])

    @precondition(lambda self: not self.closed)
    @rule(line=st.sampled_from([b"NOOP", b"VRFY x", b"FOO", b"NOOP\nNOOP", b"N\0OP",
                                b"NOOP " + b"x" * 600, b"EXPN x"]))
    def other(self, line):
        expected = {b"NOOP": "250 2.0.0", b"VRFY x": "252 2.5.0", b"FOO": "500 5.5.2",
                    b"NOOP\nNOOP": "501 5.5.2", b"N\0OP": "501 5.5.2",
                    b"EXPN x": "502 5.5.1"}.get(line, "500 5.5.2")
        self.expect(line + b"\r\n", [expected])

    @precondition(lambda self: not self.closed)
    @rule()
    def quit(self):
        in_transaction = self.phase in ("mail", "rcpt")
        self.expect(b"QUIT\r\n", ["221 2.0.0"])
        self.closed = True
        assert self.driver.closed == Closed("quit", in_transaction)

    @precondition(lambda self: self.closed)
    @rule()
    def after_close(self):
        # Whatever arrives after Closed is ignored; Closed repeats.
        assert self.driver.send(b"NOOP\r\nMAIL FROM:<a@b.c>\r\n") == []
        assert self.driver.conn.next_event() == self.driver.closed

    @invariant()
    def state_matches(self):
        conn = self.driver.conn
        if self.closed:
            assert conn.state is ServerState.CLOSED
            return
        assert conn.state is {"greeted": ServerState.GREETED, "ready": ServerState.READY,
                              "mail": ServerState.MAIL, "rcpt": ServerState.RCPT}[self.phase]
        assert conn.error_count == self.errors

    @invariant()
    def bodies_match(self):
        ends = [e for e in self.driver.events if isinstance(e, DataEnd) and e.problem is None]
        assert len(ends) == len(self.bodies)
        assert self.driver.body == b"".join(self.bodies)


SessionModel.TestCase.settings = hsettings(max_examples=150, stateful_step_count=30,
                                           deadline=None)
test_session_model = SessionModel.TestCase


# --- (3) stuffing then feeding in any chunks gives back the body ------------------------------

LINE = st.one_of(
    st.binary(max_size=30),
    st.binary(max_size=10).map(lambda b: b"." + b),
    st.sampled_from([b"", b".", b"..", b".\r", b"\n."]),
# Text lines: no CR, LF or NUL (NUL is refused or dropped, RFC 5322 2.1: test_server_data).
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))


@hsettings(max_examples=300, deadline=None)
@given(lines=st.lists(LINE, max_size=20), cuts=st.lists(st.integers(0, 1000), max_size=10),
       mode=st.sampled_from(list(BareLineEnds)))
def test_stuffed_body_round_trips(lines, cuts, mode):
    body = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(body) + b"NOOP\r\n"
    d = Driver(settings(bare_line_ends=mode))
    d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@x.y>\r\nDATA\r\n")
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    d.send_chunks([wire[a:b] for a, b in zip([0, *points], [*points, len(wire)])])
    assert d.body == body
    assert d.of(DataEnd) == [DataEnd(problem=None, size=len(body))]
    assert d.handled[-1].verb == "NOOP"             # what follows the end is a command again
