"""The matching primitives, as tables, plus a few properties."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaywarden.policy import match
from relaywarden.smtp.address import Address


def addr(local: str, domain: str) -> Address:
    return Address(local=local, domain=domain, literal=domain.startswith("["), route=(), quoted=False)


NETWORK = [
    # network, client ip, matches
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("10.0.0.0/8", "::ffff:10.1.2.3", True),       # IPv4-mapped client, IPv4 entry
    ("10.0.0.0/8", "::ffff:11.0.0.1", False),
    ("10.0.0.0/8", "::10.1.2.3", False),            # IPv4-compatible (deprecated) is not mapped
    ("::ffff:10.0.0.0/104", "10.1.2.3", True),      # IPv4 client, IPv4-mapped entry
    ("::ffff:0:0/96", "192.0.2.1", True),
    ("2001:db8::/32", "2001:db8:ffff::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("::/0", "10.0.0.1", True),                     # a v4 client is also ::ffff:a.b.c.d
    ("0.0.0.0/0", "2001:db8::1", False),
    ("10.1.2.3/32", "10.1.2.3", True),
    ("::1/128", "::1", True),
    ("127.0.0.0/8", "::1", False),
]


@pytest.mark.parametrize(("network", "ip", "expected"), NETWORK)
def test_network_contains(network, ip, expected):
    assert match.network_contains(ip_network(network), ip_address(ip)) is expected


HOSTNAME = [
    # pattern, verified name, matches
    ("host.example.com", "host.example.com", True),
    ("host.example.com", "HOST.Example.Com", True),
    ("host.example.com", "host.example.com.", True),
    ("host.example.com", "other.example.com", False),
    ("host.example.com", "host.example.com.evil.net", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "A.EXAMPLE.COM.", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "example.com.evil.com", False),
    ("*.example.com", None, False),
    ("host.example.com", None, False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), HOSTNAME)
def test_hostname_matches(pattern, name, expected):
    assert match.hostname_matches(pattern, name) is expected


DOMAIN = [
    # pattern, recipient domain (as the parser gives it), matches
    ("example.com", "example.com", True),
    ("example.com", "sales.example.com", False),
    ("example.com", "badexample.com", False),
    ("*.example.com", "sales.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "example.com.evil.com", False),
    ("*", "anything.example", True),
    ("*", "[10.0.0.5]", True),
    ("[10.0.0.5]", "[10.0.0.5]", True),
    ("[10.0.0.5]", "[10.0.0.6]", False),
    ("[ipv6:2001:db8::1]", "[ipv6:2001:db8:0::1]", True),   # same address, other spelling
    ("[ipv6:2001:db8::1]", "[ipv6:2001:db8::2]", False),
    ("*.example.com", "[10.0.0.5]", False),
    ("example.com", "[10.0.0.5]", False),
    ("[10.0.0.5]", "10.0.0.5", False),
]


@pytest.mark.parametrize(("pattern", "domain", "expected"), DOMAIN)
def test_domain_matches(pattern, domain, expected):
    assert match.domain_matches(pattern, domain) is expected


SENDER = [
    # pattern, sender ("" = null sender), matches
    ("<>", None, True),
    ("<>", addr("a", "example.com"), False),
    ("example.com", None, False),
    ("example.com", addr("a", "example.com"), True),
    ("example.com", addr("a", "sales.example.com"), False),
    ("*.example.com", addr("a", "sales.example.com"), True),
    ("*.example.com", addr("a", "example.com"), False),
    ("noreply@example.org", addr("noreply", "example.org"), True),
    ("noreply@example.org", addr("NoReply", "example.org"), True),   # documented: case-insensitive
    ("noreply@example.org", addr("noreply", "sub.example.org"), False),
    ("noreply@example.org", addr("noreply2", "example.org"), False),
]


@pytest.mark.parametrize(("pattern", "sender", "expected"), SENDER)
def test_sender_matches(pattern, sender, expected):
    assert match.sender_matches(pattern, sender) is expected


SPECIFICITY = [
    # more specific, less specific
    ("10.0.0.1", "10.0.0.0/24"),
    ("10.0.0.0/24", "10.0.0.0/8"),
    ("10.0.0.0/8", "::ffff:0:0/96"),          # /8 of IPv4 = /104 of the mapped space
    ("::ffff:10.0.0.0/112", "10.0.0.0/8"),    # /112 mapped is a /16 of IPv4
    ("0.0.0.0/0", "host.example.com"),        # any IP entry beats any name
    ("host.example.com", "*.a.b.example.com"),
    ("*.a.example.com", "*.example.com"),
]


@pytest.mark.parametrize(("stronger", "weaker"), SPECIFICITY)
def test_specificity(stronger, weaker):
    assert match.specificity(match.parse_access_entry(stronger)) > match.specificity(
        match.parse_access_entry(weaker)
    )


PARSE_OK = [
    (match.parse_network, "10.0.0.0/8", IPv4Network("10.0.0.0/8")),
    (match.parse_network, " 10.1.2.3 ", IPv4Network("10.1.2.3/32")),
    (match.parse_hostname, "Host.Example.COM.", "host.example.com"),
    (match.parse_hostname, "*.Example.com", "*.example.com"),
    (match.parse_hostname, "scan_3f.corp.example.com", "scan_3f.corp.example.com"),
    (match.parse_hostname, "bücher.example", "xn--bcher-kva.example"),
    (match.parse_domain_pattern, "*", "*"),
    (match.parse_domain_pattern, "[10.0.0.5]", "[10.0.0.5]"),
    (match.parse_domain_pattern, "[IPv6:2001:DB8:0::1]", "[ipv6:2001:db8::1]"),
    (match.parse_sender_pattern, "<>", "<>"),
    (match.parse_sender_pattern, "NoReply@Example.ORG", "NoReply@example.org"),
    (match.parse_sender_pattern, "*.example.com", "*.example.com"),
    (match.parse_access_entry, "10.0.0.0/8", match.NetworkEntry(IPv4Network("10.0.0.0/8"))),
    (match.parse_access_entry, "2001:db8::/32", match.NetworkEntry(ip_network("2001:db8::/32"))),
    (match.parse_access_entry, "*.example.com", match.HostnameEntry("*.example.com")),
]


@pytest.mark.parametrize(("parse", "text", "expected"), PARSE_OK)
def test_parse_ok(parse, text, expected):
    assert parse(text) == expected


PARSE_BAD = [
    (match.parse_network, "10.0.0.1/8", "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    (match.parse_network, "10.0.0.300", "'10.0.0.300' is not an IP address or network"),
    (match.parse_network, "10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    (match.parse_hostname, "exa mple.com", "'exa mple.com' is not a valid host or domain name"),
    (match.parse_hostname, "-bad.example.com", "'-bad.example.com' is not a valid host or domain name"),
    (match.parse_hostname, "a..example.com", "'a..example.com' is not a valid host or domain name"),
    (match.parse_hostname, "a.*.example.com", "'a.*.example.com': a wildcard is only allowed as a whole leading label, '*.example.com'"),
    (match.parse_hostname, "*example.com", "'*example.com': a wildcard is only allowed as a whole leading label, '*.example.com'"),
    (match.parse_domain_pattern, "[10.0.0.300]", "'[10.0.0.300]' is not a valid address literal"),
    (match.parse_sender_pattern, "*", "'*' is not a sender pattern (leave out `senders` to allow any sender)"),
    (match.parse_sender_pattern, "a b@example.com", "'a b@example.com' is not a valid mail address"),
    (match.parse_sender_pattern, "a@*.example.com", "'*.example.com': a wildcard is not allowed here"),
    (match.parse_access_entry, "10.0.0.1/24", "'10.0.0.1/24' has host bits set (the network is 10.0.0.0/24)"),
    (match.parse_access_entry, "fe80::1/10", "'fe80::1/10' has host bits set (the network is fe80::/10)"),
]


@pytest.mark.parametrize(("parse", "text", "message"), PARSE_BAD)
def test_parse_bad(parse, text, message):
    with pytest.raises(ValueError) as info:
        parse(text)
    assert str(info.value) == message


# ---------------------------------------------------------------------------- properties

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)


@given(suffix=names, name=names)
def test_wildcard_means_strictly_below(suffix, name):
    expected = name.endswith("." + suffix)
    assert match.domain_matches("*." + suffix, name) is expected
    assert match.hostname_matches("*." + suffix, name) is expected
    assert match.domain_matches("*." + suffix, suffix) is False


@given(ip=st.integers(0, 2**32 - 1), prefix=st.integers(0, 32), other=st.integers(0, 2**32 - 1))
def test_mapped_client_matches_like_ipv4(ip, prefix, other):
    network = ip_network((other, prefix), strict=False)
    v4 = IPv4Address(ip)
    mapped = IPv6Address(f"::ffff:{v4}")
    assert match.network_contains(network, v4) is (v4 in network)
    assert match.network_contains(network, mapped) is (v4 in network)
