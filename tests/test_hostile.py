"""Hostile and malformed input through a real socket: open-relay tricks, SMTP smuggling,
garbage, floods. The relay must answer with the right code or close, and keep serving."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from support.raw import RawClient
from support.relay import until
from support.smtp import MSG, smtp


def session(relay, source="127.0.0.2"):
    c = RawClient(relay, source)
    assert c.reply()[0] == 220
    c.send(b"EHLO probe.test\r\n")
    assert c.reply()[0] == 250
    return c


# --- open relay battery: a client with no relay rights (127.0.0.2) tries every trick ------

RELAY_TRICKS = [
    # (RCPT argument, expected code) -- hosted: example.com, *.example.org
    ("<victim@gmail.test>", 550),
    ("<victim%gmail.test@example.com>", 550),          # percent hack
    ("<gmail.test!victim@example.com>", 550),          # bang path inside a hosted address
    ("<gmail.test!victim>", 501),                      # bang path, no domain at all
    ('<"victim@gmail.test"@example.com>', 550),        # quoted @
    ('<"victim%gmail.test"@example.com>', 550),        # quoted percent hack
    ("<@example.com:victim@gmail.test>", 550),         # source route through a hosted domain
    ("<@example.com,@x.test:victim@gmail.test>", 550), # longer source route
    ("<victim@gmail.test.>", 550),                     # trailing dot on a foreign domain
    ("<victim@[127.0.0.1]>", 550),                     # address literal: never hosted
    ("<victim@[IPv6:::1]>", 550),
    ("<victim@example.com.gmail.test>", 550),          # hosted name as a prefix
    ("<victim@notexample.com>", 550),                  # hosted name as a suffix
    ("<victim@example.org>", 550),                     # *.example.org is not example.org
    ("<victim@gmail.test@example.com>", 501),          # two @ unquoted: syntax error
    ("<victim@gmail.test>,<user@example.com>", 501),
    ("victim@gmail.test", 501),                        # no angle brackets
    ("<victim@gmail.test> NOTIFY=NEVER", 550),
    # accepted: hosted domains, any case, one trailing dot
    ("<user@EXAMPLE.COM>", 250),
    ("<user@example.com.>", 250),
    ("<user@deep.sub.example.org>", 250),
    ("<@x.test:user@example.com>", 250),               # route ignored (RFC 5321 3.6.1)
]


@pytest.mark.parametrize("rcpt,expected", RELAY_TRICKS)
def test_open_relay_battery(shared_relay, rcpt, expected):
    """Each trick in a session of its own, all to one relay (nothing is queued)."""
    c = session(shared_relay)
    c.send(b"MAIL FROM:<spammer@internet.test>\r\n")
    assert c.reply()[0] == 250
    c.send(f"RCPT TO:{rcpt}\r\n".encode())
    code, text = c.reply()
    assert code == expected, text
    if expected == 550:
        assert b"5.7.1" in text
    c.close()


def test_nothing_from_the_battery_is_queued_for_foreign_domains(relay):
    tricks = [rcpt for rcpt, expected in RELAY_TRICKS if expected != 250]
    # Sessions of 8 tricks each: 8 refusals and the 554 stay under max_errors (10).
    for start in range(0, len(tricks), 8):
        c = session(relay)
        c.send(b"MAIL FROM:<spammer@internet.test>\r\n")
        c.reply()
        for rcpt in tricks[start:start + 8]:
            c.send(f"RCPT TO:{rcpt}\r\n".encode())
            assert c.reply()[0] >= 500
        c.send(b"DATA\r\n")
        assert c.reply()[0] == 554
        c.close()
    assert relay.messages() == []


# --- SMTP smuggling (CVE-2023-51764 class) -----------------------------------------------

SMUGGLE = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLE, ids=repr)
def test_smuggling_probe_yields_one_reply_and_no_second_message(shared_relay, fake_end):
    """A fake end-of-data followed by a second transaction must not produce a second message.

    Counted twice: the replies the client gets, and the messages in the queue (of the relay
    the battery and every probe share: nothing may ever be queued there)."""
    relay = shared_relay
    c = RawClient(relay)
    c.reply()
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(4):
        c.reply()
    smuggled = (b"Subject: outer\r\n\r\nouter body" + fake_end +
                b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
    c.send(smuggled)
    code, text = c.reply()
    c.send(b"QUIT\r\n")
    code2, _ = c.reply()
    c.close()
    messages = relay.messages()
    # Strict by default: bare CR / LF, and NUL (RFC 5322 2.1: a next hop may cut the line
    # there), refuse the whole message; neither the outer nor a smuggled one is queued.
    assert code == 550 and b"5.6.0" in text, text
    assert (b"NUL" in text) == (b"\x00" in fake_end)
    assert code2 == 221
    assert messages == []


def test_nul_is_dropped_for_listed_legacy_device(relay):
    """The per-network normalize setting repairs what a legacy device sends: NULs go."""
    c = RawClient(relay, "127.0.0.9")
    c.reply()
    c.send(b"EHLO legacy\r\nMAIL FROM:<dev@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(4):
        c.reply()
    c.send(b"Subject: legacy\r\n\r\nscan\x00ned\r\n.\x00\r\nstill content\r\n.\r\n")
    code, text = c.reply()
    c.close()
    assert code == 250, text
    (message,) = relay.messages()
    body = relay.body(message["id"])
    # ".\x00" is a dot-stuffed line (RFC 5321 4.5.2) holding one NUL: now empty.
    assert b"\x00" not in body and body.endswith(b"scanned\r\n\r\nstill content\r\n")


def test_bare_lf_is_normalised_for_listed_legacy_device(relay):
    c = RawClient(relay, "127.0.0.9")
    c.reply()
    c.send(b"EHLO legacy\r\nMAIL FROM:<dev@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(4):
        c.reply()
    c.send(b"Subject: legacy\n\nline\n.\nMAIL FROM:<x@example.com>\n\r\n.\r\n")
    code, text = c.reply()
    assert code == 250, text
    c.close()
    [msg] = relay.messages()
    body = relay.body(msg["id"])
    assert body.endswith(b"Subject: legacy\r\n\r\nline\r\n.\r\nMAIL FROM:<x@example.com>\r\n\r\n")


# --- garbage, long lines, floods -----------------------------------------------------------

def test_garbage_and_binary_get_errors_then_421_after_error_limit(relay):
    c = session(relay)
    replies = []
    for junk in [b"\x00\x01\x02\xff\xfe\r\n", b"HELLO WORLD\r\n", b"MAIL\r\n", b"RCPT TO:<a@b>\r\n",
                 b"\xc3\x28\r\n", b"DATA\r\n", b"A" * 600 + b"\r\n", b"MAIL FROM:x\r\n",
                 b"BDAT 10\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n"]:
        c.send(junk)
        try:
            code, _ = c.reply()
        except ConnectionError:
            break
        replies.append(code)
        if code == 421:
            break
    assert all(400 <= code < 600 for code in replies), replies
    assert replies[-1] == 421  # max_errors (10) reached
    assert c.closed()
    with smtp(relay) as s:
        s.ehlo("x")
        assert s.sendmail("a@example.com", ["b@example.com"], MSG.encode()) == {}


def test_overlong_command_line_is_refused_and_its_tail_not_executed(relay):
    c = session(relay)
    c.send(b"NOOP " + b"x" * 600 + b" QUIT\r\nNOOP\r\n")
    code, text = c.reply()
    assert code == 500 and b"5.5.2" in text
    assert c.reply()[0] == 250  # the NOOP after it; the tail "QUIT" was never a command
    c.close()


@pytest.mark.slow   # 2,000 connections at once (load)
def test_many_concurrent_connections_are_all_served(relay):
    """2,000 clients at once (bounded, loopback): each gets a greeting, the relay keeps working."""
    socks = []
    try:
        for _ in range(2000):
            socks.append(socket.create_connection(("127.0.0.1", relay.port), timeout=20))
        greeted = 0
        for s in socks:
            if s.recv(512).startswith(b"220 "):
                greeted += 1
        assert greeted == 2000
        with smtp(relay) as c:
            c.ehlo("x")
            assert c.sendmail("a@example.com", ["b@example.com"], MSG.encode()) == {}
    finally:
        for s in socks:
            s.close()


def test_half_open_connections_do_not_block_others(relay):
    half = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        s.sendall(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\npartial")
        s.shutdown(socket.SHUT_WR)
        half.append(s)
    with smtp(relay) as c:
        c.ehlo("x")
        assert c.sendmail("a@example.com", ["b@example.com"], MSG.encode()) == {}
    for s in half:
        s.close()
    # Every session is over (20 half ones, then the whole one), each said so in the log:
    # none of the partial messages was queued on its way out.

    def disconnects() -> int:
        relay.flush_logs()
        return relay.logs("mail", ".log").count("event=disconnect")
    until(disconnects, lambda n: n >= 21, what="sessions still open")
    assert len(relay.messages()) == 1
