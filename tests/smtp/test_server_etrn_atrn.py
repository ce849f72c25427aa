"""ETRN (RFC 1985) and ATRN (RFC 2645) in the server core: syntax, sequence, advertising,
the decision events, and the turned-around connection."""

import pytest
from smtpcore_helpers import Driver, codes, settings

from relaywarden.smtp.events import Etrn, Handled
from relaywarden.smtp.reply import reply
from relaywarden.smtp.server import UsageError

STARTED = reply(253, "2.0.0", "OK, 1 pending messages for node example.com started")


def ehlo_lines(driver: Driver) -> list[str]:
    [answer] = driver.send(b"EHLO client.test\r\n")
    return list(answer.lines)


def test_etrn_is_advertised_only_when_offered():
    assert "ETRN" not in ehlo_lines(Driver(settings()))
    assert "ETRN" in ehlo_lines(Driver(settings(etrn=True)))


def test_etrn_not_offered_is_502():
    d = Driver(settings())
    d.send(b"EHLO client.test\r\n")
    assert codes(d.send(b"ETRN example.com\r\n")) == ["502 5.5.1"]


@pytest.mark.parametrize("line, domain, subdomains", [
    (b"ETRN example.com", "example.com", False),
    (b"ETRN Example.COM.", "example.com", False),
    (b"etrn @example.com", "example.com", True),
    (b"ETRN  mail.example.com ", "mail.example.com", False),
])
def test_etrn_gives_the_domain_to_the_driver(line, domain, subdomains):
    d = Driver(settings(etrn=True), answers={Etrn: STARTED})
    d.send(b"EHLO client.test\r\n")
    assert codes(d.send(line + b"\r\n")) == ["253 2.0.0"]
    assert d.events[-1] == Etrn(domain=domain, subdomains=subdomains)


@pytest.mark.parametrize("line", [
    b"ETRN", b"ETRN ", b"ETRN @", b"ETRN exa mple.com", b"ETRN -bad.example",
    b"ETRN [10.0.0.1]", b"ETRN a..b", b"ETRN user@example.com", b"ETRN @@example.com",
    "ETRN b\u00fccher.example".encode(),
])
def test_etrn_syntax_errors_are_501(line):
    d = Driver(settings(etrn=True))
    d.send(b"EHLO client.test\r\n")
    assert codes(d.send(line + b"\r\n")) == ["501 5.5.4"]
    assert not any(isinstance(e, Etrn) for e in d.events)


def test_etrn_queue_names_are_459():
    d = Driver(settings(etrn=True))
    d.send(b"EHLO client.test\r\n")
    assert codes(d.send(b"ETRN #queue1\r\n")) == ["459 4.5.4"]


def test_etrn_needs_helo_first():
    d = Driver(settings(etrn=True))
    assert codes(d.send(b"ETRN example.com\r\n")) == ["503 5.5.1"]


def test_etrn_not_in_a_mail_transaction():
    d = Driver(settings(etrn=True))
    d.send(b"EHLO client.test\r\nMAIL FROM:<a@example.net>\r\n")
    [answer] = d.send(b"ETRN example.com\r\n")
    assert (answer.code, answer.enhanced) == (503, "5.5.1")
    assert "transaction" in answer.lines[0]
    # The transaction is untouched: RCPT still works.
    assert codes(d.send(b"RCPT TO:<b@example.com>\r\n")) == ["250 2.1.5"]


def test_etrn_after_helo_and_after_refusal_state_stays_ready():
    d = Driver(settings(etrn=True), answers={Etrn: reply(459, "4.7.1", "Node example.com not allowed")})
    d.send(b"HELO client.test\r\n")
    assert codes(d.send(b"ETRN example.com\r\n")) == ["459 4.7.1"]
    assert codes(d.send(b"MAIL FROM:<a@example.net>\r\n")) == ["250 2.1.0"]


@pytest.mark.parametrize("code", [250, 251, 252, 253, 458, 459])
def test_etrn_answers_rfc1985_codes(code):
    d = Driver(settings(etrn=True), answers={Etrn: reply(code, None, "x")})
    d.send(b"EHLO client.test\r\n")
    assert [r.code for r in d.send(b"ETRN example.com\r\n")] == [code]


def test_etrn_cannot_be_answered_354():
    d = Driver(settings(etrn=True), answers={Etrn: reply(354, None, "go on")})
    d.send(b"EHLO client.test\r\n")
    with pytest.raises(UsageError):
        d.send(b"ETRN example.com\r\n")


def test_pipelined_etrn_replies_stay_in_order():
    d = Driver(settings(etrn=True), answers={Etrn: STARTED})
    d.send(b"EHLO client.test\r\n")
    out = d.send(b"ETRN a.example\r\nNOOP\r\nETRN #q\r\nETRN b.example\r\n")
    assert codes(out) == ["253 2.0.0", "250 2.0.0", "459 4.5.4", "253 2.0.0"]
    assert [e.domain for e in d.events if isinstance(e, Etrn)] == ["a.example", "b.example"]
    assert any(isinstance(e, Handled) and e.verb == "ETRN" for e in d.events)


# --- ATRN (RFC 2645) ---------------------------------------------------------------------

from relaywarden.smtp.events import Atrn  # noqa: E402
from relaywarden.smtp.server import ServerState  # noqa: E402

ATRN_ON = dict(atrn=True, auth_mechanisms=("PLAIN",))
REVERSING = reply(250, "2.0.0", "OK now reversing the connection")
LOGIN = b"AUTH PLAIN AHNob3AAc2VjcmV0\r\n"


def test_atrn_is_advertised_only_with_auth():
    assert "ATRN" in ehlo_lines(Driver(settings(**ATRN_ON)))
    assert "ATRN" not in ehlo_lines(Driver(settings(atrn=True)))
    assert "ATRN" not in ehlo_lines(Driver(settings(auth_mechanisms=("PLAIN",))))


def test_atrn_not_offered_is_502():
    d = Driver(settings(auth_mechanisms=("PLAIN",)))
    d.send(b"EHLO shop.test\r\n" + LOGIN)
    assert codes(d.send(b"ATRN\r\n")) == ["502 5.5.1"]


def test_atrn_needs_auth():
    d = Driver(settings(**ATRN_ON))
    d.send(b"EHLO shop.test\r\n")
    assert codes(d.send(b"ATRN shop.test\r\n")) == ["530 5.7.0"]
    assert not any(isinstance(e, Atrn) for e in d.events)


@pytest.mark.parametrize("line, domains", [
    (b"ATRN", ()),
    (b"ATRN ", ()),
    (b"ATRN Shop.Test", ("shop.test",)),
    (b"ATRN shop.test,b.example, shop.test", ("shop.test", "b.example")),
])
def test_atrn_gives_the_domains_to_the_driver(line, domains):
    d = Driver(settings(**ATRN_ON), answers={Atrn: reply(453, "4.3.0", "You have no mail")})
    d.send(b"EHLO shop.test\r\n" + LOGIN)
    assert codes(d.send(line + b"\r\n")) == ["453 4.3.0"]
    assert d.events[-1] == Atrn(domains=domains)
    assert d.conn.state is ServerState.READY      # a refusal leaves the session as it was


@pytest.mark.parametrize("line", [b"ATRN a,,b", b"ATRN [10.0.0.1]", b"ATRN a b", b"ATRN ,"])
def test_atrn_syntax_errors_are_501(line):
    d = Driver(settings(**ATRN_ON))
    d.send(b"EHLO shop.test\r\n" + LOGIN)
    assert codes(d.send(line + b"\r\n")) == ["501 5.5.4"]


def test_250_to_atrn_reverses_the_connection_and_hands_over_unread_bytes():
    d = Driver(settings(**ATRN_ON), answers={Atrn: REVERSING})
    d.send(b"EHLO shop.test\r\n" + LOGIN)
    # The customer's greeting may come in the same packet as nothing else: the core must
    # not read it as a command.
    assert codes(d.send(b"ATRN\r\n220 shop.test ready\r\n")) == ["250 2.0.0"]
    assert d.conn.state is ServerState.REVERSED
    assert d.send(b"250 more\r\n") == []        # nothing is read any more
    assert d.conn.take_input() == b"220 shop.test ready\r\n250 more\r\n"
    assert not d.conn.closing


def test_take_input_is_only_for_a_reversed_connection():
    d = Driver(settings(**ATRN_ON))
    with pytest.raises(UsageError):
        d.conn.take_input()
