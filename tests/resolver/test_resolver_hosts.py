"""Resolver.addresses (a host next hop) and Resolver.reverse (FCrDNS) on a real server."""

from __future__ import annotations

import time

import pytest

from relaywarden.resolver import (
    DnsSettings,
    MxHost,
    MxResult,
    MxStatus,
    RdnsResult,
    RdnsStatus,
    Resolver,
)

from .resolver_helpers import TIMEOUT, closed_port, run

# -- addresses ---------------------------------------------------------------------------


def test_host_addresses_ipv4_first(resolver: Resolver) -> None:
    result = run(resolver.addresses("smarthost.test"))
    host = MxHost(0, "smarthost.test", ("127.0.0.50", "2001:db8::50"))
    assert result == MxResult(MxStatus.HOSTS, (host,), "")


def test_host_through_cname(resolver: Resolver) -> None:
    result = run(resolver.addresses("Alias.Test"))
    assert result.hosts == (MxHost(0, "alias.test", ("127.0.0.30", "2001:db8::30")),)


def test_large_answer_comes_over_tcp(resolver: Resolver) -> None:
    # 120 A records do not fit a 1232-byte UDP answer: truncated, then asked over TCP.
    result = run(resolver.addresses("big.test"))
    assert result.status is MxStatus.HOSTS
    assert sorted(result.hosts[0].addresses) == sorted(f"127.0.1.{i}" for i in range(1, 121))


def test_host_without_address_or_name(resolver: Resolver) -> None:
    nodata = run(resolver.addresses("noaddr.test"))
    assert nodata == MxResult(MxStatus.NO_DOMAIN, (), "noaddr.test: no A or AAAA records")
    nx = run(resolver.addresses("nosuch.example.test"))
    assert nx.status is MxStatus.NO_DOMAIN and "NXDOMAIN" in nx.detail


def test_host_lookup_trouble_is_temporary(resolver: Resolver) -> None:
    assert run(resolver.addresses("mx.broken.test")).status is MxStatus.TEMP_FAIL
    started = time.monotonic()
    slow = run(resolver.addresses("mx.slow.test"))
    assert slow.status is MxStatus.TEMP_FAIL and "timed out" in slow.detail
    assert time.monotonic() - started <= TIMEOUT + 0.3


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.5", "127.0.0.5"), ("::1", "::1"), ("[127.0.0.6]", "127.0.0.6"),
     ("[IPv6:2001:db8::7]", "2001:db8::7"), ("2001:DB8::8", "2001:db8::8")],
)
def test_ip_next_hop_is_itself(host: str, address: str) -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    result = run(resolver.addresses(host))
    literal = MxHost(0, address, (address,))
    assert result == MxResult(MxStatus.HOSTS, (literal,), "address literal: no DNS lookup")


@pytest.mark.parametrize("host", ["", "bad host", "a..b", "[300.1.1.1]"])
def test_invalid_host_is_permanent(host: str) -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    assert run(resolver.addresses(host)).status is MxStatus.NO_DOMAIN


# -- reverse ---------------------------------------------------------------------------------


def test_reverse_verified(resolver: Resolver) -> None:
    result = run(resolver.reverse("127.0.0.60"))
    # the PTR says "Good.RDNS.test": names come back lowercase, without the final dot
    assert result == RdnsResult(RdnsStatus.VERIFIED, "good.rdns.test",
                                "127.0.0.60 -> good.rdns.test -> 127.0.0.60")


def test_reverse_of_ipv4_mapped_ipv6_peer(resolver: Resolver) -> None:
    # what a dual-stack listening socket reports for an IPv4 client
    result = run(resolver.reverse("::ffff:127.0.0.60"))
    assert (result.status, result.name) == (RdnsStatus.VERIFIED, "good.rdns.test")


def test_reverse_unverified_when_forward_does_not_match(resolver: Resolver) -> None:
    result = run(resolver.reverse("127.0.0.61"))
    assert result.status is RdnsStatus.UNVERIFIED
    assert result.name == "liar.rdns.test"
    assert "does not resolve to 127.0.0.61" in result.detail


def test_reverse_any_ptr_name_may_confirm(resolver: Resolver) -> None:
    result = run(resolver.reverse("127.0.0.62"))
    assert (result.status, result.name) == (RdnsStatus.VERIFIED, "second.rdns.test")


def test_reverse_forward_through_cname(resolver: Resolver) -> None:
    result = run(resolver.reverse("127.0.0.68"))
    assert (result.status, result.name) == (RdnsStatus.VERIFIED, "alias.rdns.test")


def test_reverse_ptr_to_missing_name_is_unverified(resolver: Resolver) -> None:
    result = run(resolver.reverse("127.0.0.63"))
    assert (result.status, result.name) == (RdnsStatus.UNVERIFIED, "gone.rdns.test")
    assert "NXDOMAIN" in result.detail


def test_reverse_forward_timeout_is_unverified_within_the_timeout(resolver: Resolver) -> None:
    started = time.monotonic()
    result = run(resolver.reverse("127.0.0.65"))
    assert time.monotonic() - started <= TIMEOUT + 0.3
    assert (result.status, result.name) == (RdnsStatus.UNVERIFIED, "h.slow.test")
    assert "timed out" in result.detail


@pytest.mark.parametrize(
    ("ip", "words"),
    [("127.0.0.200", "NXDOMAIN"), ("127.0.0.64", "no PTR record"),
     ("127.0.0.66", "SERVFAIL"), ("127.0.0.67", "timed out"), ("2001:db8::99", "NXDOMAIN")],
)
def test_reverse_failed(resolver: Resolver, ip: str, words: str) -> None:
    started = time.monotonic()
    result = run(resolver.reverse(ip))
    assert time.monotonic() - started <= TIMEOUT + 0.3
    assert result.status is RdnsStatus.FAILED
    assert result.name is None
    assert words in result.detail, result.detail


def test_reverse_ipv6_verified(resolver: Resolver) -> None:
    result = run(resolver.reverse("2001:DB8:0::70"))
    assert result == RdnsResult(RdnsStatus.VERIFIED, "v6.rdns.test",
                                "2001:db8::70 -> v6.rdns.test -> 2001:db8::70")


def test_reverse_ipv6_needs_an_aaaa_record(resolver: Resolver) -> None:
    result = run(resolver.reverse("2001:db8::71"))
    assert (result.status, result.name) == (RdnsStatus.UNVERIFIED, "v4only.rdns.test")
    assert "no AAAA record" in result.detail


@pytest.mark.parametrize("ip", ["", "not-an-ip", "300.1.1.1", "example.test"])
def test_reverse_of_garbage_fails_without_lookup(ip: str) -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    result = run(resolver.reverse(ip))
    assert result.status is RdnsStatus.FAILED and "not an IP address" in result.detail
