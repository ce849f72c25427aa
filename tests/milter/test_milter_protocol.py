"""The milter codec (relaywarden/milter/protocol.py) and header rewriting, as pure functions."""

from __future__ import annotations

import struct

import pytest

from relaywarden.milter import client, protocol as p


def test_optneg_packet_offers_version_6_and_what_we_apply():
    data = p.optneg()
    assert data[:5] == struct.pack("!I", 13) + b"O"
    version, actions, steps = struct.unpack("!III", data[5:])
    assert version == 6
    assert actions == 0x1FF                  # every modification: headers, body, envelope
    assert not steps & p.Step.RCPT_REJ and steps & p.Step.SKIP


def test_connect_and_macro_packets():
    assert p.connect("mx.test", "192.0.2.1", 25) == (
        struct.pack("!I", 22) + b"Cmx.test\x004" + struct.pack("!H", 25) + b"192.0.2.1\x00")
    assert p.connect("h", "2001:db8::1", 0)[7:8] == b"6"
    assert p.macros(p.Cmd.MAIL, {"i": "Q1", "{mail_addr}": "a@b"}) == (
        struct.pack("!I", 23) + b"DMi\x00Q1\x00{mail_addr}\x00a@b\x00")
    assert p.mail("a@b") == struct.pack("!I", 7) + b"M<a@b>\x00"


def test_body_chunks_are_bounded():
    assert len(p.body(b"x" * 65535)) == 65535 + 5
    with pytest.raises(ValueError):
        p.body(b"x" * 65536)


def test_decoder_splits_packets_across_reads_and_refuses_absurd_lengths():
    d = p.Decoder()
    wire = p.packet(p.Cmd.OPTNEG, b"abc") + struct.pack("!I", 1) + b"c"
    assert d.feed(wire[:3]) == []
    assert d.feed(wire[3:]) == [(b"O", b"abc"), (b"c", b"")]
    with pytest.raises(p.ProtocolError):
        p.Decoder().feed(struct.pack("!I", 0x7FFFFFFF) + b"x")
    with pytest.raises(p.ProtocolError):
        p.Decoder().feed(struct.pack("!I", 0))


def test_replies():
    assert p.parse_reply(b"y", b"554 5.7.1 Gtube pattern\0") == p.Verdict("replycode", "554 5.7.1 Gtube pattern")
    assert p.parse_reply(b"m", struct.pack("!I", 2) + b"Subject\0x\0") == p.HeaderChange("m", "Subject", "x", 2)
    assert p.parse_reply(b"q", b"virus\0") == p.Quarantine("virus")
    assert p.parse_reply(b"+", b"<x@y>\0") == p.EnvelopeChange("+", "<x@y>")
    assert p.parse_reply(b"e", b"<x@y>\0SIZE=10\0") == p.EnvelopeChange("e", "<x@y>", "SIZE=10")
    assert p.parse_reply(b"b", b"new\r\n") == p.BodyChunk(b"new\r\n")
    for bad in ((b"h", b"Name\0no-nul"), (b"i", b"\0\0"), (b"Z", b""), (b"e", b"\0"),
                (b"-", b"no-nul")):
        with pytest.raises(p.ProtocolError):
            p.parse_reply(*bad)
    neg = p.parse_negotiation(struct.pack("!III", 6, 0x13F, 0x1F) + struct.pack("!I", 2) + b"{rcpt_addr}\0")
    assert neg.macros == {"2": "{rcpt_addr}"} and neg.version == 6
    with pytest.raises(p.ProtocolError):
        p.parse_negotiation(struct.pack("!III", 7, 0, 0))


def test_replycode_text():
    assert client._reply_text("554 5.7.1 Gtube pattern") == (554, "5.7.1", "Gtube pattern")
    assert client._reply_text("451 try later") == (451, None, "try later")
    assert client._reply_text("550 4.7.1 mismatch") == (550, None, "4.7.1 mismatch")
    assert client._reply_text("250 ok") is None


@pytest.mark.parametrize("text, parsed", [
    ("inet:127.0.0.1:11332", ("inet", "127.0.0.1", 11332)),
    ("inet:11332@127.0.0.1", ("inet", "127.0.0.1", 11332)),
    ("inet6:[::1]:8891", ("inet", "::1", 8891)),
    ("unix:/run/clamav/clamav-milter.ctl", ("unix", "/run/clamav/clamav-milter.ctl", 0)),
])
def test_socket_forms(text, parsed):
    assert client.parse_socket(text) == parsed


MESSAGE = (b"Received: from a\r\n\tby b\r\nSubject: one\r\nX-A: 1\r\nsubject: two\r\n"
           b"\r\nbody line\r\n")


def test_split_message_keeps_folding():
    fields, start = p.split_message(MESSAGE)
    assert fields[0] == (b"Received", b" from a\r\n\tby b")
    assert MESSAGE[start:] == b"body line\r\n"


def test_rewrite_applies_sendmail_semantics():
    changes = [p.HeaderChange("h", "X-Spam", "no"),
               p.HeaderChange("m", "Subject", "second", 2),   # the 2nd Subject, any case
               p.HeaderChange("m", "X-A", "", 1),             # empty value: deleted
               p.HeaderChange("i", "X-First", "a\n\tb", 0),
               p.HeaderChange("m", "X-Missing", "added", 1)]
    out = b"".join(client.rewrite([MESSAGE[:10], MESSAGE[10:]], changes))
    assert out == (b"X-First: a\r\n\tb\r\nReceived: from a\r\n\tby b\r\nSubject: one\r\n"
                   b"Subject: second\r\nX-Spam: no\r\nX-Missing: added\r\n\r\nbody line\r\n")
    with pytest.raises(p.ProtocolError):
        b"".join(client.rewrite([MESSAGE], [p.HeaderChange("h", "Bad Name", "x")]))


def test_envelope_addresses_are_checked():
    assert client.checked_address("<Boss@Example.com>", "+") == "Boss@example.com"   # the domain is case-free
    assert client.checked_address("x@y.test", "e") == "x@y.test"
    assert client.checked_address("<>", "e") == ""
    for bad, kind in (("<>", "+"), ("no spaces@x y", "+"), ("<a@b", "-")):
        with pytest.raises(p.ProtocolError):
            client.checked_address(bad, kind)


def test_apply_envelope_never_leaves_a_message_without_recipients():
    from relaywarden.queue.store import RecipientRecord, RecipientStatus
    from relaywarden.server.milters import apply_envelope
    rcpts = [RecipientRecord(address="a@x.test", status=RecipientStatus.QUEUED, rule="r")]
    sender, out = apply_envelope("s@x.test", rcpts, [
        ("milters.m", p.EnvelopeChange("e", "new@x.test")),
        ("milters.m", p.EnvelopeChange("+", "b@x.test")),
        ("milters.m", p.EnvelopeChange("+", "A@X.test")),      # already there
        ("milters.m", p.EnvelopeChange("-", "A@x.TEST"))])
    assert sender == "new@x.test" and [r.address for r in out] == ["b@x.test"]
    assert out[0].rule == "milters.m" and out[0].status is RecipientStatus.QUEUED
    _, out = apply_envelope("s@x.test", rcpts, [("milters.m", p.EnvelopeChange("-", "a@x.test"))])
    assert [(r.address, r.status) for r in out] == [("a@x.test", RecipientStatus.BADMAIL)]
    assert out[0].reason == "every recipient was removed by the milters"


def test_rewrite_replaces_the_body():
    out = b"".join(client.rewrite([MESSAGE], [], b"new\nbody\r\n"))
    assert out.endswith(b"subject: two\r\n\r\nnew\r\nbody\r\n")
