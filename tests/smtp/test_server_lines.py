"""Command line handling: strict CRLF (RFC 5321 2.3.8), limits (4.5.3.1.4), odd bytes."""

import pytest
from smtpcore_helpers import Driver, codes, settings

from relaywarden.smtp.events import Closed, Handled, MailFrom
from relaywarden.smtp.server import BareLineEnds

NORMALIZE = settings(bare_line_ends=BareLineEnds.NORMALIZE)


def test_only_crlf_ends_a_command():
    d = Driver()
    assert d.send(b"NOOP\n") == []                 # a bare LF is not a line end
    assert d.send(b"NOOP\r") == []
    assert codes(d.send(b"\n")) == ["501 5.5.2"]   # "NOOP\nNOOP" is one (bad) line
    assert len(d.handled) == 1


@pytest.mark.parametrize("line", [b"NOOP\nNOOP", b"NOOP\rNOOP", b"NO\rOP", b"\nNOOP",
                                  b"NOOP\r\r", b"MAIL FROM:<a@b.c>\n"])
def test_bare_cr_or_lf_in_a_command_is_501(line):
    d = Driver()
    d.send(b"EHLO x\r\n")
    assert codes(d.send(line + b"\r\n")) == ["501 5.5.2"]
    assert d.of(MailFrom) == []


def test_normalize_takes_a_bare_lf_as_line_end():
    d = Driver(NORMALIZE)
    assert codes(d.send(b"NOOP\nNOOP\r\nNOOP\n")) == ["250 2.0.0"] * 3


def test_normalize_still_refuses_a_bare_cr():
    d = Driver(NORMALIZE)
    assert codes(d.send(b"NO\rOP\r\nNOOP\r\rx\n")) == ["501 5.5.2", "501 5.5.2"]


def test_command_line_limit_counts_the_crlf():
    d = Driver(settings(max_command_line=20))
    exact = b"NOOP " + b"x" * 13 + b"\r\n"
    assert len(exact) == 20
    assert codes(d.send(exact)) == ["250 2.0.0"]
    assert codes(d.send(b"NOOP " + b"x" * 14 + b"\r\n")) == ["500 5.5.2"]
    assert d.handled[-1].reply.lines == ("Line too long",)
    assert d.handled[-1].verb == "NOOP"


def test_normalize_limit_with_bare_lf():
    d = Driver(settings(max_command_line=20, bare_line_ends=BareLineEnds.NORMALIZE))
    assert codes(d.send(b"NOOP " + b"x" * 13 + b"\n")) == ["250 2.0.0"]
    assert codes(d.send(b"NOOP " + b"x" * 14 + b"\n")) == ["500 5.5.2"]
    assert codes(d.send(b"NOOP " + b"x" * 30 + b"\nNOOP\n")) == ["500 5.5.2", "250 2.0.0"]


def test_rest_of_a_long_line_is_never_a_command():
    d = Driver(settings(max_command_line=64))
    line = b"NOOP " + b"x" * 100 + b"MAIL FROM:<a@b.c>\r\n"
    assert codes(d.send(b"EHLO x\r\n" + line + b"NOOP\r\n")) == ["250", "500 5.5.2", "250 2.0.0"]
    assert d.of(MailFrom) == []


def test_long_line_is_answered_once_at_its_end_whatever_the_chunks():
    d = Driver(settings(max_command_line=64))
    assert d.send(b"NOOP " + b"y" * 100) == []
    assert d.send(b"z" * 1000) == []
    assert d.send(b"MAIL FROM:<a@b.c>\r") == []       # CRLF split between chunks
    assert codes(d.send(b"\nNOOP\r\n")) == ["500 5.5.2", "250 2.0.0"]
    assert len(d.handled) == 2


def test_long_line_discarding_does_not_buffer():
    d = Driver(settings(max_command_line=64))
    d.send(b"NOOP " + b"y" * 100_000)
    assert len(d.conn._in) <= 1


def test_auth_lines_may_be_longer():
    # RFC 4954 4: 12288 octets for AUTH with an initial response.
    import base64
    token = base64.b64encode(b"\0user\0" + b"p" * 5000)
    d = Driver(settings(auth_mechanisms=("PLAIN",)))
    assert codes(d.send(b"EHLO x\r\nAUTH PLAIN " + token + b"\r\n")) == ["250", "235 2.7.0"]
    d2 = Driver(settings(auth_mechanisms=("PLAIN",)))
    assert codes(d2.send(b"EHLO x\r\nNOOP " + token + b"\r\n")) == ["250", "500 5.5.2"]


@pytest.mark.parametrize("line", [b"NO\0OP", b"NOOP\0", b"\0", b"MAIL FROM:<a@b.c>\0"])
def test_nul_in_a_command_is_501(line):
    d = Driver()
    d.send(b"EHLO x\r\n")
    assert codes(d.send(line + b"\r\n")) == ["501 5.5.2"]


@pytest.mark.parametrize("line", [b"NOOP \xff\xfe", b"\xc3", b"MAIL FROM:<\xe9@b.c>",
                                  b"EHLO \xed\xa0\x80"])
def test_non_utf8_is_500_never_an_exception(line):
    d = Driver()
    assert codes(d.send(line + b"\r\n")) == ["500 5.5.2"]


def test_handled_for_a_malformed_line_has_no_argument():
    d = Driver()
    d.send(b"MAIL FROM:<a\0@b.c>\r\n")
    assert d.handled == [Handled("MAIL", "", d.handled[0].reply)]


def test_eof_in_the_middle_of_a_line():
    d = Driver()
    d.send(b"NOOP")
    assert d.eof() == []
    assert d.closed == Closed(reason="eof", in_transaction=False)


def test_eof_after_complete_lines_answers_them_first():
    d = Driver()
    d.conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert codes(d.eof()) == ["250 2.0.0", "250 2.0.0"]
    assert d.closed.reason == "eof"


def test_many_small_chunks():
    d = Driver()
    session = b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@x.y>\r\nNOOP\r\n"
    replies = d.send_chunks([session[i:i + 1] for i in range(len(session))])
    assert codes(replies) == ["250", "250 2.1.0", "250 2.1.5", "250 2.0.0"]
