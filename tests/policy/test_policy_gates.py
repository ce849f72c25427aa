"""The listener's gates (policy/gates.py) as tables: plain values in, the decision out, with
the exact reply the session sends, the rule its log line names and the detail.

TLS first, AUTH first, AUTH over TLS only and rDNS required are what the session asks at
MAIL, ETRN, AUTH and connect (and `policy explain` asks the same); the limits (connections,
free space, the rate windows, the hop count) the session asks alone."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from relaywarden.policy import gates
from relaywarden.policy.gates import Need
from relaywarden.policy.limits import ConnectionCounter, FreeSpaceGuard
from relaywarden.policy.model import Action, Gates
from relaywarden.smtp.reply import TOO_MANY_RECIPIENTS

REJECT, BADMAIL = Action.REJECT, Action.BADMAIL
OFFICE = (ip_network("10.0.0.0/8"),)
INSIDE, OUTSIDE = ip_address("10.1.2.3"), ip_address("192.0.2.7")


def wire(decision) -> bytes:
    return decision.reply.to_bytes()


# (gates, client, tls, user, verb) -> None, or (reply on the wire, rule, detail, need)
GATE_CASES = [
    (Gates(), OUTSIDE, False, None, "MAIL", None),
    (Gates(tls_mode="starttls"), OUTSIDE, False, None, "MAIL", None),
    (Gates(tls_mode="required"), OUTSIDE, True, None, "MAIL", None),
    (Gates(tls_mode="implicit"), OUTSIDE, False, None, "MAIL", None),
    (Gates(tls_mode="required"), OUTSIDE, False, None, "MAIL",
     (b"530 5.7.0 Must issue a STARTTLS command first\r\n", "listeners.sub.tls.mode",
      "TLS required: MAIL before STARTTLS", Need.TLS)),
    (Gates(tls_mode="required"), OUTSIDE, False, None, "ETRN",
     (b"530 5.7.0 Must issue a STARTTLS command first\r\n", "listeners.sub.tls.mode",
      "TLS required: ETRN before STARTTLS", Need.TLS)),
    (Gates(tls_mode="required", tls_optional_networks=OFFICE), INSIDE, False, None, "MAIL", None),
    (Gates(tls_mode="required", tls_optional_networks=OFFICE), OUTSIDE, False, None, "MAIL",
     (b"530 5.7.0 Must issue a STARTTLS command first\r\n", "listeners.sub.tls.mode",
      "TLS required: MAIL before STARTTLS (192.0.2.7 is not in "
      "listeners.sub.tls.optional_networks)", Need.TLS)),
    (Gates(auth_enabled=True, auth_required=True), OUTSIDE, False, "ann", "MAIL", None),
    (Gates(auth_enabled=True, auth_required=True), OUTSIDE, False, None, "MAIL",
     (b"530 5.7.0 Authentication required\r\n", "listeners.sub.auth.required",
      "MAIL before AUTH", Need.USER)),
    # TLS is asked first, as the server answers it first.
    (Gates(tls_mode="required", auth_enabled=True, auth_required=True), OUTSIDE, False, None,
     "MAIL", (b"530 5.7.0 Must issue a STARTTLS command first\r\n", "listeners.sub.tls.mode",
              "TLS required: MAIL before STARTTLS", Need.TLS)),
    (Gates(tls_mode="required", auth_enabled=True, auth_required=True), OUTSIDE, True, None,
     "MAIL", (b"530 5.7.0 Authentication required\r\n", "listeners.sub.auth.required",
              "MAIL before AUTH", Need.USER)),
]


@pytest.mark.parametrize("g,ip,tls,user,verb,expected", GATE_CASES)
def test_check_gates(g, ip, tls, user, verb, expected):
    refusal = gates.check_gates("sub", g, ip, tls=tls, user=user, verb=verb)
    if expected is None:
        assert refusal is None
        return
    answer, rule, detail, need = expected
    d = refusal.decision
    assert (d.action, wire(d), d.rule, d.detail, refusal.need) == (REJECT, answer, rule, detail,
                                                                   need)


# (gates, client, tls) -> None, or (reply on the wire, rule, detail, need)
AUTH_CASES = [
    (Gates(auth_enabled=True), OUTSIDE, True, None),
    (Gates(auth_enabled=True, tls_mode="implicit"), OUTSIDE, False, None),
    (Gates(auth_enabled=True, auth_plaintext_networks=OFFICE), INSIDE, False, None),
    (Gates(), OUTSIDE, True,
     (b"503 5.5.1 Authentication not enabled\r\n", "listeners.sub.auth.enabled",
      "this listener does not offer AUTH", None)),
    (Gates(auth_enabled=True, tls_mode="starttls"), OUTSIDE, False,
     (b"538 5.7.11 Encryption required for requested authentication mechanism\r\n",
      "listeners.sub.auth.plaintext_networks",
      "AUTH before STARTTLS: 192.0.2.7 is not in listeners.sub.auth.plaintext_networks",
      Need.TLS)),
    (Gates(auth_enabled=True, auth_plaintext_networks=OFFICE), OUTSIDE, False,
     (b"538 5.7.11 Encryption required for requested authentication mechanism\r\n",
      "listeners.sub.auth.plaintext_networks",
      "AUTH before STARTTLS: 192.0.2.7 is not in listeners.sub.auth.plaintext_networks"
      ' and listeners.sub.tls.mode = "none": this client can never AUTH here', None)),
]


@pytest.mark.parametrize("g,ip,tls,expected", AUTH_CASES)
def test_check_auth(g, ip, tls, expected):
    refusal = gates.check_auth("sub", g, ip, tls=tls)
    if expected is None:
        assert refusal is None
        return
    answer, rule, detail, need = expected
    d = refusal.decision
    assert (d.action, wire(d), d.rule, d.detail, refusal.need) == (REJECT, answer, rule, detail,
                                                                   need)


RDNS_CASES = [
    # (require_rdns, verified name, temporary, detail given) -> None or (wire, detail)
    (False, None, False, "", None),
    (True, "mx.example.com", False, "", None),
    (True, None, False, "",
     (b"554 5.7.25 Client host rejected: cannot verify your host name\r\n",
      "the client has no verified reverse DNS name")),
    (True, None, False, "reverse DNS: RDNS failed: NXDOMAIN",
     (b"554 5.7.25 Client host rejected: cannot verify your host name\r\n",
      "reverse DNS: RDNS failed: NXDOMAIN")),
    (True, None, True, "reverse DNS: RDNS failed: timeout",
     (b"421 4.7.25 Cannot verify your host name, try again later\r\n",
      "reverse DNS: RDNS failed: timeout")),
]


@pytest.mark.parametrize("required,name,temporary,detail,expected", RDNS_CASES)
def test_check_rdns(required, name, temporary, detail, expected):
    refusal = gates.check_rdns("in", Gates(require_rdns=required), name, temporary=temporary,
                               detail=detail)
    if expected is None:
        assert refusal is None
        return
    d = refusal.decision
    assert (d.action, wire(d), d.rule, d.detail, refusal.need) == (
        REJECT, expected[0], "listeners.in.access.require_rdns", expected[1], Need.NAME)


TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"
# (total open, open from the address, max_connections, max_connections_per_ip)
#   -> None, or (rule, detail)
CONNECTION_CASES = [
    (0, 0, 0, 0, None),
    (500, 500, 0, 0, None),                      # 0: no limit
    (2, 1, 3, 0, None),
    (3, 1, 3, 0, ("listeners.in.limits.max_connections",
                  "too many connections on the listener (3 open, max_connections = 3)")),
    (3, 2, 10, 2, ("listeners.in.limits.max_connections_per_ip",
                   "too many connections from 192.0.2.7 (2 open, max_connections_per_ip = 2)")),
    (3, 1, 10, 2, None),
    # Both full: the listener's limit is named.
    (5, 5, 5, 5, ("listeners.in.limits.max_connections",
                  "too many connections on the listener (5 open, max_connections = 5)")),
]


@pytest.mark.parametrize("total,from_ip,max_total,max_per_ip,expected", CONNECTION_CASES)
def test_check_connections(total, from_ip, max_total, max_per_ip, expected):
    d = gates.check_connections("in", "192.0.2.7", total=total, from_ip=from_ip,
                                max_total=max_total, max_per_ip=max_per_ip)
    if expected is None:
        assert d is None
        return
    assert (d.action, wire(d), d.rule, d.detail) == (REJECT, TOO_MANY_CONNECTIONS, *expected)


def test_the_connection_counter_says_what_the_gate_says():
    counter = ConnectionCounter()
    for _ in range(2):
        counter.opened("192.0.2.7")
    assert counter.check("192.0.2.7", max_total=0, max_per_ip=2) == (
        "too many connections from 192.0.2.7 (2 open, max_connections_per_ip = 2)")
    assert counter.check("192.0.2.8", max_total=0, max_per_ip=2) is None


INSUFFICIENT_STORAGE = b"452 4.3.1 Insufficient system storage\r\n"
DISK_CASES = [
    # (free bytes, or None: unreadable; relay.min_free_space) -> None or detail
    (10, 0, None),                   # the guard is off
    (None, 100, None),               # cannot tell: the relay is not stopped by the guard
    (100, 100, None),
    (5000, 100, None),
    (99, 100, "free space in data_dir 99 < relay.min_free_space 100"),
    (0, 1, "free space in data_dir 0 < relay.min_free_space 1"),
]


@pytest.mark.parametrize("free,min_free,detail", DISK_CASES)
def test_check_disk(free, min_free, detail):
    d = gates.check_disk(free, min_free)
    if detail is None:
        assert d is None
        return
    assert (d.action, wire(d), d.rule, d.detail) == (REJECT, INSUFFICIENT_STORAGE,
                                                     "relay.min_free_space", detail)


def test_the_free_space_guard_asks_the_gate_on_one_reading():
    readings = [50, 500]
    guard = FreeSpaceGuard(min_free=100, free_bytes=lambda: readings.pop(0), clock=lambda: 0.0)
    d = guard.check()
    assert d is not None and d.detail == "free space in data_dir 50 < relay.min_free_space 100"
    assert not guard.ok() and readings == [500]       # cached: still the one reading
    guard.min_free = 0
    assert guard.check() is None and guard.ok()


RATE_CASES = [
    ("messages", 2, 60.0, None,
     b"451 4.7.1 Too many messages, slow down and try again later\r\n",
     "listeners.rate.limits.messages_per_window",
     "more than 2 messages in 60 s from 127.0.0.40"),
    ("messages", 5, 0.5, "ann",
     b"451 4.7.1 Too many messages, slow down and try again later\r\n",
     "listeners.rate.limits.messages_per_window",
     "more than 5 messages in 0.5 s from 127.0.0.40 or user ann"),
    ("recipients", 3, 60.0, None, b"452 4.5.3 Too many recipients\r\n",
     "listeners.rate.limits.recipients_per_window",
     "more than 3 recipients in 60 s from 127.0.0.40"),
]


@pytest.mark.parametrize("what,limit,window,user,answer,rule,detail", RATE_CASES)
def test_rate_limited(what, limit, window, user, answer, rule, detail):
    d = gates.rate_limited("rate", what, limit=limit, window=window, ip="127.0.0.40", user=user)
    assert (d.action, wire(d), d.rule, d.detail) == (REJECT, answer, rule, detail)


def test_a_full_recipient_window_answers_the_cores_own_452():
    """The same object as the core's recipient limit: the core does not count it as an
    error (RFC 5321 4.5.3.1.10 flow control)."""
    d = gates.rate_limited("rate", "recipients", limit=1, window=60.0, ip="192.0.2.7", user=None)
    assert d.reply is TOO_MANY_RECIPIENTS


HOP_CASES = [
    # (Received fields, relay.max_hops) -> None or detail
    (0, 30, None),
    (30, 30, None),
    (31, 30, "loop detected (5.4.6): 31 Received headers"),
    (1, 0, "loop detected (5.4.6): 1 Received headers"),
]


@pytest.mark.parametrize("count,max_hops,detail", HOP_CASES)
def test_check_hops(count, max_hops, detail):
    d = gates.check_hops(count, max_hops)
    if detail is None:
        assert d is None
        return
    # Accepted and kept in badmail: the log line says 554 5.4.6, the client is told 250.
    assert (d.action, d.reply.code, d.reply.enhanced, d.rule, d.detail) == (
        BADMAIL, 554, "5.4.6", "relay.max_hops", detail)
