"""The resolver's cache: answers outlive the server for their TTL, failures never do."""

from __future__ import annotations

import time

from dnsserver import DnsServer

from relaywarden.resolver import MxHost, MxStatus, RdnsStatus, Resolver
from relaywarden.resolver.resolver import NEGATIVE_TTL_MAX, _Kind, _Lookup, TtlCache

from .resolver_helpers import TIMEOUT, run

RECORDS = {
    "cached.test": {"MX": [(10, "mx1.cached.test"), (10, "mx2.cached.test")]},
    "mx1.cached.test": {"A": "127.0.0.81"},
    "mx2.cached.test": {"A": "127.0.0.82", "AAAA": "::1"},
    "implicit.cached.test": {"A": "127.0.0.83"},
    "nullmx.cached.test": {"MX": [(0, ".")]},
    "short.cached.test": {"A": "127.0.0.84", "ttl": 1},
    "127.0.0.81": {"PTR": "mx1.cached.test"},
    "broken.cached.test": "servfail",
}


def test_answers_are_served_from_cache_after_the_server_stops() -> None:
    with DnsServer(RECORDS) as server:
        resolver = Resolver(server.settings(timeout=TIMEOUT))

        async def ask() -> tuple:
            return (await resolver.mx("cached.test"), await resolver.mx("implicit.cached.test"),
                    await resolver.mx("nullmx.cached.test"), await resolver.addresses("mx2.cached.test"),
                    await resolver.reverse("127.0.0.81"), await resolver.mx("nosuch.cached.test"))

        first = run(ask())
        assert first[0].status is MxStatus.HOSTS
        server.stop()
        started = time.monotonic()
        again = run(ask())
        assert time.monotonic() - started < TIMEOUT / 2  # no query waited for
        mx, implicit, null, host, rdns, nx = again
        assert sorted(mx.hosts, key=lambda h: h.name) == sorted(first[0].hosts, key=lambda h: h.name)
        assert implicit.hosts == (MxHost(0, "implicit.cached.test", ("127.0.0.83",)),)
        assert null.status is MxStatus.NULL_MX
        assert host.hosts == (MxHost(0, "mx2.cached.test", ("127.0.0.82", "::1")),)
        assert (rdns.status, rdns.name) == (RdnsStatus.VERIFIED, "mx1.cached.test")
        assert nx.status is MxStatus.NO_DOMAIN  # negative answers are cached too
        # and the server really is gone: an unasked name fails
        assert run(resolver.mx("other.cached.test")).status is MxStatus.TEMP_FAIL


def test_equal_preference_order_is_still_random_from_cache() -> None:
    with DnsServer(RECORDS) as server:
        resolver = Resolver(server.settings(timeout=TIMEOUT))
        run(resolver.mx("cached.test"))
        server.stop()

        async def firsts() -> set[str]:
            return {(await resolver.mx("cached.test")).hosts[0].name for _ in range(60)}

        assert run(firsts()) == {"mx1.cached.test", "mx2.cached.test"}


def test_entries_expire_with_their_ttl() -> None:
    with DnsServer(RECORDS, negative_ttl=1) as server:
        resolver = Resolver(server.settings(timeout=TIMEOUT))
        assert run(resolver.addresses("short.cached.test")).status is MxStatus.HOSTS
        assert run(resolver.mx("nosuch.cached.test")).status is MxStatus.NO_DOMAIN
        server.stop()
        time.sleep(1.3)         # past negative_ttl = 1 and the positive TTL: the timers under test
        assert run(resolver.addresses("short.cached.test")).status is MxStatus.TEMP_FAIL
        assert run(resolver.mx("nosuch.cached.test")).status is MxStatus.TEMP_FAIL


def test_temporary_failures_are_not_cached() -> None:
    server = DnsServer(RECORDS)
    server.start()
    try:
        resolver = Resolver(server.settings(timeout=TIMEOUT))
        assert run(resolver.mx("broken.cached.test")).status is MxStatus.TEMP_FAIL
        port = server.port
        server.stop()
        assert run(resolver.mx("cached.test")).status is MxStatus.TEMP_FAIL  # server down
        server.start()  # the same port again
        assert server.port == port
        assert run(resolver.mx("cached.test")).status is MxStatus.HOSTS
    finally:
        server.stop()


def test_ttl_cache_bounds() -> None:
    ok = _Lookup(_Kind.OK, ("127.0.0.1",))
    cache = TtlCache(3)
    for key in "abcd":
        cache.put(key, ok, 60)
    assert len(cache) == 3 and cache.get("a") is None  # the least recently used went
    assert cache.get("b") is ok
    cache.put("e", ok, 60)  # "b" was just used: "c" goes
    assert cache.get("c") is None and cache.get("b") is ok
    cache.put("zero", ok, 0)  # TTL 0: never stored
    assert cache.get("zero") is None
    cache.put("brief", ok, 0.05)
    time.sleep(0.1)         # past its TTL (the timer under test)
    assert cache.get("brief") is None
    assert NEGATIVE_TTL_MAX <= 300  # negative answers live "a short time"
