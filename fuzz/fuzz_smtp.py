#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that parses hostile bytes:
the SMTP server core, the address parser, the client's reply parser and the attachment
screener.

    pip install atheris
    python3 fuzz/fuzz_smtp.py server  -atheris_runs=1000000
    python3 fuzz/fuzz_smtp.py address -atheris_runs=1000000
    python3 fuzz/fuzz_smtp.py replies -atheris_runs=1000000
    python3 fuzz/fuzz_smtp.py screen  -max_total_time=300 fuzz/corpus-screen

Each input is split into chunks (the first bytes choose the chunk sizes), fed to the code
under test, and checked for: no exception but the documented ones, a bounded number of
events per input (no hang), bounded buffers (no unbounded memory), and output that is
well-formed SMTP replies. A finding is an uncaught exception: libFuzzer stops and writes the
input to crash-*. The figures in the README come from these commands.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from relaywarden.smtp.address import AddressError, parse_path
    from relaywarden.smtp.client import ProtocolError, ReplyParser
    from relaywarden.smtp.events import (
        NEED_DATA, Atrn, Auth, AuthResponse, Closed, DataChunk, DataEnd, DataStart, Etrn,
        Handled, Hello, MailFrom, RcptTo, StartTls)
    from relaywarden.screening import ScreenRules, screen
    from relaywarden.smtp.reply import START_DATA, reply
    from relaywarden.smtp.server import BareLineEnds, ServerConnection, ServerSettings, ServerState

MAX_EVENTS_PER_BYTE = 4        # generous: every event consumes input
MAX_BUFFER = 64 * 1024         # what the core may hold between calls, whatever it is fed

OK = reply(250, "2.0.0", "ok")


def _chunks(data: bytes):
    """The first byte picks a chunk size (1..256): exercises every split point."""
    if not data:
        return [b""]
    size = data[0] + 1
    body = data[1:]
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


def _answer(conn: ServerConnection, event) -> None:
    kind = type(event)
    if kind is Hello:
        conn.respond(conn.ehlo_reply("hi"))
    elif kind in (MailFrom, RcptTo):
        conn.respond(OK)
    elif kind is DataStart:
        conn.respond(START_DATA)
    elif kind is DataEnd:
        conn.respond(event.problem or reply(250, "2.0.0", "queued"))
    elif kind is StartTls:
        conn.respond(reply(454, "4.7.0", "TLS not available"))
    elif kind is Auth:
        conn.auth_challenge(b"")
    elif kind is AuthResponse:
        conn.respond(reply(235, "2.7.0", "ok") if event.data.endswith(b"ok") else
                     reply(535, "5.7.8", "no"))
    elif kind is Atrn:
        # Turn around for "ATRN" alone (the driver takes the connection over), refuse others.
        conn.respond(reply(250, "2.0.0", "reversing") if not event.domains else
                     reply(453, "4.3.0", "You have no mail"))
    elif kind is Etrn:
        conn.respond(reply(251, "2.0.0", f"OK, no messages waiting for node {event.domain}"))
    else:
        raise AssertionError(f"unexpected event {event!r}")


def fuzz_server(data: bytes) -> None:
    mode = BareLineEnds.NORMALIZE if data[:1] and data[0] & 1 else BareLineEnds.REJECT
    conn = ServerConnection(ServerSettings(
        hostname="fuzz.test", max_message_size=4096, max_recipients=5, max_errors=50,
        bare_line_ends=mode, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"), etrn=True, atrn=True))
    conn.greet(reply(220, None, "fuzz.test ESMTP"))
    budget = MAX_EVENTS_PER_BYTE * (len(data) + 8)
    out = bytearray(conn.data_to_send())
    for chunk in _chunks(data) + [b""]:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            budget -= 1
            if budget < 0:
                raise AssertionError("too many events for the input: a loop")
            if event is NEED_DATA or type(event) is Closed:
                break
            if type(event) not in (DataChunk, Handled):
                _answer(conn, event)
        out += conn.data_to_send()
        if conn.closing:
            break
        if conn.state is ServerState.REVERSED:
            conn.take_input()            # the driver's client reads from here on
            break
        # Input the core holds between calls stays bounded whatever it is fed (a line with
        # no end is cut at the line limit, DATA goes out as chunks).
        if len(conn._in) > MAX_BUFFER:
            raise AssertionError(f"core holds {len(conn._in)} bytes of input")
    # Every reply line the core wrote is "NNN[ -]text\r\n".
    for line in bytes(out).split(b"\r\n")[:-1]:
        if not (len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b"-", b"")):
            raise AssertionError(f"malformed reply line {line!r}")


def fuzz_address(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for utf8 in (False, True):
        try:
            parse_path(text, utf8=utf8)
        except AddressError:
            pass


def fuzz_replies(data: bytes) -> None:
    parser = ReplyParser()
    try:
        for chunk in _chunks(data):
            parser.feed(chunk)
            while parser.next_reply() is not None:
                pass
    except ProtocolError:
        pass


SCREEN_RULES = ScreenRules(blocked_extensions=frozenset({"exe", "js"}),
                           blocked_content_types=frozenset({"application/x-msdownload"}),
                           max_attachment_size=1000)


def fuzz_screen(data: bytes) -> None:
    """The attachment screener: any message, in any chunking, gives an answer, never an
    exception (the session would answer 451 and the sender would retry forever)."""
    chunks = _chunks(data)
    found = screen(chunks, SCREEN_RULES)
    if found is not None and not found.rule.startswith("screening"):
        raise AssertionError(f"finding without a rule: {found!r}")


TARGETS = {"server": fuzz_server, "address": fuzz_address, "replies": fuzz_replies,
           "screen": fuzz_screen}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(TARGETS)} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
