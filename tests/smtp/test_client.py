"""The sans-IO client role (smtp/client.py): tables, and round trips through the server core.

The server core (relaywarden.smtp.server) is the oracle: what the client writes must parse
back, through ServerConnection, to exactly what the client meant.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from smtpcore_helpers import Driver, open_transaction, settings

from relaywarden.smtp.address import xtext_decode
from relaywarden.smtp.client import (
    MAX_REPLY_LINE,
    DotStuffer,
    Extensions,
    ProtocolError,
    ReplyParser,
    command,
    mail_from,
    rcpt_to,
    xtext_encode,
)
from relaywarden.smtp.events import DataEnd, MailFrom, RcptTo
from relaywarden.smtp.reply import Reply

# --- Extensions.parse ------------------------------------------------------------------------------

def ehlo(*lines: str) -> Reply:
    return Reply(250, None, ("mx.test greets you", *lines))


EXTENSION_CASES = [
    # (ehlo lines, expected Extensions)
    ((), Extensions()),
    (("PIPELINING",), Extensions(pipelining=True)),
    (("pipelining",), Extensions(pipelining=True)),                 # case-insensitive
    (("SIZE 10240000",), Extensions(size=10240000)),
    (("SIZE",), Extensions(size=0)),                                  # announced, no limit
    (("SIZE 0",), Extensions(size=0)),                                # RFC 1870 4
    (("SIZE lots",), Extensions()),                                   # malformed: ignored
    (("8BITMIME", "SMTPUTF8", "DSN"), Extensions(eightbitmime=True, smtputf8=True, dsn=True)),
    (("STARTTLS", "ENHANCEDSTATUSCODES", "CHUNKING"),
     Extensions(starttls=True, enhancedstatuscodes=True, chunking=True)),
    (("AUTH PLAIN LOGIN CRAM-MD5",), Extensions(auth=("PLAIN", "LOGIN", "CRAM-MD5"))),
    (("AUTH=LOGIN PLAIN",), Extensions(auth=("LOGIN", "PLAIN"))),      # pre-RFC 2554 form
    (("AUTH login", "AUTH=LOGIN"), Extensions(auth=("LOGIN",))),       # merged, no duplicates
    (("X-UNKNOWN 1 2", "", "VRFY"), Extensions()),
]


@pytest.mark.parametrize("lines, expected", EXTENSION_CASES)
def test_extensions_parse(lines, expected):
    assert Extensions.parse(ehlo(*lines)) == expected


def test_extensions_skip_the_first_line():
    # The first line is the server's name and greeting, never a keyword.
    assert Extensions.parse(Reply(250, None, ("PIPELINING",))) == Extensions()


def test_extensions_from_the_server_core():
    d = Driver(settings(max_message_size=5000, starttls=True, auth_mechanisms=("PLAIN",)))
    (answer,) = d.send(b"EHLO client.test\r\n")
    ext = Extensions.parse(answer)
    assert ext == Extensions(pipelining=True, size=5000, eightbitmime=True, smtputf8=True,
                             dsn=True, starttls=True, enhancedstatuscodes=True,
                             auth=("PLAIN",))


# --- ReplyParser -----------------------------------------------------------------------------------

REPLY_CASES = [
    # (wire, expected replies)
    (b"220 mx.test ESMTP\r\n", [Reply(220, None, ("mx.test ESMTP",))]),
    (b"250 2.1.0 Sender OK\r\n", [Reply(250, "2.1.0", ("Sender OK",))]),
    (b"250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n", [Reply(250, "2.0.0", ("a", "b", "c"))]),
    (b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
     [Reply(250, None, ("mx.test", "PIPELINING", "SIZE 100"))]),
    (b"550 5.1.1\r\n", [Reply(550, "5.1.1", ("",))]),                 # code only, no text
    (b"250\r\n", [Reply(250, None, ("",))]),                           # RFC 5321 4.2: SP optional
    (b"250 \r\n", [Reply(250, None, ("",))]),
    (b"450 5.1.1 class mismatch\r\n", [Reply(450, None, ("5.1.1 class mismatch",))]),
    (b"250 2.1.5.7 not a code\r\n", [Reply(250, None, ("2.1.5.7 not a code",))]),
    (b"250 ok\n", [Reply(250, None, ("ok",))]),                         # bare LF tolerated
    (b"250-first\r\n250-\r\n250 last\r\n", [Reply(250, None, ("first", "", "last"))]),
    (b"250 2.0.0 a\r\n354 go ahead\r\n",
     [Reply(250, "2.0.0", ("a",)), Reply(354, None, ("go ahead",))]),
    (b"250 caf\xc3\xa9\r\n", [Reply(250, None, ("caf\u00e9",))]),      # RFC 6531 3.7.2
    (b"250 a\xffb\x00c\r\n", [Reply(250, None, ("a\ufffdb\ufffdc",))]),  # shown, not trusted
    # RFC 2034 4: the enhanced code is repeated; a line that lacks it keeps its text.
    (b"550-5.7.1 one\r\n550 two\r\n", [Reply(550, "5.7.1", ("one", "two"))]),
]


@pytest.mark.parametrize("wire, expected", REPLY_CASES)
def test_reply_parser(wire, expected):
    parser = ReplyParser()
    parser.feed(wire)
    got = []
    while (r := parser.next_reply()) is not None:
        got.append(r)
    assert got == expected
    assert parser.buffered == 0


@pytest.mark.parametrize("wire, expected", REPLY_CASES)
def test_reply_parser_byte_by_byte(wire, expected):
    parser = ReplyParser()
    got = []
    for i in range(len(wire)):
        parser.feed(wire[i:i + 1])
        while (r := parser.next_reply()) is not None:
            got.append(r)
    assert got == expected


def test_reply_parser_wants_more():
    parser = ReplyParser()
    parser.feed(b"250-mx.test\r\n250-PIPE")
    assert parser.next_reply() is None
    parser.feed(b"LINING\r\n250 DSN\r\n")
    assert parser.next_reply() == Reply(250, None, ("mx.test", "PIPELINING", "DSN"))


BAD_REPLIES = [
    (b"hello\r\n", "reply code"),
    (b"25 short\r\n", "reply code"),
    (b"2500 four digits\r\n", "separator"),
    (b"650 out of range\r\n", "reply code"),
    (b"150 preliminary\r\n", "reply code"),
    (b"abc text\r\n", "reply code"),
    (b"250_odd separator\r\n", "separator"),
    (b"250-first\r\n251 second\r\n", "changes code"),
    (b"250-first\r\n550-second\r\n550 third\r\n", "changes code"),
    (b"250 " + b"x" * MAX_REPLY_LINE + b"\r\n", "longer than"),
    (b"250 " + b"x" * MAX_REPLY_LINE, "longer than"),                 # no line end yet
    (b"250-x\r\n" * 1001 + b"250 x\r\n", "lines"),
]


@pytest.mark.parametrize("wire, message", BAD_REPLIES)
def test_reply_parser_garbage(wire, message):
    parser = ReplyParser()
    parser.feed(wire)
    with pytest.raises(ProtocolError, match=message):
        while parser.next_reply() is not None:
            pass
    with pytest.raises(ProtocolError):          # and it stays broken
        parser.next_reply()


def test_repeated_one_line_replies():
    # One-line replies are read through a cache: the same reply each time, the octets of
    # each as it came (CRLF or bare LF), and a bad line is refused every time it comes.
    parser = ReplyParser()
    parser.feed(b"250 2.1.5 OK\r\n250 2.1.5 OK\n250-x\r\n250 2.1.5 OK\r\n")
    first = parser.next_reply()
    assert (first, parser.last_octets) == (Reply(250, "2.1.5", ("OK",)), 14)
    assert (parser.next_reply(), parser.last_octets) == (first, 13)
    assert (parser.next_reply(), parser.last_octets) == (Reply(250, None, ("x", "2.1.5 OK")), 21)
    for _ in range(2):
        bad = ReplyParser()
        bad.feed(b"250 ok\r\n2500 bad\r\n")
        assert bad.next_reply() == Reply(250, None, ("ok",))
        with pytest.raises(ProtocolError, match="separator"):
            bad.next_reply()


def test_reply_line_limit_is_inclusive():
    line = b"250 " + b"x" * (MAX_REPLY_LINE - 6) + b"\r\n"
    assert len(line) == MAX_REPLY_LINE
    parser = ReplyParser()
    parser.feed(line)
    assert parser.next_reply().code == 250


def test_reply_parser_clear_forgets_input():
    # RFC 3207 4.2: what came before TLS (here half a forged reply) is dropped.
    parser = ReplyParser()
    parser.feed(b"250-forged\r\n250 PIPEL")
    assert parser.next_reply() is None
    parser.clear()
    parser.feed(b"220 real\r\n")
    assert parser.next_reply() == Reply(220, None, ("real",))


@given(st.lists(st.tuples(st.sampled_from([220, 250, 354, 421, 550]),
                          st.sampled_from([None, "x.1.0", "x.7.13"]),
                          st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2fff,
                                                         exclude_characters="\x7f"),
                                           max_size=30).map(str.strip), min_size=1, max_size=4)),
                max_size=5),
       st.data())
def test_reply_round_trip(specs, data):
    """Reply.to_bytes() (the server's writer) -> ReplyParser, in any chunking, is identity."""
    replies = []
    for code, enhanced, lines in specs:
        if enhanced is not None:
            if code == 354:
                enhanced = None
            else:
                enhanced = str(code)[0] + enhanced[1:]
        # A text line that itself starts with an enhanced code would be read as one.
        lines = [("t " + x) if x[:1].isdigit() else x for x in lines]
        replies.append(Reply(code, enhanced, tuple(lines)))
    wire = b"".join(r.to_bytes() for r in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = ReplyParser()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)]):
        parser.feed(wire[a:b])
        while (r := parser.next_reply()) is not None:
            got.append(r)
    assert got == replies


# --- commands: nothing from an envelope can make a second command --------------------------

INJECTIONS = [
    "a@example.com\r\nRCPT TO:<evil@example.net>",
    "a@example.com\nDATA",
    "a@example.com\rRSET",
    "a@exa\0mple.com",
    "\r\n",
]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_command_refuses_line_ends(bad):
    with pytest.raises(ValueError):
        command("HELO", bad)
    with pytest.raises(ValueError):
        mail_from(bad, size=None, body=None, smtputf8=True, ret=None, envid=None)
    with pytest.raises(ValueError):
        rcpt_to(bad, notify=None, orcpt=None)
    with pytest.raises(ValueError):
        rcpt_to("ok@example.com", notify=None, orcpt="rfc822;" + bad)
    with pytest.raises(ValueError):
        mail_from("ok@example.com", size=None, body=None, smtputf8=False, ret=None, envid=bad)


@pytest.mark.parametrize("verb", ["", "MAIL FROM", "RCPT\r\n", "1X", "DA TA"])
def test_command_refuses_bad_verbs(verb):
    with pytest.raises(ValueError):
        command(verb)


PARAMETER_SMUGGLING = [
    "a@example.com> NOTIFY=NEVER",       # not a Path: the server would see a parameter
    "a@example.com SIZE=1",
    "<a@example.com>",                   # caller passes the mailbox, not the path
    "no-at-sign",
    "a@@example.com",
    "j\u00f6rg@example.com",             # non-ASCII without SMTPUTF8 (for MAIL)
    "a" * 65 + "@example.com",           # RFC 5321 4.5.3.1.1
]


@pytest.mark.parametrize("bad", PARAMETER_SMUGGLING)
def test_mail_from_refuses_what_is_not_a_path(bad):
    with pytest.raises(ValueError):
        mail_from(bad, size=None, body=None, smtputf8=False, ret=None, envid=None)


def test_rcpt_refuses_null_path():
    with pytest.raises(ValueError):
        rcpt_to("", notify=None, orcpt=None)


COMMAND_GOLDEN = [
    (command("EHLO", "relay.test"), b"EHLO relay.test\r\n"),
    (command("QUIT"), b"QUIT\r\n"),
    (mail_from("a@example.org", size=None, body=None, smtputf8=False, ret=None, envid=None),
     b"MAIL FROM:<a@example.org>\r\n"),
    (mail_from("", size=0, body=None, smtputf8=False, ret=None, envid=None),
     b"MAIL FROM:<> SIZE=0\r\n"),
    (mail_from("a@example.org", size=1234, body="8bitmime", smtputf8=True, ret="hdrs",
               envid="Q1+id=x y"),
     b"MAIL FROM:<a@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=Q1+2Bid+3Dx+20y\r\n"),
    (mail_from("j\u00f6rg@b\u00fccher.example", size=None, body=None, smtputf8=True, ret=None,
               envid=None),
     "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8\r\n".encode()),
    (mail_from('"a b>c"@example.org', size=None, body=None, smtputf8=False, ret=None,
               envid=None),
     b'MAIL FROM:<"a b>c"@example.org>\r\n'),
    (rcpt_to("r@example.com", notify=None, orcpt=None), b"RCPT TO:<r@example.com>\r\n"),
    (rcpt_to("postmaster", notify=None, orcpt=None), b"RCPT TO:<postmaster>\r\n"),
    (rcpt_to("r@example.com", notify=("success", "FAILURE"), orcpt="rfc822;R+x@example.com"),
     b"RCPT TO:<r@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;R+2Bx@example.com\r\n"),
    (rcpt_to("r@example.com", notify=("NEVER",), orcpt=None),
     b"RCPT TO:<r@example.com> NOTIFY=NEVER\r\n"),
]


@pytest.mark.parametrize("wire, expected", COMMAND_GOLDEN)
def test_command_golden(wire, expected):
    assert wire == expected


@pytest.mark.parametrize("kwargs", [
    dict(size=-1), dict(body="BINARYMIME"), dict(ret="ALL"),
])
def test_mail_from_bad_parameters(kwargs):
    args = dict(size=None, body=None, smtputf8=False, ret=None, envid=None) | kwargs
    with pytest.raises(ValueError):
        mail_from("a@example.org", **args)


@pytest.mark.parametrize("notify, orcpt", [
    ((), None), (("NEVER", "SUCCESS"), None), (("SOMETIMES",), None),
    (("DELAY", "DELAY"), None), (None, "no-type"), (None, "rfc822;"), (None, "bad type;a@b"),
])
def test_rcpt_to_bad_parameters(notify, orcpt):
    with pytest.raises(ValueError):
        rcpt_to("r@example.com", notify=notify, orcpt=orcpt)


XTEXT = [
    ("", ""),
    ("abc", "abc"),
    ("a+b=c", "a+2Bb+3Dc"),
    ("a b\t", "a+20b+09"),
    ("\u00e9", "+C3+A9"),
    ("~!", "~!"),
]


@pytest.mark.parametrize("plain, encoded", XTEXT)
def test_xtext_encode(plain, encoded):
    assert xtext_encode(plain) == encoded
    assert xtext_decode(encoded) == plain


@given(st.text())
def test_xtext_round_trip(text):
    encoded = xtext_encode(text)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert xtext_decode(encoded) == text


# The server core parses what the client writes back to what the client meant.
ADDRESS = st.from_regex(r"[a-z0-9.+=_-]{1,12}@[a-z0-9]{1,10}\.(com|org|example)", fullmatch=True
                        ).filter(lambda a: ".." not in a and not a.startswith(".")
                                 and ".@" not in a)
ENVID = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30)


@given(sender=ADDRESS | st.just(""), rcpt=ADDRESS, size=st.none() | st.integers(0, 10**9),
       body=st.sampled_from([None, "7BIT", "8BITMIME"]), ret=st.sampled_from([None, "FULL", "HDRS"]),
       envid=st.none() | ENVID,
       notify=st.sampled_from([None, ("NEVER",), ("SUCCESS",), ("FAILURE", "DELAY")]),
       orcpt=st.none() | ADDRESS)
@hsettings(max_examples=150, deadline=None)
def test_commands_parse_back_in_the_server(sender, rcpt, size, body, ret, envid, notify, orcpt):
    d = Driver()
    d.send(b"EHLO client.test\r\n")
    replies = d.send(mail_from(sender, size=size, body=body, smtputf8=False, ret=ret,
                               envid=envid))
    replies += d.send(rcpt_to(rcpt, notify=notify,
                              orcpt=None if orcpt is None else "rfc822;" + orcpt))
    assert [r.code for r in replies] == [250, 250], replies
    (mail,) = d.of(MailFrom)
    (rcpt_event,) = d.of(RcptTo)
    assert (str(mail.sender) if mail.sender is not None else "") == sender
    assert mail.params.size == size
    assert mail.params.body == body
    assert mail.params.ret == ret
    assert mail.params.envid == envid
    assert f"{rcpt_event.recipient.local}@{rcpt_event.recipient.domain}" == rcpt
    assert rcpt_event.params.notify == notify
    assert rcpt_event.params.orcpt == (None if orcpt is None else "rfc822;" + orcpt)


# --- DotStuffer ------------------------------------------------------------------------------------

STUFFING = [
    # (content chunks, wire)
    ([b""], b".\r\n"),
    ([], b".\r\n"),
    ([b"hello\r\n"], b"hello\r\n.\r\n"),
    ([b"hello"], b"hello\r\n.\r\n"),                         # the final CRLF is added
    ([b".\r\n"], b"..\r\n.\r\n"),                              # a lone dot at the very start
    ([b"a\r\n.\r\nb\r\n"], b"a\r\n..\r\nb\r\n.\r\n"),
    ([b"a\r\n..x\r\n"], b"a\r\n...x\r\n.\r\n"),
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),             # split after CRLF
    ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),             # split inside CRLF
    ([b"a\r", b"\n", b".", b"b\r\n"], b"a\r\n..b\r\n.\r\n"),
    ([b"a.\r\nb.c\r\n"], b"a.\r\nb.c\r\n.\r\n"),             # dots inside lines stay
    ([b"a\n.b\r\n"], b"a\n.b\r\n.\r\n"),                       # only CRLF starts a line
    ([b"a\r.b\r\n"], b"a\r.b\r\n.\r\n"),
    ([b"a\r"], b"a\r\n.\r\n"),                                 # CR at the end: completed
    ([b"x", b"\r\n", b"."], b"x\r\n..\r\n.\r\n"),
]


@pytest.mark.parametrize("chunks, wire", STUFFING)
def test_dot_stuffing(chunks, wire):
    s = DotStuffer()
    assert b"".join(s.feed(c) for c in chunks) + s.end() == wire


# Text lines: no CR, LF or NUL (the server core refuses NUL, RFC 5322 2.1, tested apart).
LINE = st.binary(max_size=12).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")) | \
    st.sampled_from([b".", b"..", b".x", b"", b". ", b".\x01"])


@given(lines=st.lists(LINE, max_size=12), final_crlf=st.booleans(), data=st.data())
@hsettings(max_examples=300, deadline=None)
def test_dot_stuffing_round_trip_through_the_server(lines, final_crlf, data):
    """Any CRLF content, in any chunking, stuffed here and de-stuffed by the server core."""
    content = b"\r\n".join(lines) + (b"\r\n" if final_crlf and lines else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(content)), max_size=8)))
    chunks = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)])]
    stuffer = DotStuffer()
    wire = [stuffer.feed(c) for c in chunks] + [stuffer.end()]

    d = Driver(settings(max_text_line=0))
    open_transaction(d)
    assert [r.code for r in d.send(b"DATA\r\n")] == [354]
    # Deliver the wire in its own (different) chunking: one piece per fed chunk.
    replies = d.send_chunks(wire)
    assert [r.code for r in replies] == [250]
    (end,) = d.of(DataEnd)
    assert end.problem is None
    expected = content if content == b"" or content.endswith(b"\r\n") else content + b"\r\n"
    assert d.body == expected
    assert end.size == len(expected)


def test_dot_stuffer_large_chunks_are_linear():
    body = (b".line\r\n" * 200_000)
    s = DotStuffer()
    out = s.feed(body) + s.end()
    assert out == b"..line\r\n" * 200_000 + b".\r\n"
