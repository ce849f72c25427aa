"""The trace header (server/trace.py, RFC 5321 4.4) and ATRN's permission (server/atrn.py),
from plain values: the exact bytes and decisions."""

from __future__ import annotations

from email.utils import formatdate
from types import SimpleNamespace

import pytest

from relaywarden.policy.model import Action
from relaywarden.resolver import RdnsResult, RdnsStatus
from relaywarden.server import atrn
from relaywarden.server.trace import clean, rdns_note, received

NOW = 1700000000.0
DATE = formatdate(NOW, localtime=True)


def rcpts(*addresses: str) -> list:
    return [SimpleNamespace(address=a) for a in addresses]


def header(**changes) -> bytes:
    facts = dict(hostname="relay.test", listener="main", helo="app.test",
                 client_ip="192.0.2.7", note=None, esmtp=True, smtputf8=False, tls=None,
                 user=None, queue_id="3182BD2X7QCTBXFKQFC", recipients=rcpts("a@example.com"),
                 now=NOW)
    facts.update(changes)
    return received(**facts)


def test_the_received_header():
    assert header() == (
        "Received: from app.test ([192.0.2.7])\r\n"
        "\tby relay.test (relaywarden, listener main)\r\n"
        "\twith ESMTP id 3182BD2X7QCTBXFKQFC\r\n"
        "\tfor <a@example.com>;\r\n"
        f"\t{DATE}\r\n").encode()


def test_tls_user_and_name():
    assert header(note="mail.app.test", tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
                  user="ann", recipients=rcpts("a@example.com", "b@example.com")) == (
        "Received: from app.test (mail.app.test [192.0.2.7])\r\n"
        "\tby relay.test (relaywarden, listener main)\r\n"
        "\twith ESMTPSA id 3182BD2X7QCTBXFKQFC\r\n"
        "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256);\r\n"
        f"\t{DATE}\r\n").encode()


# (esmtp, smtputf8, tls, user) -> the "with" protocol (RFC 3848, RFC 6531)
PROTOCOLS = [
    (False, False, False, None, "SMTP"),
    (False, False, True, None, "SMTP"),          # HELO has no TLS type
    (False, False, False, "ann", "SMTPA"),
    (True, False, False, None, "ESMTP"),
    (True, False, True, None, "ESMTPS"),
    (True, False, True, "ann", "ESMTPSA"),
    (True, False, False, "ann", "ESMTPA"),
    (True, True, False, None, "UTF8SMTP"),
    (True, True, True, "ann", "UTF8SMTPSA"),
]


@pytest.mark.parametrize("esmtp,smtputf8,tls,user,proto", PROTOCOLS)
def test_the_protocol(esmtp, smtputf8, tls, user, proto):
    got = header(esmtp=esmtp, smtputf8=smtputf8, user=user,
                 tls=("TLSv1.3", "X", 128) if tls else None)
    assert f"\twith {proto} id ".encode() in got


def test_client_text_is_made_safe():
    got = header(helo="evil\r\nBcc: x@y", note="caf\u00e9.test unverified",
                 recipients=rcpts("\u00fcser@example.com"))
    assert got.startswith(b"Received: from evil??Bcc: x@y (caf?.test unverified [192.0.2.7])")
    assert b"\tfor <?ser@example.com>;" in got
    assert clean("x" * 300) == "x" * 255 and clean("ab\tc", 2) == "ab"


@pytest.mark.parametrize("rdns,note", [
    (None, None),
    (RdnsResult(RdnsStatus.VERIFIED, "mx.example.com", "ok"), "mx.example.com"),
    (RdnsResult(RdnsStatus.UNVERIFIED, "mx.example.com", "no A"), "mx.example.com unverified"),
    (RdnsResult(RdnsStatus.UNVERIFIED, None, "no PTR"), "unverified"),
    (RdnsResult(RdnsStatus.FAILED, None, "timeout", temporary=True), "RDNS failed"),
])
def test_rdns_note(rdns, note):
    assert rdns_note(rdns) == note


# (user, domains asked, domains the user's routes allow) -> None or (rule, detail)
ATRN_CASES = [
    ("shop", ("shop.test",), ("shop.test", "shop2.test"), None),
    ("shop", (), ("shop.test",), None),                   # no argument: all of its own
    ("shop", ("other.test",), ("shop.test",),
     ('routes."other.test".atrn_users', "user shop may not collect mail for other.test")),
    ("shop", ("shop.test", "a.test", "b.test"), ("shop.test",),
     ('routes."a.test".atrn_users', "user shop may not collect mail for a.test,b.test")),
    ("nobody", (), (), ("atrn_users", "user nobody may collect no domain's mail")),
]


@pytest.mark.parametrize("user,asked,allowed,expected", ATRN_CASES)
def test_atrn_check(user, asked, allowed, expected):
    d = atrn.check(user, asked, allowed)
    if expected is None:
        assert d is None
        return
    assert (d.action, d.reply.to_bytes(), d.rule, d.detail) == (
        Action.REJECT, b"450 4.7.1 ATRN request refused\r\n", *expected)
