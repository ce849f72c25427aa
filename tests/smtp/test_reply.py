import pytest

from relaywarden.smtp import reply as R
from relaywarden.smtp.reply import Reply, reply


def test_single_line_with_enhanced_code():
    assert reply(250, "2.1.0", "Sender OK").to_bytes() == b"250 2.1.0 Sender OK\r\n"


def test_multi_line_repeats_enhanced_code_on_every_line():
    # RFC 2034 4: the enhanced code prefixes the text of each line.
    r = reply(550, "5.7.1", "first", "second", "third")
    assert r.to_bytes() == (b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n")


def test_without_enhanced_code():
    assert R.START_DATA.to_bytes() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert reply(220, None, "mx ESMTP").to_bytes() == b"220 mx ESMTP\r\n"


def test_empty_text_has_no_trailing_space():
    assert reply(334, None, "").to_bytes() == b"334\r\n"


@pytest.mark.parametrize("code, positive, transient, permanent", [
    (220, True, False, False), (250, True, False, False), (354, True, False, False),
    (421, False, True, False), (452, False, True, False),
    (500, False, False, True), (554, False, False, True),
])
def test_classes(code, positive, transient, permanent):
    enhanced = None if code // 100 == 3 else f"{code // 100}.0.0"
    r = reply(code, enhanced, "x")
    assert (r.positive, r.transient, r.permanent) == (positive, transient, permanent)


@pytest.mark.parametrize("args", [
    (199, None, "x"), (600, None, "x"), (250, "5.0.0", "x"), (250, "2.0", "x"),
    (250, "2.00.0", "x"), (250, None, "a\r\nb"), (250, None, "a\nb"), (250, None, "a\0"),
])
def test_invalid_replies_are_refused_where_made(args):
    with pytest.raises(ValueError):
        reply(*args)


def test_lines_must_be_a_non_empty_tuple():
    with pytest.raises(ValueError):
        Reply(250, None, ())
    with pytest.raises(ValueError):
        Reply(250, None, ["x"])  # type: ignore[arg-type]


def test_frozen_and_hashable():
    r = reply(250, "2.0.0", "OK")
    assert r == reply(250, "2.0.0", "OK") and hash(r) == hash(reply(250, "2.0.0", "OK"))
    with pytest.raises(AttributeError):
        r.code = 251  # type: ignore[misc]


@pytest.mark.parametrize("const, wire", [
    (R.START_DATA, "354 End data with <CR><LF>.<CR><LF>"),
    (R.BAD_SEQUENCE, "503 5.5.1"),
    (R.UNKNOWN_COMMAND, "500 5.5.2"),
    (R.LINE_TOO_LONG, "500 5.5.2 Line too long"),
    (R.PARAM_UNKNOWN, "555 5.5.4"),
    (R.PARAM_DUPLICATE, "501 5.5.4"),
    (R.TOO_MANY_RECIPIENTS, "452 4.5.3"),
    (R.MESSAGE_TOO_BIG, "552 5.3.4"),
    (R.BARE_LF, "550 5.6.0"),
    (R.TOO_MANY_ERRORS, "421 4.7.0"),
    (R.NO_VALID_RECIPIENTS, "554 5.5.1 No valid recipients"),
    (R.OK, "250 2.0.0"),
    (R.CLOSING, "221 2.0.0"),
    (R.CANNOT_VRFY, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
    (R.HELP, "214-2.0.0"),
    (R.AUTH_CANCELLED, "501 5.0.0 Authentication cancelled"),
    (R.AUTH_UNKNOWN_MECHANISM, "504 5.5.4"),
])
def test_standard_replies(const, wire):
    assert const.to_bytes().decode().startswith(wire)


def test_str_for_logs():
    assert str(reply(250, "2.0.0", "a", "b")) == "250 2.0.0 a b"
