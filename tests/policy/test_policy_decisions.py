"""Policy decisions as tables: facts in, (action, code, enhanced, rule) out, one row each.

The policy below is built directly from the policy values (no config file), so a failing
row points at the engine, not at the loader. Addresses are constructed as the parser
would hand them over: domain lower-cased, one trailing dot removed, route stripped off
into `route`.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from relaywarden.policy import (
    AccessRules,
    Action,
    ClientFacts,
    ClientGroup,
    HostnameEntry,
    ListenerPolicy,
    NetworkEntry,
    Policy,
)
from relaywarden.smtp.address import Address

ACCEPT, REJECT, BADMAIL = Action.ACCEPT, Action.REJECT, Action.BADMAIL


def net(*texts: str) -> tuple:
    return tuple(ip_network(text) for text in texts)


def entries(*texts: str) -> tuple:
    return tuple(
        NetworkEntry(ip_network(text)) if text[0].isdigit() or ":" in text else HostnameEntry(text)
        for text in texts
    )


def addr(text: str | None, *, quoted: bool = False, route: tuple[str, ...] = ()) -> Address | None:
    """"user@example.com" -> Address; "postmaster" -> <postmaster>; None -> <>."""
    if text is None:
        return None
    local, _, domain = text.rpartition("@") if "@" in text else (text, "", "")
    return Address(
        local=local, domain=domain, literal=domain.startswith("["), route=route, quoted=quoted
    )


SCANNERS = ClientGroup(
    name="scanners",
    networks=net("10.0.5.0/24"),
    hostnames=("*.scan.example.com",),
    users=("scanner",),
    directory_groups=("Scan Devices",),
    recipient_domains=("example.com", "*.example.com"),
    senders=("example.com", "noreply@example.org", "<>"),
    on_violation=BADMAIL,
)
PRINTERS = ClientGroup(
    name="printers",
    networks=net("10.0.6.0/24", "10.0.5.128/25"),   # overlaps scanners: file order decides
    users=("printer",),
    recipient_domains=("example.com",),
    on_violation=REJECT,
)
APPS = ClientGroup(name="apps", networks=net("10.0.0.0/24"))   # no restrictions

HOSTED = ("example.com", "*.example.org", "[192.0.2.25]")

POLICY = Policy({
    # The internet-facing listener: open to all but a few, relays for nobody.
    "inbound": ListenerPolicy(
        name="inbound",
        access=AccessRules(default=ACCEPT, deny=entries("198.51.100.0/24", "*.dialup.example.net")),
        hosted_domains=HOSTED,
        postmaster="postmaster@example.com",
    ),
    # The internal listener: closed except for the company networks.
    "outbound": ListenerPolicy(
        name="outbound",
        access=AccessRules(
            default=REJECT,
            allow=entries(
                "10.0.0.0/8",            # 0
                "2001:db8::/32",         # 1
                "monitor.example.com",   # 2
                "*.corp.example.com",    # 3
                "10.9.8.0/24",           # 4
                "*.example.com",         # 5
                "::ffff:10.2.0.0/112",   # 6  (= 10.2.0.0/16, written IPv4-mapped)
            ),
            deny=entries(
                "10.0.0.99",             # 0
                "10.9.0.0/16",           # 1
                "bad.corp.example.com",  # 2
                "*.lab.corp.example.com",  # 3
                "10.2.3.0/24",           # 4
            ),
        ),
        relay_networks=net("10.0.0.0/24", "10.0.5.0/24", "10.0.6.0/24", "2001:db8:1::/48"),
        relay_authenticated=True,
        groups=(SCANNERS, PRINTERS, APPS),
        hosted_domains=HOSTED,
        postmaster="postmaster@example.com",
    ),
    # Authenticated submission without relay for authenticated users (closed by default).
    "submission": ListenerPolicy(name="submission", hosted_domains=HOSTED),
    # Equal specificity in allow and deny: deny wins.
    "ties": ListenerPolicy(
        name="ties",
        access=AccessRules(
            default=ACCEPT,
            allow=entries("10.1.0.0/16", "host.example.com", "*.example.net"),
            deny=entries("10.1.0.0/16", "host.example.com", "*.example.net"),
        ),
    ),
})


def client(listener: str, ip: str, name: str | None = None, user: str | None = None,
           groups: tuple[str, ...] = ()) -> ClientFacts:
    return ClientFacts(listener=listener, ip=ip_address(ip), verified_name=name, user=user,
                       directory_groups=frozenset(groups))


# ------------------------------------------------------------------------------ connect

CONNECT = [
    # id, listener, ip, verified name, action, rule
    ("inbound-anyone", "inbound", "203.0.113.1", None, ACCEPT, "listeners.inbound.access.default"),
    ("inbound-spam-net", "inbound", "198.51.100.7", None, REJECT, "listeners.inbound.access.deny[0]"),
    ("inbound-spam-mapped", "inbound", "::ffff:198.51.100.7", None, REJECT, "listeners.inbound.access.deny[0]"),
    ("inbound-dialup-name", "inbound", "203.0.113.1", "host.dialup.example.net", REJECT, "listeners.inbound.access.deny[1]"),
    ("inbound-dialup-apex", "inbound", "203.0.113.1", "dialup.example.net", ACCEPT, "listeners.inbound.access.default"),
    ("internal", "outbound", "10.0.0.1", None, ACCEPT, "listeners.outbound.access.allow[0]"),
    ("internal-mapped", "outbound", "::ffff:10.0.0.1", None, ACCEPT, "listeners.outbound.access.allow[0]"),
    ("single-host-deny", "outbound", "10.0.0.99", None, REJECT, "listeners.outbound.access.deny[0]"),
    ("single-host-deny-mapped", "outbound", "::ffff:10.0.0.99", None, REJECT, "listeners.outbound.access.deny[0]"),
    ("longer-prefix-deny", "outbound", "10.9.1.1", None, REJECT, "listeners.outbound.access.deny[1]"),
    ("longer-prefix-allow", "outbound", "10.9.8.1", None, ACCEPT, "listeners.outbound.access.allow[4]"),
    ("v4-deny-beats-mapped-v6-allow", "outbound", "10.2.3.4", None, REJECT, "listeners.outbound.access.deny[4]"),
    ("mapped-v6-allow-matches-v4", "outbound", "10.2.4.4", None, ACCEPT, "listeners.outbound.access.allow[6]"),
    ("outside", "outbound", "192.0.2.1", None, REJECT, "listeners.outbound.access.default"),
    ("v6-allowed", "outbound", "2001:db8::1", None, ACCEPT, "listeners.outbound.access.allow[1]"),
    ("v6-outside", "outbound", "2001:db9::1", None, REJECT, "listeners.outbound.access.default"),
    ("verified-host", "outbound", "192.0.2.1", "monitor.example.com", ACCEPT, "listeners.outbound.access.allow[2]"),
    ("verified-host-case-dot", "outbound", "192.0.2.1", "MONITOR.Example.COM.", ACCEPT, "listeners.outbound.access.allow[2]"),
    # The client's PTR says monitor.example.com but the forward lookup did not confirm it:
    # the server passes verified_name=None and the name is worth nothing.
    ("unverified-claims-trusted", "outbound", "192.0.2.1", None, REJECT, "listeners.outbound.access.default"),
    ("wildcard-host", "outbound", "192.0.2.1", "pc7.corp.example.com", ACCEPT, "listeners.outbound.access.allow[3]"),
    ("exact-beats-wildcard", "outbound", "192.0.2.1", "bad.corp.example.com", REJECT, "listeners.outbound.access.deny[2]"),
    ("longer-wildcard-wins", "outbound", "192.0.2.1", "pc.lab.corp.example.com", REJECT, "listeners.outbound.access.deny[3]"),
    ("wildcard-not-apex", "outbound", "192.0.2.1", "corp.example.com", ACCEPT, "listeners.outbound.access.allow[5]"),
    ("wildcard-not-apex-2", "outbound", "192.0.2.1", "example.com", REJECT, "listeners.outbound.access.default"),
    ("wildcard-not-badexample", "outbound", "192.0.2.1", "badexample.com", REJECT, "listeners.outbound.access.default"),
    ("wildcard-not-suffix-trick", "outbound", "192.0.2.1", "example.com.evil.com", REJECT, "listeners.outbound.access.default"),
    ("ip-deny-beats-host-allow", "outbound", "10.0.0.99", "monitor.example.com", REJECT, "listeners.outbound.access.deny[0]"),
    ("ip-allow-beats-host-deny", "outbound", "10.0.0.1", "bad.corp.example.com", ACCEPT, "listeners.outbound.access.allow[0]"),
    ("tie-ip-deny-wins", "ties", "10.1.2.3", None, REJECT, "listeners.ties.access.deny[0]"),
    ("tie-host-deny-wins", "ties", "192.0.2.1", "host.example.com", REJECT, "listeners.ties.access.deny[1]"),
    ("tie-wildcard-deny-wins", "ties", "192.0.2.1", "a.example.net", REJECT, "listeners.ties.access.deny[2]"),
    ("ties-no-match", "ties", "192.0.2.1", None, ACCEPT, "listeners.ties.access.default"),
]


@pytest.mark.parametrize(
    ("listener", "ip", "name", "action", "rule"),
    [row[1:] for row in CONNECT],
    ids=[row[0] for row in CONNECT],
)
def test_connect(listener, ip, name, action, rule):
    decision = POLICY.check_connect(client(listener, ip, name))
    assert (decision.action, decision.rule) == (action, rule)
    if action is REJECT:
        # Sent instead of the 220 greeting (RFC 5321 3.1).
        assert (decision.reply.code, decision.reply.enhanced) == (554, "5.7.1")
        assert decision.reply.lines == ("Access denied",)


# ------------------------------------------------------------------------------ MAIL FROM

SENDER = [
    # id, client facts, sender, action, rule
    ("scanner-company-address", client("outbound", "10.0.5.7"), "scan@example.com", ACCEPT, "default"),
    ("scanner-null-sender", client("outbound", "10.0.5.7"), None, ACCEPT, "default"),
    ("scanner-exact-address", client("outbound", "10.0.5.7"), "noreply@example.org", ACCEPT, "default"),
    ("scanner-exact-address-case", client("outbound", "10.0.5.7"), "NoReply@example.org", ACCEPT, "default"),
    ("scanner-other-at-exact-domain", client("outbound", "10.0.5.7"), "other@example.org", REJECT, "groups.scanners.senders"),
    ("scanner-subdomain-not-listed", client("outbound", "10.0.5.7"), "scan@sales.example.com", REJECT, "groups.scanners.senders"),
    ("scanner-foreign", client("outbound", "10.0.5.7"), "someone@gmail.com", REJECT, "groups.scanners.senders"),
    ("scanner-suffix-trick", client("outbound", "10.0.5.7"), "x@example.com.evil.com", REJECT, "groups.scanners.senders"),
    ("scanner-by-mapped-ip", client("outbound", "::ffff:10.0.5.7"), "someone@gmail.com", REJECT, "groups.scanners.senders"),
    ("scanner-by-verified-name", client("outbound", "10.0.0.7", "mfp3.scan.example.com"), "someone@gmail.com", REJECT, "groups.scanners.senders"),
    ("scanner-by-user-any-case", client("outbound", "10.0.0.7", user="SCANNER"), "someone@gmail.com", REJECT, "groups.scanners.senders"),
    ("scanner-by-directory-group", client("outbound", "192.0.2.1", user="mfp", groups=("scan devices",)), "someone@gmail.com", REJECT, "groups.scanners.senders"),
    # Without verification the name does not put the client in the group; it then lands
    # in "apps" by network (no sender restriction).
    ("unverified-name-not-member", client("outbound", "10.0.0.7", None), "someone@gmail.com", ACCEPT, "default"),
    ("no-group", client("outbound", "192.0.2.1"), "someone@gmail.com", ACCEPT, "default"),
    ("group-without-senders", client("outbound", "10.0.6.1"), "someone@gmail.com", ACCEPT, "default"),
    ("inbound-no-groups", client("inbound", "10.0.5.7"), "someone@gmail.com", ACCEPT, "default"),
]


@pytest.mark.parametrize(
    ("facts", "sender", "action", "rule"), [row[1:] for row in SENDER], ids=[row[0] for row in SENDER]
)
def test_sender(facts, sender, action, rule):
    decision = POLICY.check_sender(facts, addr(sender))
    assert (decision.action, decision.rule) == (action, rule)
    expected = (250, "2.1.0") if action is ACCEPT else (550, "5.7.1")
    assert (decision.reply.code, decision.reply.enhanced) == expected


# ------------------------------------------------------------------------------ RCPT TO
# The open-relay battery: every known way of sneaking a foreign recipient through a
# relay, against the internet-facing listener (must only take hosted domains) and the
# internal one.

INTERNET = client("inbound", "203.0.113.1")
APP = client("outbound", "10.0.0.7")
SCANNER = client("outbound", "10.0.5.7")

RECIPIENT = [
    # id, client facts, recipient (Address), action, code, enhanced, rule
    ("hosted", INTERNET, addr("user@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("foreign", INTERNET, addr("user@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("postmaster-bare", INTERNET, addr("postmaster"), ACCEPT, 250, "2.1.5", "postmaster"),
    ("postmaster-foreign", INTERNET, addr("postmaster@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("postmaster-hosted", INTERNET, addr("postmaster@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    # Routing in the local part: refused for everyone, hosted domain or not.
    ("percent-hack", INTERNET, addr("user%gmail.com@example.com"), REJECT, 550, "5.7.1", "address.routing"),
    ("percent-hack-double", INTERNET, addr("user%gmail.com%example.com@example.com"), REJECT, 550, "5.7.1", "address.routing"),
    ("bang-path", INTERNET, addr("gmail.com!user@example.com"), REJECT, 550, "5.7.1", "address.routing"),
    ("quoted-at", INTERNET, addr("user@gmail.com@example.com", quoted=True), REJECT, 550, "5.7.1", "address.routing"),
    ("percent-hack-from-trusted", APP, addr("user%gmail.com@example.com"), REJECT, 550, "5.7.1", "address.routing"),
    ("bang-path-foreign-from-trusted", APP, addr("a!b@gmail.com"), REJECT, 550, "5.7.1", "address.routing"),
    # Source routes: the parser strips them; only the final mailbox counts.
    ("source-route-to-foreign", INTERNET, addr("user@gmail.com", route=("example.com",)), REJECT, 550, "5.7.1", "relay.denied"),
    ("source-route-via-foreign", INTERNET, addr("user@example.com", route=("evil.com",)), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    # "<user@EXAMPLE.COM.>" arrives normalised...
    ("trailing-dot-normalised", INTERNET, addr("user@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    # ...and the policy does not depend on that for its own safety.
    ("uppercase-trailing-dot-raw", INTERNET, addr("user@EXAMPLE.COM."), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("uppercase-foreign-raw", INTERNET, addr("user@GMAIL.COM"), REJECT, 550, "5.7.1", "relay.denied"),
    ("subdomain-not-listed", INTERNET, addr("user@sales.example.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("suffix-trick", INTERNET, addr("user@example.com.evil.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("lookalike", INTERNET, addr("user@badexample.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("wildcard-below", INTERNET, addr("user@a.example.org"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("wildcard-deep", INTERNET, addr("user@a.b.example.org"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("wildcard-not-apex", INTERNET, addr("user@example.org"), REJECT, 550, "5.7.1", "relay.denied"),
    ("wildcard-not-lookalike", INTERNET, addr("user@badexample.org"), REJECT, 550, "5.7.1", "relay.denied"),
    ("wildcard-suffix-trick", INTERNET, addr("user@a.example.org.evil.com"), REJECT, 550, "5.7.1", "relay.denied"),
    # Address literals are hosted only when listed literally.
    ("literal-not-hosted", INTERNET, addr("user@[10.0.0.5]"), REJECT, 550, "5.7.1", "relay.denied"),
    ("literal-hosted", INTERNET, addr("user@[192.0.2.25]"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("literal-v6-not-hosted", INTERNET, addr("user@[ipv6:2001:db8::25]"), REJECT, 550, "5.7.1", "relay.denied"),
    ("literal-mapped-is-not-v4-literal", INTERNET, addr("user@[ipv6:::ffff:192.0.2.25]"), REJECT, 550, "5.7.1", "relay.denied"),
    # Relay networks.
    ("relay-network", APP, addr("user@gmail.com"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.networks[0]"),
    ("relay-network-mapped-v6", client("outbound", "::ffff:10.0.0.7"), addr("user@gmail.com"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.networks[0]"),
    ("relay-network-v6", client("outbound", "2001:db8:1::7"), addr("user@gmail.com"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.networks[3]"),
    ("relay-network-literal", APP, addr("user@[198.51.100.1]"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.networks[0]"),
    ("not-relay-network", client("outbound", "10.0.7.1"), addr("user@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("hosted-beats-relay-network", APP, addr("user@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    # A trusted-looking name that was not verified grants nothing.
    ("unverified-name", client("outbound", "192.0.2.1", None), addr("user@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    # Authentication.
    ("authenticated-relay", client("outbound", "192.0.2.1", user="alice"), addr("user@gmail.com"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.authenticated"),
    ("authenticated-without-relay-authenticated", client("submission", "192.0.2.1", user="alice"), addr("user@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("authenticated-hosted", client("submission", "192.0.2.1", user="alice"), addr("user@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("localhost-not-special", client("submission", "127.0.0.1"), addr("user@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    # The scanner scenario: own domains fine, the rest quarantined.
    ("scanner-hosted", SCANNER, addr("boss@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    ("scanner-subdomain", SCANNER, addr("boss@sales.example.com"), ACCEPT, 250, "2.1.5", "listeners.outbound.relay.networks[1]"),
    ("scanner-foreign-badmail", SCANNER, addr("me@gmail.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-suffix-trick-badmail", SCANNER, addr("me@example.com.evil.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-lookalike-badmail", SCANNER, addr("me@badexample.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-literal-badmail", SCANNER, addr("me@[10.0.0.5]"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-routing-still-rejected", SCANNER, addr("me%gmail.com@example.com"), REJECT, 550, "5.7.1", "address.routing"),
    ("scanner-postmaster", SCANNER, addr("postmaster"), ACCEPT, 250, "2.1.5", "postmaster"),
    ("scanner-by-name-badmail", client("outbound", "10.0.0.7", "mfp3.scan.example.com"), addr("me@gmail.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-by-user-badmail", client("outbound", "192.0.2.1", user="Scanner"), addr("me@gmail.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("scanner-by-directory-badmail", client("outbound", "192.0.2.1", user="mfp", groups=("SCAN DEVICES",)), addr("me@gmail.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    # Group order: 10.0.5.200 is in scanners and printers; scanners comes first.
    ("first-group-wins", client("outbound", "10.0.5.200"), addr("me@gmail.com"), BADMAIL, 250, "2.1.5", "groups.scanners.recipient_domains"),
    ("printer-reject", client("outbound", "10.0.6.1"), addr("me@gmail.com"), REJECT, 550, "5.7.1", "groups.printers.recipient_domains"),
    ("printer-no-wildcard", client("outbound", "10.0.6.1"), addr("me@sales.example.com"), REJECT, 550, "5.7.1", "groups.printers.recipient_domains"),
    ("printer-hosted", client("outbound", "10.0.6.1"), addr("me@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
    # Relay permission comes first: a group restriction never opens anything.
    ("scanner-not-relay-network", client("outbound", "192.0.2.1", "mfp3.scan.example.com"), addr("me@sales.example.com"), REJECT, 550, "5.7.1", "relay.denied"),
    ("scanner-not-relay-network-foreign", client("outbound", "192.0.2.1", "mfp3.scan.example.com"), addr("me@gmail.com"), REJECT, 550, "5.7.1", "relay.denied"),
    # Groups are per listener: inbound lists none.
    ("inbound-ignores-groups", client("inbound", "10.0.5.7"), addr("me@example.com"), ACCEPT, 250, "2.1.5", "relay.hosted_domains"),
]


@pytest.mark.parametrize(
    ("facts", "recipient", "action", "code", "enhanced", "rule"),
    [row[1:] for row in RECIPIENT],
    ids=[row[0] for row in RECIPIENT],
)
def test_recipient(facts, recipient, action, code, enhanced, rule):
    decision = POLICY.check_recipient(facts, addr("someone@example.com"), recipient)
    assert (decision.action, decision.reply.code, decision.reply.enhanced, decision.rule) == (
        action, code, enhanced, rule,
    )
    assert decision.detail


REPLY_TEXT = [
    ("relay", INTERNET, addr("user@gmail.com"), "Unable to relay"),
    ("routing", INTERNET, addr("a%b@example.com"), "Routing in the local part is not allowed"),
    ("group", client("outbound", "10.0.6.1"), addr("me@gmail.com"), "Recipient domain not allowed for this sender"),
    ("badmail-looks-ok", SCANNER, addr("me@gmail.com"), "Ok"),
]


@pytest.mark.parametrize(("facts", "recipient", "text"), [r[1:] for r in REPLY_TEXT], ids=[r[0] for r in REPLY_TEXT])
def test_recipient_reply_text(facts, recipient, text):
    assert POLICY.check_recipient(facts, None, recipient).reply.lines == (text,)


def test_postmaster_detail_names_the_mailbox():
    decision = POLICY.check_recipient(INTERNET, None, addr("postmaster"))
    assert "postmaster@example.com" in decision.detail


def test_unknown_listener_is_a_programming_error():
    with pytest.raises(KeyError, match="nowhere"):
        POLICY.check_connect(client("nowhere", "127.0.0.1"))


# ------------------------------------------------------------------------------ explain

EXPLAIN = [
    (
        "scanner-badmail",
        SCANNER, "scan@example.com", "me@gmail.com",
        [
            "connect: accept (listeners.outbound.access.allow[0]): 10.0.5.7 (no verified name) matches allow entry 10.0.0.0/8",
            "sender: accept 250 2.1.0 (default): <scan@example.com> matches groups.scanners.senders[0] example.com",
            "recipient: badmail 250 2.1.5 (groups.scanners.recipient_domains): gmail.com is not in example.com, *.example.com",
        ],
    ),
    (
        "connect-refused-stops",
        client("outbound", "192.0.2.1"), "a@example.com", "b@gmail.com",
        [
            "connect: reject 554 5.7.1 (listeners.outbound.access.default): no access entry matches 192.0.2.1 (no verified name); default is deny",
            "sender: not reached",
            "recipient: not reached",
        ],
    ),
    (
        "sender-refused-stops",
        SCANNER, "me@gmail.com", "b@example.com",
        [
            "connect: accept (listeners.outbound.access.allow[0]): 10.0.5.7 (no verified name) matches allow entry 10.0.0.0/8",
            "sender: reject 550 5.7.1 (groups.scanners.senders): <me@gmail.com> is not in example.com, noreply@example.org, <> (client in group scanners by networks[0] 10.0.5.0/24)",
            "recipient: not reached",
        ],
    ),
    (
        "inbound-relay-denied",
        INTERNET, None, "b@gmail.com",
        [
            "connect: accept (listeners.inbound.access.default): no access entry matches 203.0.113.1 (no verified name); default is allow",
            "sender: accept 250 2.1.0 (default): no group restricts senders",
            "recipient: reject 550 5.7.1 (relay.denied): gmail.com is not hosted and 203.0.113.1 (no verified name) may not relay",
        ],
    ),
]


@pytest.mark.parametrize(
    ("facts", "sender", "recipient", "lines"), [r[1:] for r in EXPLAIN], ids=[r[0] for r in EXPLAIN]
)
def test_explain(facts, sender, recipient, lines):
    explanation = POLICY.explain(facts, addr(sender), addr(recipient))
    assert explanation.render().splitlines() == lines


def test_explain_keeps_decisions():
    explanation = POLICY.explain(client("outbound", "192.0.2.1"), None, addr("b@gmail.com"))
    assert explanation.connect.action is REJECT
    assert explanation.sender is None and explanation.recipient is None
