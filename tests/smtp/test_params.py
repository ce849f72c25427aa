"""ESMTP parameters of MAIL and RCPT (smtp/params.py), table-tested without a connection.

Each bad case names the exact reply; the replies are the core's standard ones
(smtp/reply.py): 501 5.5.4 for a malformed or duplicate parameter or a bad value, 555 5.5.4
for one that is not offered (RFC 5321 4.1.1.11) or given after HELO (RFC 1869 4.5), 552
5.3.4 for a declared SIZE over the limit (RFC 1870 6).
"""

import pytest

from relaywarden.smtp.events import MailParams, RcptParams
from relaywarden.smtp.params import mail_params, rcpt_params, split_params, xtext_param
from relaywarden.smtp.reply import (
    MESSAGE_TOO_BIG,
    PARAM_DUPLICATE,
    PARAM_SYNTAX,
    PARAM_UNKNOWN,
    PARAMS_NEED_EHLO,
    Reply,
)
from relaywarden.smtp.server import ServerSettings

ALL = ServerSettings(hostname="mx.test", max_message_size=1000, auth_mechanisms=("PLAIN",))
PLAIN = ServerSettings(hostname="mx.test", smtputf8=False, dsn=False)   # no AUTH, SIZE unlimited


def wire(r: Reply) -> str:
    return r.to_bytes().decode().rstrip("\r\n")


def test_the_replies_are_the_ones_the_table_names():
    assert wire(PARAM_SYNTAX) == "501 5.5.4 Invalid parameter value"
    assert wire(PARAM_DUPLICATE) == "501 5.5.4 Duplicate parameter"
    assert wire(PARAM_UNKNOWN) == "555 5.5.4 Unsupported parameter"
    assert wire(PARAMS_NEED_EHLO) == "555 5.5.4 Parameters need EHLO"
    assert wire(MESSAGE_TOO_BIG) == "552 5.3.4 Message size exceeds fixed limit"


MAIL_BAD = [
    # RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    ("-SIZE=1", ALL, PARAM_SYNTAX),
    ("SI_ZE=1", ALL, PARAM_SYNTAX),
    ("=1", ALL, PARAM_SYNTAX),
    # esmtp-value = 1*(%d33-60 / %d62-126): no "=", no controls, not empty
    ("SIZE=", ALL, PARAM_SYNTAX),
    ("ENVID=a=b", ALL, PARAM_SYNTAX),
    ("ENVID=a\x01b", ALL, PARAM_SYNTAX),
    # a keyword once (case-insensitive), checked before the meaning of any parameter
    ("SIZE=1 size=2", ALL, PARAM_DUPLICATE),
    ("BOGUS=1 BOGUS=2", ALL, PARAM_DUPLICATE),
    # RFC 1870 6: SIZE = 1*20DIGIT; over the limit is 552 5.3.4
    ("SIZE", ALL, PARAM_SYNTAX),
    ("SIZE=abc", ALL, PARAM_SYNTAX),
    ("SIZE=-1", ALL, PARAM_SYNTAX),
    ("SIZE=" + "9" * 21, ALL, PARAM_SYNTAX),
    ("SIZE=1001", ALL, MESSAGE_TOO_BIG),
    # RFC 6152 2: BODY = 7BIT / 8BITMIME (BINARYMIME needs CHUNKING, RFC 3030: not offered)
    ("BODY", ALL, PARAM_SYNTAX),
    ("BODY=BINARYMIME", ALL, PARAM_SYNTAX),
    # RFC 6531 3.4: SMTPUTF8 takes no value; not offered: 555
    ("SMTPUTF8=yes", ALL, PARAM_SYNTAX),
    ("SMTPUTF8", PLAIN, PARAM_UNKNOWN),
    # RFC 3461 4.3: RET = FULL / HDRS; without DSN: 555
    ("RET=ALL", ALL, PARAM_SYNTAX),
    ("RET", ALL, PARAM_SYNTAX),
    ("RET=FULL", PLAIN, PARAM_UNKNOWN),
    # RFC 3461 4.4: ENVID = xtext, at most 100 characters; decoded controls refused
    ("ENVID=a+2", ALL, PARAM_SYNTAX),
    ("ENVID=a+zz", ALL, PARAM_SYNTAX),
    ("ENVID=" + "x" * 101, ALL, PARAM_SYNTAX),
    ("ENVID=a+0D+0AX-Evil:+20y", ALL, PARAM_SYNTAX),
    ("ENVID", ALL, PARAM_SYNTAX),
    ("ENVID=caf\u00e9", ALL, PARAM_SYNTAX),      # xtext is ASCII; UTF-8 goes as +XX escapes
    ("ENVID=x", PLAIN, PARAM_UNKNOWN),
    # RFC 4954 5: AUTH = xtext (a mailbox or "<>"), only with AUTH offered
    ("AUTH", ALL, PARAM_SYNTAX),
    ("AUTH=" + "x" * 501, ALL, PARAM_SYNTAX),
    ("AUTH=a+00b", ALL, PARAM_SYNTAX),
    ("AUTH=<>", PLAIN, PARAM_UNKNOWN),
    # RFC 5321 4.1.1.11: a parameter not offered is 555; NOTIFY and ORCPT are RCPT's
    ("BOGUS", ALL, PARAM_UNKNOWN),
    ("NOTIFY=NEVER", ALL, PARAM_UNKNOWN),
    ("ORCPT=rfc822;a@b.c", ALL, PARAM_UNKNOWN),
    # parameters are checked in order: the first problem is the answer
    ("BOGUS SIZE=abc", ALL, PARAM_UNKNOWN),
    ("SIZE=abc BOGUS", ALL, PARAM_SYNTAX),
    ("SIZE=1001 BODY=x", ALL, MESSAGE_TOO_BIG),
]


@pytest.mark.parametrize(("text", "conf", "expected"), MAIL_BAD)
def test_bad_mail_parameters(text, conf, expected):
    assert mail_params(text, conf, extended=True) is expected


MAIL_GOOD = [
    ("", MailParams()),
    ("SIZE=1000", MailParams(size=1000)),
    ("SIZE=0", MailParams(size=0)),
    ("size=7", MailParams(size=7)),                                 # keywords: any case
    ("BODY=8bitmime", MailParams(body="8BITMIME")),
    ("BODY=7BIT", MailParams(body="7BIT")),
    ("SMTPUTF8", MailParams(smtputf8=True)),
    ("RET=hdrs ENVID=abc+2Bdef", MailParams(ret="HDRS", envid="abc+def")),
    ("AUTH=user+40example.com", MailParams(auth="user@example.com")),
    ("AUTH=<>", MailParams(auth="<>")),
    ("SIZE=5  BODY=8BITMIME SMTPUTF8", MailParams(size=5, body="8BITMIME", smtputf8=True)),
    ("ENVID=" + "x" * 100, MailParams(envid="x" * 100)),
    ("ENVID=caf+C3+A9", MailParams(envid="caf\u00e9")),           # escaped UTF-8 octets
]


@pytest.mark.parametrize(("text", "expected"), MAIL_GOOD)
def test_good_mail_parameters(text, expected):
    assert mail_params(text, ALL, extended=True) == expected


def test_mail_without_parameters_shares_one_value():
    assert mail_params("", ALL, extended=False) is mail_params("", PLAIN, extended=True)


def test_size_has_no_limit_when_none_is_set():
    assert mail_params("SIZE=" + "9" * 20, PLAIN, extended=True) == MailParams(size=10**20 - 1)


RCPT_BAD = [
    # RFC 3461 4.1: NOTIFY = "NEVER" / 1#( SUCCESS / FAILURE / DELAY ), each once
    ("NOTIFY", ALL, PARAM_SYNTAX),
    ("NOTIFY=BOGUS", ALL, PARAM_SYNTAX),
    ("NOTIFY=NEVER,SUCCESS", ALL, PARAM_SYNTAX),
    ("NOTIFY=SUCCESS,SUCCESS", ALL, PARAM_SYNTAX),
    ("NOTIFY=SUCCESS,", ALL, PARAM_SYNTAX),
    ("NOTIFY=NEVER NOTIFY=NEVER", ALL, PARAM_DUPLICATE),
    # RFC 3461 4.2: ORCPT = addr-type ";" xtext, at most 500 characters
    ("ORCPT", ALL, PARAM_SYNTAX),
    ("ORCPT=nosemicolon", ALL, PARAM_SYNTAX),
    ("ORCPT=rfc822;", ALL, PARAM_SYNTAX),
    ("ORCPT=;a@b.c", ALL, PARAM_SYNTAX),
    ("ORCPT=rfc822;a+zz", ALL, PARAM_SYNTAX),
    ("ORCPT=rfc822;a+0Ab@c.d", ALL, PARAM_SYNTAX),               # decoded LF
    ("ORCPT=rfc822;" + "x" * 494, ALL, PARAM_SYNTAX),           # 501 characters
    # without DSN (RFC 3461 not offered), and MAIL's parameters: 555
    ("NOTIFY=NEVER", PLAIN, PARAM_UNKNOWN),
    ("ORCPT=rfc822;a@b.c", PLAIN, PARAM_UNKNOWN),
    ("SIZE=10", ALL, PARAM_UNKNOWN),
    ("BODY=7BIT", ALL, PARAM_UNKNOWN),
    ("X=1", ALL, PARAM_UNKNOWN),
]


@pytest.mark.parametrize(("text", "conf", "expected"), RCPT_BAD)
def test_bad_rcpt_parameters(text, conf, expected):
    assert rcpt_params(text, conf, extended=True) is expected


RCPT_GOOD = [
    ("", RcptParams()),
    ("NOTIFY=NEVER", RcptParams(notify=("NEVER",))),
    ("NOTIFY=success,Failure", RcptParams(notify=("SUCCESS", "FAILURE"))),
    ("NOTIFY=DELAY", RcptParams(notify=("DELAY",))),
    ("ORCPT=rfc822;user+40example.com", RcptParams(orcpt="rfc822;user@example.com")),
    ("ORCPT=rfc822;" + "x" * 487, RcptParams(orcpt="rfc822;" + "x" * 487)),   # 500
    ("NOTIFY=FAILURE ORCPT=RFC822;a+2Bb@c.d",
     RcptParams(notify=("FAILURE",), orcpt="RFC822;a+b@c.d")),
]


@pytest.mark.parametrize(("text", "expected"), RCPT_GOOD)
def test_good_rcpt_parameters(text, expected):
    assert rcpt_params(text, ALL, extended=True) == expected


@pytest.mark.parametrize("parse", [mail_params, rcpt_params])
def test_parameters_need_ehlo(parse):
    # RFC 1869 4.5: after HELO, MAIL and RCPT take no parameters at all (555); the syntax
    # of the tokens is checked first.
    assert parse("SIZE=10", ALL, extended=False) is PARAMS_NEED_EHLO
    assert parse("X", ALL, extended=False) is PARAMS_NEED_EHLO
    assert parse("-X", ALL, extended=False) is PARAM_SYNTAX
    assert parse("X X", ALL, extended=False) is PARAM_DUPLICATE


SPLIT = [
    ("", []),
    ("   ", []),
    ("A", [("A", None)]),
    ("a=1 b-2=x", [("A", "1"), ("B-2", "x")]),
    ("X=a  Y", [("X", "a"), ("Y", None)]),                      # runs of spaces
    ("X=\u00e9", [("X", "\u00e9")]),                             # RFC 6531 3.3
]


@pytest.mark.parametrize(("text", "expected"), SPLIT)
def test_split_params(text, expected):
    assert split_params(text, extended=True) == expected


XTEXT = [
    # RFC 3461 4: xtext = *( xchar / hexchar ), hexchar = "+" 2(HEXDIG upper case)
    ("abc", 10, "abc"),
    ("a+2Bb", 10, "a+b"),
    ("a+2bb", 10, None),          # lower-case hex is not a hexchar
    ("a+", 10, None),
    ("x" * 11, 10, None),         # the limit counts the encoded form
    (None, 10, None),
    ("+7F", 10, None),            # DEL
    ("a+09b", 10, None),          # TAB: a control, refused like CR and LF
]


@pytest.mark.parametrize(("value", "limit", "expected"), XTEXT)
def test_xtext_param(value, limit, expected):
    assert xtext_param(value, limit) == expected
