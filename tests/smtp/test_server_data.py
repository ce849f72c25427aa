"""DATA: end detection, de-stuffing, smuggling probes, limits (RFC 5321 4.1.1.4, 4.5.2)."""

import pytest
from smtpcore_helpers import (
    QUEUED,
    Driver,
    codes,
    open_transaction,
    parse_replies,
    settings,
    stuff,
)

from relaywarden.smtp.events import Closed, DataChunk, DataEnd, DataStart, MailFrom, RcptTo
from relaywarden.smtp.reply import BARE_LF, MESSAGE_TOO_BIG, NUL_IN_DATA, TEXT_LINE_TOO_LONG, reply
from relaywarden.smtp.server import BareLineEnds, ServerState, UsageError

NORMALIZE = settings(bare_line_ends=BareLineEnds.NORMALIZE)
OPEN = b"EHLO client.test\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n"


def run(content: bytes, conf=None, *, chunks=None) -> Driver:
    """A whole session: OPEN, `content` (raw, as on the wire), then QUIT."""
    d = Driver(conf)
    wire = OPEN + content + b"QUIT\r\n"
    d.send_chunks(chunks(wire) if chunks else [wire])
    return d


def test_simple_message():
    d = run(b"Subject: x\r\n\r\nHello\r\n.\r\n")
    assert d.body == b"Subject: x\r\n\r\nHello\r\n"
    assert d.of(DataEnd) == [DataEnd(problem=None, size=len(d.body))]


def test_replies_of_a_whole_session():
    d = Driver()
    replies = d.send(OPEN + b"a\r\n.\r\nQUIT\r\n")
    assert codes(replies) == ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]


def test_empty_message():
    # The start of the data counts as the start of a line: ".\r\n" at once is an empty body.
    d = run(b".\r\n")
    assert d.body == b"" and d.of(DataEnd) == [DataEnd(None, 0)]
    assert d.of(DataChunk) == []


@pytest.mark.parametrize("wire, body", [
    (b"..\r\n.\r\n", b".\r\n"),
    (b"..a\r\n.\r\n", b".a\r\n"),
    (b"...\r\n.\r\n", b"..\r\n"),
    (b"a\r\n..b\r\n..\r\nc.\r\n.\r\n", b"a\r\n.b\r\n.\r\nc.\r\n"),
    (b"a.\r\n .\r\n.\r\n", b"a.\r\n .\r\n"),          # a dot not at the line start stays
    (b".\tx\r\n.\r\n", b"\tx\r\n"),                   # a lone stuffed dot is dropped (4.5.2)
])
def test_dot_unstuffing(wire, body):
    assert run(wire).body == body


SMUGGLING = [
    b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r",
    b"\r\n.\r\r\n", b"\n\r\n.\n",
]
NUL_PROBES = [b"\r\n\0.\r\n", b"\r\n.\0\r\n", b"\r\n.\0\0\r\n", b"\0\r\n\0.\0\r\n"]
EVIL = b"MAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@x.y>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize("probe", SMUGGLING)
def test_smuggling_probe_is_not_an_end_and_is_refused(probe):
    d = run(b"Subject: x\r\n\r\nline" + probe + EVIL + b".\r\n")
    assert len(d.of(DataEnd)) == 1
    assert len(d.of(MailFrom)) == 1 and len(d.of(RcptTo)) == 1
    assert d.of(DataEnd)[0].problem == BARE_LF
    assert codes(parse_all(d))[-2:] == ["550 5.6.0", "221 2.0.0"]


@pytest.mark.parametrize("probe", SMUGGLING)
def test_smuggling_probe_with_normalize_is_content(probe):
    d = run(b"line" + probe + EVIL + b".\r\n", NORMALIZE)
    assert len(d.of(DataEnd)) == 1 and d.of(DataEnd)[0].problem is None
    assert len(d.of(MailFrom)) == 1
    assert d.body.endswith(b"\r\n" + EVIL)
    assert b"\r" not in d.body.replace(b"\r\n", b"") and b"\n" not in d.body.replace(b"\r\n", b"")


@pytest.mark.parametrize("probe", NUL_PROBES)
def test_nul_around_the_dot_is_not_an_end_and_is_refused(probe):
    d = run(b"line" + probe + b"\r\n" + EVIL + b".\r\n")
    assert len(d.of(DataEnd)) == 1 and len(d.of(MailFrom)) == 1
    assert d.of(DataEnd)[0].problem == NUL_IN_DATA
    assert EVIL not in d.body
    assert codes(parse_all(d))[-2:] == ["550 5.6.0", "221 2.0.0"]


@pytest.mark.parametrize("probe", NUL_PROBES)
def test_nul_with_normalize_is_dropped_and_not_an_end(probe):
    d = run(b"line" + probe + b"\r\n" + EVIL + b".\r\n", NORMALIZE)
    assert len(d.of(DataEnd)) == 1 and d.of(DataEnd)[0].problem is None
    assert b"\0" not in d.body and EVIL in d.body


def test_nul_in_a_later_chunk_refuses_the_message():
    d = Driver()
    d.send(OPEN)
    d.send(b"clean\r\n")
    d.send(b"a\0b\r\n")
    replies = d.send(b".\r\n")
    assert d.of(DataEnd)[0].problem == NUL_IN_DATA
    assert codes(replies) == ["550 5.6.0"] and "NUL" in replies[0].lines[0]


def parse_all(d: Driver):
    return parse_replies(bytes(d.out))


def test_terminator_split_at_every_boundary():
    wire = OPEN + b"a\r\n..b\r\nc\r\n.\r\nQUIT\r\n"
    reference = run(wire[len(OPEN):])
    assert reference.body == b"a\r\n.b\r\nc\r\n"
    for i in range(1, len(wire)):
        d = Driver()
        d.send_chunks([wire[:i], wire[i:]])
        assert d.body == reference.body, i
        assert d.of(DataEnd) == reference.of(DataEnd), i
        assert bytes(d.out) == bytes(reference.out), i


def test_every_pair_of_boundaries_in_the_data():
    content = b"x\r\n.\r\n"
    for i in range(len(content) + 1):
        for j in range(i, len(content) + 1):
            d = Driver()
            d.send(OPEN)
            d.send_chunks([content[:i], content[i:j], content[j:]])
            assert d.body == b"x\r\n" and len(d.of(DataEnd)) == 1, (i, j)


def test_byte_by_byte():
    wire = OPEN + b"..\r\n.a\r\nb\r\n\r\n.\r\nNOOP\r\n"
    d = Driver()
    replies = d.send_chunks([wire[i:i + 1] for i in range(len(wire))])
    assert d.body == b".\r\na\r\nb\r\n\r\n"
    assert codes(replies)[-2:] == ["250 2.0.0", "250 2.0.0"]


def test_chunks_end_in_crlf_then_dot_arrives():
    d = Driver()
    d.send(OPEN)
    d.send(b"line\r\n")
    d.send(b".")
    assert d.of(DataEnd) == []
    d.send(b"\r")
    assert d.of(DataEnd) == []
    d.send(b"\n")
    assert d.body == b"line\r\n" and len(d.of(DataEnd)) == 1


def test_one_chunk_event_per_receive():
    d = Driver()
    d.send(OPEN)
    d.send(b"a\r\n" * 50 + b"..x\r\n" + b"b\r\n" * 50)
    assert len(d.of(DataChunk)) == 1


def test_bare_lf_in_content_is_refused_and_chunks_stop():
    d = Driver()
    d.send(OPEN)
    d.send(b"good\r\n")
    d.send(b"bad\nline\r\n")
    d.send(b"more\r\n")
    replies = d.send(b".\r\n")
    assert d.body == b"good\r\n"                    # nothing after the problem was known
    assert d.of(DataEnd) == [DataEnd(problem=BARE_LF, size=len(b"good\r\nbad\nline\r\nmore\r\n"))]
    assert codes(replies) == ["550 5.6.0"]
    assert "bare" in replies[0].lines[0].lower()


def test_bare_cr_in_content_is_refused():
    d = run(b"a\rb\r\n.\r\n")
    assert d.of(DataEnd)[0].problem == BARE_LF


def test_cr_at_chunk_end_followed_by_lf_is_fine():
    d = Driver()
    d.send(OPEN)
    d.send_chunks([b"a\r", b"\nb\r", b"\n.\r", b"\n"])
    assert d.body == b"a\r\nb\r\n" and d.of(DataEnd)[0].problem is None


@pytest.mark.parametrize("wire, body", [
    (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
    (b"a\rb\r\n.\r\n", b"a\r\nb\r\n"),
    (b"a\r\r\nb\n\n\r\n.\r\n", b"a\r\n\r\nb\r\n\r\n\r\n"),
    (b"a\n..b\r\n.\r\n", b"a\r\n..b\r\n"),          # no de-stuffing after a bare LF
    (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),      # ".\n" at a line start: stuffed dot
])
def test_normalize(wire, body):
    d = run(wire, NORMALIZE)
    assert d.body == body
    assert d.of(DataEnd) == [DataEnd(None, len(body))]


def test_text_line_limit():
    # RFC 5321 4.5.3.1.6: 1000 octets including CRLF, the stuffed dot not counted.
    ok = b"x" * 998 + b"\r\n"
    assert run(ok + b"." + ok + b".\r\n").of(DataEnd)[0].problem is None
    assert run(b"." + ok + b".\r\n").of(DataEnd)[0].problem is None
    too_long = b"x" * 999 + b"\r\n"
    for wire in (too_long, ok + too_long, ok + too_long + ok, b"." + too_long):
        d = run(wire + b".\r\n")
        assert d.of(DataEnd)[0].problem == TEXT_LINE_TOO_LONG, len(wire)


def test_text_line_limit_across_chunks():
    d = Driver(settings(max_text_line=10))
    d.send(OPEN)
    d.send_chunks([b"abcd", b"efgh", b"\r\n"])              # 10 octets: fits
    d.send_chunks([b"abcd", b"efghi"])                      # 9 without CRLF: cannot fit
    d.send(b"\r\n.\r\n")
    assert d.of(DataEnd)[0].problem == TEXT_LINE_TOO_LONG
    assert d.body == b"abcdefgh\r\nabcd"         # sent before the problem was known
    assert codes(parse_all(d))[-1] == "550 5.6.0"


def test_long_line_in_the_middle_of_a_chunk():
    d = Driver(settings(max_text_line=10))
    d.send(OPEN + b"short\r\n" + b"y" * 20 + b"\r\nshort\r\n.\r\n")
    assert d.of(DataEnd)[0].problem == TEXT_LINE_TOO_LONG


def test_size_limit():
    conf = settings(max_message_size=100)
    body = b"x" * 98 + b"\r\n"
    d = run(body + b".\r\n", conf)
    assert d.of(DataEnd) == [DataEnd(None, 100)]
    d = Driver(conf)
    d.send(OPEN)
    d.send(body)
    d.send(b"y\r\n" * 10)
    replies = d.send(b".\r\n")
    end = d.of(DataEnd)[0]
    assert end.problem == MESSAGE_TOO_BIG and end.size == 130
    assert d.body == body                            # chunks stopped at the problem
    assert codes(replies) == ["552 5.3.4"]


def test_size_counts_destuffed_octets():
    d = run(b"..\r\n" * 10 + b".\r\n", settings(max_message_size=30))
    assert d.of(DataEnd) == [DataEnd(None, 30)]


def test_eof_in_the_middle_of_data_is_never_a_complete_message():
    d = Driver()
    d.send(OPEN + b"part of a message\r\n")
    assert d.conn.in_data and d.conn.in_transaction
    d.eof()
    assert d.of(DataEnd) == []
    assert d.closed == Closed(reason="eof", in_transaction=True)


@pytest.mark.parametrize("tail", [b"", b".", b".\r", b"\r", b"x\r\n."])
def test_eof_right_before_the_end(tail):
    d = Driver()
    d.send(OPEN + b"text\r\n" + tail)
    d.eof()
    assert d.of(DataEnd) == [] and d.closed.in_transaction


@pytest.mark.parametrize("answer", [QUEUED, reply(451, "4.3.0", "Later"),
                                    reply(554, "5.7.1", "Refused")])
def test_transaction_resets_after_data_end_whatever_the_reply(answer):
    d = Driver(answers={DataEnd: answer})
    replies = d.send(OPEN + b"x\r\n.\r\nRCPT TO:<r@x.y>\r\nDATA\r\n")
    assert codes(replies)[-3:] == [codes([answer])[0], "503 5.5.1", "503 5.5.1"]
    assert d.conn.state is ServerState.READY


def test_second_transaction_on_the_same_session():
    d = Driver()
    d.send(OPEN + b"one\r\n.\r\n")
    replies = d.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<r@x.y>\r\nDATA\r\ntwo\r\n.\r\n")
    assert codes(replies) == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert d.body == b"one\r\ntwo\r\n"


def test_body_pipelined_after_refused_data_is_read_as_commands():
    # The client should wait for 354 (RFC 2920 3.1); if it does not, its text is commands.
    d = Driver(answers={DataStart: reply(554, "5.7.1", "No")})
    open_transaction(d)
    replies = d.send(b"DATA\r\nhello\r\n.\r\n")
    assert codes(replies) == ["554 5.7.1", "500 5.5.2", "500 5.5.2"]


def test_8bit_content_passes_through_and_nul_does_not():
    body = b"\x01\xff\xfe 8bit \xc3\xa9\r\n"
    assert run(body + b".\r\n").body == body
    assert run(b"\0" + body + b".\r\n").of(DataEnd)[0].problem == NUL_IN_DATA


def test_stuff_helper():
    assert stuff(b"") == b".\r\n"
    assert stuff(b".a\r\nb\r\n") == b"..a\r\nb\r\n.\r\n"


def test_a_message_with_a_problem_cannot_be_accepted():
    d = Driver()
    d.send(OPEN)
    d.conn.receive_data(b"bare\nlf\r\n.\r\n")
    while not isinstance(event := d.conn.next_event(), DataEnd):
        pass
    with pytest.raises(UsageError):
        d.conn.respond(QUEUED)
    d.conn.respond(event.problem)
    assert d.conn.state is ServerState.READY
