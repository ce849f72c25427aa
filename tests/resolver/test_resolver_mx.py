"""Resolver.mx against a real DNS server: order, null and implicit MX, failures."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import pytest

from relaywarden.resolver import DnsSettings, MxHost, MxResult, MxStatus, Resolver

from .resolver_helpers import TIMEOUT, closed_port, run

A_GROUP = {"mx-a1.example.test", "mx-a2.example.test", "mx-a3.example.test"}


def names(result: MxResult) -> list[str]:
    return [h.name for h in result.hosts]


def test_mx_hosts_in_preference_order_with_addresses(resolver: Resolver) -> None:
    result = run(resolver.mx("example.test"))
    assert result.status is MxStatus.HOSTS
    assert [h.preference for h in result.hosts] == [10, 10, 10, 20, 30]
    assert set(names(result)[:3]) == A_GROUP
    b = result.hosts[3]
    assert (b.preference, b.name) == (20, "mx-b.example.test")
    # IPv4 first, then IPv6; within a family the server's (round-robin) order
    assert set(b.addresses[:2]) == {"127.0.0.21", "127.0.0.22"} and b.addresses[2] == "::1"
    assert result.hosts[4] == MxHost(30, "mx-c.example.test", ("2001:db8::25",))
    assert result.detail == ""


def test_equal_preferences_come_in_random_order(resolver: Resolver) -> None:
    # RFC 5321 5.1: random order among equal preferences. 300 draws of 3 hosts: each
    # comes first ~100 times (sd ~8); 55..145 fails by chance about once in 10^7 runs.
    async def draws() -> list[tuple[str, ...]]:
        return [tuple(names(await resolver.mx("example.test"))) for _ in range(300)]

    orders = run(draws())
    first = Counter(order[0] for order in orders)
    assert set(first) == A_GROUP
    assert all(55 <= n <= 145 for n in first.values()), first
    seen = {order[:3] for order in orders}
    assert seen == set(itertools.permutations(sorted(A_GROUP))), seen  # all 6 orders occur
    assert {order[3:] for order in orders} == {("mx-b.example.test", "mx-c.example.test")}


def test_mx_name_is_case_and_dot_insensitive(resolver: Resolver) -> None:
    result = run(resolver.mx("EXAMPLE.Test."))
    assert result.status is MxStatus.HOSTS
    assert set(names(result)) == A_GROUP | {"mx-b.example.test", "mx-c.example.test"}


def test_duplicate_mx_host_keeps_its_best_preference(resolver: Resolver) -> None:
    result = run(resolver.mx("dupmx.test"))
    assert result.hosts == (MxHost(10, "mx-a1.example.test", ("127.0.0.11",)),)


def test_implicit_mx_is_the_domain_itself(resolver: Resolver) -> None:
    result = run(resolver.mx("implicit.test"))
    assert result.status is MxStatus.HOSTS
    assert result.hosts == (MxHost(0, "implicit.test", ("127.0.0.30", "2001:db8::30")),)
    assert "implicit" in result.detail


def test_implicit_mx_ipv6_only(resolver: Resolver) -> None:
    result = run(resolver.mx("implicit6.test"))
    assert result.hosts == (MxHost(0, "implicit6.test", ("2001:db8::31",)),)


def test_no_mx_and_no_address_is_permanent(resolver: Resolver) -> None:
    result = run(resolver.mx("noaddr.test"))
    assert result == MxResult(MxStatus.NO_DOMAIN, (), "noaddr.test: no MX and no address records")


def test_null_mx(resolver: Resolver) -> None:
    result = run(resolver.mx("nullmx.test"))
    assert result.status is MxStatus.NULL_MX
    assert result.hosts == ()
    assert "RFC 7505" in result.detail


def test_null_mx_beside_real_hosts_is_ignored(resolver: Resolver) -> None:
    result = run(resolver.mx("nullmix.test"))
    assert result.status is MxStatus.HOSTS
    assert result.hosts == (MxHost(10, "mx-a1.example.test", ("127.0.0.11",)),)


def test_nxdomain_is_no_domain(resolver: Resolver) -> None:
    result = run(resolver.mx("nosuch.example.test"))
    assert result.status is MxStatus.NO_DOMAIN
    assert "NXDOMAIN" in result.detail
    assert run(resolver.mx("unknown-tld-zz")).status is MxStatus.NO_DOMAIN


def test_servfail_is_temporary(resolver: Resolver) -> None:
    started = time.monotonic()
    result = run(resolver.mx("broken.test"))
    assert result == MxResult(MxStatus.TEMP_FAIL, (), "MX lookup for broken.test failed: SERVFAIL")
    assert time.monotonic() - started < TIMEOUT / 2  # answered, not waited out
    assert run(resolver.mx("deep.below.broken.test")).status is MxStatus.TEMP_FAIL


def test_timeout_is_temporary_and_bounded(resolver: Resolver) -> None:
    started = time.monotonic()
    result = run(resolver.mx("slow.test"))
    elapsed = time.monotonic() - started
    assert result.status is MxStatus.TEMP_FAIL
    assert "timed out" in result.detail
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + 0.3, elapsed


def test_no_server_answering_is_temporary() -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    started = time.monotonic()
    result = run(resolver.mx("example.test"))
    assert result.status is MxStatus.TEMP_FAIL
    # dnspython's UDP socket is unconnected, so the port's ICMP refusal is not seen:
    # the query runs out its time.
    assert "timed out" in result.detail or "no nameserver answered" in result.detail
    assert time.monotonic() - started <= TIMEOUT + 0.3


def test_unusable_settings_give_statuses_not_exceptions() -> None:
    resolver = Resolver(DnsSettings(nameservers=("not an address",), timeout=TIMEOUT))
    result = run(resolver.mx("example.test"))
    assert result.status is MxStatus.TEMP_FAIL
    assert "no DNS resolver configured" in result.detail
    assert run(resolver.addresses("smarthost.test")).status is MxStatus.TEMP_FAIL


def test_mx_host_without_address_is_skipped(resolver: Resolver) -> None:
    result = run(resolver.mx("partial.test"))
    assert result.status is MxStatus.HOSTS
    assert result.hosts == (MxHost(20, "real.partial.test", ("127.0.0.40",)),)
    assert "ghost.partial.test" in result.detail


def test_all_mx_hosts_without_address_is_temporary(resolver: Resolver) -> None:
    result = run(resolver.mx("allghost.test"))
    assert result.status is MxStatus.TEMP_FAIL
    assert result.hosts == ()
    assert "ghost.partial.test: no A or AAAA records" in result.detail
    assert "nowhere.invalid: host does not exist (NXDOMAIN)" in result.detail


def test_mx_host_that_servfails_is_skipped(resolver: Resolver) -> None:
    result = run(resolver.mx("mxbroken.test"))
    assert result.hosts == (MxHost(20, "mx-a1.example.test", ("127.0.0.11",)),)
    assert "mx.broken.test" in result.detail and "SERVFAIL" in result.detail
    assert run(resolver.mx("mxallbroken.test")).status is MxStatus.TEMP_FAIL


def test_mx_host_that_times_out_is_skipped_within_the_timeout(resolver: Resolver) -> None:
    started = time.monotonic()
    result = run(resolver.mx("mxslowhost.test"))
    assert time.monotonic() - started <= TIMEOUT + 0.3
    assert result.hosts == (MxHost(20, "mx-a2.example.test", ("127.0.0.12",)),)
    assert "mx.slow.test" in result.detail and "timed out" in result.detail


def test_cname_at_the_domain_is_followed(resolver: Resolver) -> None:
    # alias.test -> implicit.test, which has no MX: implicit MX under the name asked for
    result = run(resolver.mx("alias.test"))
    assert result.hosts == (MxHost(0, "alias.test", ("127.0.0.30", "2001:db8::30")),)
    assert run(resolver.mx("mxviacname.test")).status is MxStatus.NULL_MX


def test_cname_at_the_mx_host_is_followed(resolver: Resolver) -> None:
    result = run(resolver.mx("cnamemx.test"))
    assert result.hosts == (MxHost(10, "mxalias.cnamemx.test", ("127.0.0.11",)),)


def test_dangling_cname_is_no_domain(resolver: Resolver) -> None:
    assert run(resolver.mx("dangling.test")).status is MxStatus.NO_DOMAIN


def test_internationalized_domain_is_looked_up_as_its_a_label(resolver: Resolver) -> None:
    result = run(resolver.mx("bücher.test"))
    assert result.hosts == (MxHost(0, "xn--bcher-kva.test", ("127.0.0.51",)),)


@pytest.mark.parametrize(
    ("literal", "address"),
    [("[10.0.0.5]", "10.0.0.5"), ("[IPv6:2001:DB8::1]", "2001:db8::1"),
     ("[ipv6:::1]", "::1"), (" [192.0.2.1] ", "192.0.2.1")],
)
def test_address_literal_needs_no_lookup(literal: str, address: str) -> None:
    # No server at all: a literal must not query anything.
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    result = run(resolver.mx(literal))
    assert result.status is MxStatus.HOSTS
    assert result.hosts == (MxHost(0, address, (address,)),)


@pytest.mark.parametrize(
    "domain",
    ["", " ", ".", "exa mple.test", "a..test", "x" * 64 + ".test", "a@b.test",
     ("a" * 60 + ".") * 5 + "test", "[10.0.0.300]", "[IPv6:10.0.0.5]", "[foo:bar]", "10.0.0.5"],
)
def test_invalid_domains_are_permanent_without_a_lookup(domain: str) -> None:
    resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=closed_port(), timeout=TIMEOUT))
    result = run(resolver.mx(domain))
    assert result.status is MxStatus.NO_DOMAIN, result
    assert result.hosts == ()


def test_concurrent_lookups_agree(resolver: Resolver) -> None:
    async def many() -> list[MxResult]:
        return await asyncio.gather(*(resolver.mx(d) for d in ["implicit.test", "nullmx.test"] * 20))

    results = run(many())
    assert {r.status for r in results[0::2]} == {MxStatus.HOSTS}
    assert {r.status for r in results[1::2]} == {MxStatus.NULL_MX}


def test_a_cancelled_caller_does_not_break_the_others(resolver: Resolver) -> None:
    # Equal queries in flight are shared; the first caller giving up must not cancel
    # the answer the others are waiting for.
    async def scenario() -> list[MxResult]:
        first = asyncio.create_task(resolver.mx("slow.test"))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(resolver.mx("slow.test")) for _ in range(3)]
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.gather(*others)

    started = time.monotonic()
    results = run(scenario())
    assert [r.status for r in results] == [MxStatus.TEMP_FAIL] * 3
    assert time.monotonic() - started <= TIMEOUT + 0.5
