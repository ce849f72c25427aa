"""DNS for the send half: MX hosts, next-hop addresses and forward-confirmed reverse DNS.

Built on dnspython's asyncio resolver. Every outcome is a typed status, never an
exception: DNS trouble is an ordinary event for a relay, and what the caller does with it
(defer, bounce, note in a header) is its own decision.

Rules that come from the RFCs:
- MX hosts are tried in preference order, in random order among equal preferences
  (RFC 5321 5.1).
- No MX records for a domain that exists: the domain itself is the one host, with
  preference 0 (the implicit MX, RFC 5321 5.1).
- A single MX whose exchange is "." means the domain accepts no mail (null MX, RFC 7505 3).
- NXDOMAIN is permanent; SERVFAIL, timeouts and unreachable servers are temporary.

Results are cached per query (name, type) for as long as the answer's TTL allows (capped),
negative answers (NXDOMAIN, NODATA) for a short time; temporary failures never.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

__all__ = [
    "DnsSettings",
    "MxHost",
    "MxResult",
    "MxStatus",
    "RdnsResult",
    "RdnsStatus",
    "Resolver",
]

CACHE_ENTRIES = 10_000
POSITIVE_TTL_MAX = 3600.0  # a shorter life than the TTL is always allowed (RFC 1035 3.2.1)
NEGATIVE_TTL_MAX = 60.0  # "a short time": a newly created domain is seen within a minute
MAX_MX_HOSTS = 30  # a domain listing more is broken or hostile; bound the work
MAX_PTR_NAMES = 10  # forward-confirm at most this many PTR names (RFC 8499 "FCrDNS")
_T = TypeVar("_T")
_GRACE = 0.25  # a safety net only: each phase already stops at the deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()  # empty: the system's /etc/resolv.conf
    port: int = 53
    timeout: float = 5.0  # seconds, for one whole mx()/addresses()/reverse() call


class MxStatus(Enum):
    HOSTS = "hosts"  # hosts holds at least one host with at least one address
    NULL_MX = "null_mx"  # the domain says it accepts no mail (RFC 7505): permanent
    NO_DOMAIN = "no_domain"  # NXDOMAIN, no MX and no address, invalid name: permanent
    TEMP_FAIL = "temp_fail"  # SERVFAIL, timeout, no server answered, no host address: retry


@dataclass(frozen=True, slots=True)
class MxHost:
    preference: int
    name: str  # lowercase, no trailing dot; for an address literal, the address itself
    addresses: tuple[str, ...]  # IPv4 first, then IPv6


@dataclass(frozen=True, slots=True)
class MxResult:
    status: MxStatus
    hosts: tuple[MxHost, ...]
    detail: str  # for the log; "" when there is nothing to say


class RdnsStatus(Enum):
    VERIFIED = "verified"  # a PTR name resolves back to the address
    UNVERIFIED = "unverified"  # a PTR name exists but does not resolve back
    FAILED = "failed"  # no PTR name (none, NXDOMAIN, SERVFAIL, timeout, bad address)


@dataclass(frozen=True, slots=True)
class RdnsResult:
    status: RdnsStatus
    name: str | None  # lowercase, no trailing dot; None when FAILED
    detail: str
    temporary: bool = False   # FAILED by a timeout or SERVFAIL: the answer may come later


# -- one query's outcome, as cached ---------------------------------------------------------

class _Kind(Enum):
    OK = "ok"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    FAIL = "fail"  # temporary: never cached


@dataclass(frozen=True, slots=True)
class _Lookup:
    kind: _Kind
    records: tuple[Any, ...] = ()  # str for A/AAAA/PTR, (preference, exchange) for MX
    detail: str = ""


class TtlCache:
    """A bounded map whose entries expire; least recently used goes first when full."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


# -- input parsing ----------------------------------------------------------------------------

_BAD_NAME_CHARS = frozenset(' \t\r\n\0@\\"()[]<>;,:/')


def _parse_name(text: str) -> dns.name.Name | None:
    text = text.strip()
    if not text or text == "." or any(c in _BAD_NAME_CHARS or ord(c) < 32 for c in text):
        return None
    try:
        # Absolute (root origin): no search list is ever applied to a mail domain.
        name = dns.name.from_text(text)  # non-ASCII goes through IDNA
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None
    return None if name == dns.name.root else name


def _text(name: dns.name.Name) -> str:
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
        if addr.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 peer
            return addr.ipv4_mapped
    return addr


def _address_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """'[10.0.0.5]' / '[IPv6:2001:db8::1]' -> the address; None: not a literal at all.
    Raises ValueError for a malformed literal (RFC 5321 4.1.3)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1].strip()
    tagged = inner[:5].lower() == "ipv6:"
    if tagged:
        inner = inner[5:]
    addr = ipaddress.ip_address(inner)  # ValueError: not an address
    if tagged and not isinstance(addr, ipaddress.IPv6Address):
        raise ValueError("IPv6 tag on an IPv4 address")  # an untagged IPv6 literal is accepted
    return addr


def _literal_result(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> MxResult:
    text = str(addr)
    return MxResult(MxStatus.HOSTS, (MxHost(0, text, (text,)),), "address literal: no DNS lookup")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = exc.kwargs.get("errors") or []
        last = errors[-1][3] if errors and len(errors[-1]) > 3 else None
        if isinstance(last, str):  # an rcode: "SERVFAIL", "REFUSED", ...
            return last
        return f"no nameserver answered ({last})" if last is not None else "no nameserver answered"
    if isinstance(exc, dns.resolver.YXDOMAIN):
        return "YXDOMAIN"
    text = str(exc) or type(exc).__name__
    return text[:300]


class Resolver:
    """MX, address and reverse lookups with a small TTL-bounded cache.

    One instance per process (or per settings): the cache and the coalescing of equal
    queries in flight live here. Safe for any number of concurrent callers on one loop.
    """

    def __init__(self, settings: DnsSettings) -> None:
        self._settings = settings
        self._cache = TtlCache(CACHE_ENTRIES)
        self._inflight: dict[tuple[dns.name.Name, int], asyncio.Future[_Lookup]] = {}
        self._rng = random.Random()
        self._dns: dns.asyncresolver.Resolver | None = None
        self._config_error = ""
        try:
            self._dns = self._make(settings)
        except Exception as e:  # e.g. no /etc/resolv.conf: every lookup is a TEMP_FAIL
            self._config_error = f"no DNS resolver configured: {e}"

    @staticmethod
    def _make(settings: DnsSettings) -> dns.asyncresolver.Resolver:
        if settings.nameservers:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = list(settings.nameservers)
            res.port = settings.port
        else:
            res = dns.asyncresolver.Resolver()  # /etc/resolv.conf
        res.lifetime = settings.timeout
        # Per try; the lifetime bounds the retries.
        res.timeout = min(2.0, settings.timeout)
        res.cache = None  # ours is above, with negative entries and a size bound
        res.retry_servfail = False
        res.use_search_by_default = False
        res.use_edns(0, 0, 1232)  # the DNS flag day 2020 buffer size; TCP on truncation
        return res

    # -- public API

    async def mx(self, domain: str) -> MxResult:
        """The hosts to deliver mail for ``domain`` to, in the order to try them."""
        try:
            literal = _address_literal(domain)
        except ValueError:
            return MxResult(MxStatus.NO_DOMAIN, (), f"invalid address literal {domain.strip()!r}")
        if literal is not None:
            return _literal_result(literal)
        if _ip(domain) is not None:
            return MxResult(MxStatus.NO_DOMAIN, (),
                            f"{domain.strip()} is an address, not a domain; write it as [{domain.strip()}]")
        name = _parse_name(domain)
        if name is None:
            return MxResult(MxStatus.NO_DOMAIN, (), f"invalid domain name {domain.strip()!r}")
        return await self._guarded(self._mx(name), lambda: MxResult(
            MxStatus.TEMP_FAIL, (), f"MX lookup for {_text(name)} timed out"))

    async def addresses(self, name: str) -> MxResult:
        """A host next hop (a smart host): its addresses as one MxHost, or a status."""
        try:
            addr = _address_literal(name) or _ip(name)
        except ValueError:
            return MxResult(MxStatus.NO_DOMAIN, (), f"invalid address literal {name.strip()!r}")
        if addr is not None:
            return _literal_result(addr)
        parsed = _parse_name(name)
        if parsed is None:
            return MxResult(MxStatus.NO_DOMAIN, (), f"invalid host name {name.strip()!r}")
        return await self._guarded(self._addresses(parsed), lambda: MxResult(
            MxStatus.TEMP_FAIL, (), f"address lookup for {_text(parsed)} timed out"))

    async def reverse(self, ip: str) -> RdnsResult:
        """PTR, then forward-confirm (FCrDNS): does a PTR name resolve back to ``ip``?"""
        addr = _ip(ip)
        if addr is None:
            return RdnsResult(RdnsStatus.FAILED, None, f"not an IP address: {ip.strip()!r}")
        return await self._guarded(self._reverse(addr), lambda: RdnsResult(
            RdnsStatus.FAILED, None, f"reverse lookup for {addr} timed out", temporary=True))

    async def dnsbl(self, ip: str, zones: Sequence[str]) -> dict[str, Any]:
        """Ask DNS lists about ``ip`` (RFC 5782): {zone: ZoneAnswer}. All zones at once,
        within dns.timeout; a listed one is asked for its TXT too. Answers are cached per
        their TTL like every other lookup; failures are not cached and never raise."""
        from relaywarden.policy.dnsbl import ZoneAnswer, query_name

        async def ask() -> dict[str, Any]:
            deadline = self._deadline()
            names = {}
            for zone in zones:
                q = query_name(ip, zone)
                if q is not None:
                    names[zone] = dns.name.from_text(q)
            found = await self._lookups([(n, dns.rdatatype.A) for n in names.values()],
                                        deadline)
            listed = [(zone, a) for zone, a in zip(names, found) if a.kind is _Kind.OK]
            txts = await self._lookups([(names[zone], dns.rdatatype.TXT) for zone, _ in listed],
                                       deadline)
            out: dict[str, Any] = {}
            for zone, a in zip(names, found):
                if a.kind is _Kind.FAIL:
                    out[zone] = ZoneAnswer(zone, failed=a.detail)
                else:
                    out[zone] = ZoneAnswer(zone, answers=a.records if a.kind is _Kind.OK else ())
            for (zone, a), txt in zip(listed, txts):
                if txt.kind is _Kind.OK and txt.records:
                    out[zone] = ZoneAnswer(zone, answers=a.records, txt=txt.records[0])
            return out
        return await self._guarded(ask(), lambda: {
            zone: ZoneAnswer(zone, failed=f"timed out after {self._settings.timeout:g} s")
            for zone in zones})

    # -- the lookups

    async def _guarded(self, work: Awaitable[_T], on_timeout: Callable[[], _T]) -> _T:
        # Each query gets the time left until the deadline as its lifetime; this guard
        # only catches what overran it, so one call never takes much more than timeout.
        try:
            async with asyncio.timeout(self._settings.timeout + _GRACE):
                return await work
        except TimeoutError:
            return on_timeout()

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._settings.timeout

    async def _mx(self, name: dns.name.Name) -> MxResult:
        deadline = self._deadline()
        domain = _text(name)
        (mx,) = await self._lookups([(name, dns.rdatatype.MX)], deadline)
        if mx.kind is _Kind.NXDOMAIN:
            return MxResult(MxStatus.NO_DOMAIN, (), f"{domain}: domain does not exist (NXDOMAIN)")
        if mx.kind is _Kind.FAIL:
            return MxResult(MxStatus.TEMP_FAIL, (), f"MX lookup for {domain} failed: {mx.detail}")
        if mx.kind is _Kind.NODATA:
            # RFC 5321 5.1: no MX, so the domain itself is the host, as if MX 0.
            addrs, kind, detail = await self._host(name, deadline)
            if addrs:
                return MxResult(MxStatus.HOSTS, (MxHost(0, domain, addrs),),
                                f"{domain}: no MX records, implicit MX (RFC 5321 5.1)")
            if kind is _Kind.FAIL:
                return MxResult(MxStatus.TEMP_FAIL, (),
                                f"{domain}: no MX records, and the address lookup failed: {detail}")
            return MxResult(MxStatus.NO_DOMAIN, (), f"{domain}: no MX and no address records")

        records: tuple[tuple[int, str], ...] = mx.records
        # RFC 7505 3: a null MX is the only MX of its domain ("MX 0 ."). A "." among
        # real hosts is a misconfiguration; it has no address, so it is simply dropped.
        if all(exchange == "" for _, exchange in records):
            return MxResult(MxStatus.NULL_MX, (), f"{domain} accepts no mail (null MX, RFC 7505)")
        best: dict[str, int] = {}
        for preference, exchange in records:
            if exchange and (exchange not in best or preference < best[exchange]):
                best[exchange] = preference
        ordered = self._order(best)[:MAX_MX_HOSTS]
        queries = []
        for _, host in ordered:
            hostname = dns.name.from_text(host)
            queries += [(hostname, dns.rdatatype.A), (hostname, dns.rdatatype.AAAA)]
        found = await self._lookups(queries, deadline)
        hosts: list[MxHost] = []
        skipped: list[str] = []
        for i, (preference, host) in enumerate(ordered):
            addrs, _kind, detail = _combine(found[2 * i], found[2 * i + 1])
            if addrs:
                hosts.append(MxHost(preference, host, addrs))
            else:
                skipped.append(f"{host}: {detail}")
        if not hosts:
            return MxResult(MxStatus.TEMP_FAIL, (),
                            f"no MX host of {domain} has an address ({'; '.join(skipped)})")
        detail = f"skipped {'; '.join(skipped)}" if skipped else ""
        return MxResult(MxStatus.HOSTS, tuple(hosts), detail)

    def _order(self, best: dict[str, int]) -> list[tuple[int, str]]:
        # RFC 5321 5.1: lowest preference first; equal preferences in random order, so
        # that senders spread their load over them.
        groups: dict[int, list[str]] = {}
        for host, preference in best.items():
            groups.setdefault(preference, []).append(host)
        ordered: list[tuple[int, str]] = []
        for preference in sorted(groups):
            names = groups[preference]
            self._rng.shuffle(names)
            ordered.extend((preference, n) for n in names)
        return ordered

    async def _addresses(self, name: dns.name.Name) -> MxResult:
        host = _text(name)
        addrs, kind, detail = await self._host(name, self._deadline())
        if addrs:
            return MxResult(MxStatus.HOSTS, (MxHost(0, host, addrs),), "")
        if kind is _Kind.FAIL:
            return MxResult(MxStatus.TEMP_FAIL, (), f"address lookup for {host} failed: {detail}")
        return MxResult(MxStatus.NO_DOMAIN, (), f"{host}: {detail}")

    async def _host(self, name: dns.name.Name, deadline: float
                    ) -> tuple[tuple[str, ...], _Kind, str]:
        a, aaaa = await self._lookups([(name, dns.rdatatype.A), (name, dns.rdatatype.AAAA)], deadline)
        return _combine(a, aaaa)

    async def _reverse(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> RdnsResult:
        deadline = self._deadline()
        (ptr,) = await self._lookups(
            [(dns.reversename.from_address(str(addr)), dns.rdatatype.PTR)], deadline)
        if ptr.kind is _Kind.NXDOMAIN:
            return RdnsResult(RdnsStatus.FAILED, None, f"no PTR record for {addr} (NXDOMAIN)")
        if ptr.kind is _Kind.NODATA:
            return RdnsResult(RdnsStatus.FAILED, None, f"no PTR record for {addr}")
        if ptr.kind is _Kind.FAIL:
            return RdnsResult(RdnsStatus.FAILED, None, f"PTR lookup for {addr} failed: {ptr.detail}",
                              temporary=True)
        names: list[str] = []
        for target in ptr.records:
            if target and target not in names:
                names.append(target)
        names = names[:MAX_PTR_NAMES]
        if not names:
            return RdnsResult(RdnsStatus.FAILED, None, f"the PTR record of {addr} names no host")
        # Forward-confirm in the address's own family: an IPv4 peer needs an A record.
        rdtype = dns.rdatatype.A if addr.version == 4 else dns.rdatatype.AAAA
        forwards = await self._lookups([(dns.name.from_text(n), rdtype) for n in names], deadline)
        why: list[str] = []
        rtype = dns.rdatatype.to_text(rdtype)
        for host, found in zip(names, forwards, strict=True):
            if found.kind is _Kind.OK and any(_ip(r) == addr for r in found.records):
                return RdnsResult(RdnsStatus.VERIFIED, host, f"{addr} -> {host} -> {addr}")
            if found.kind is _Kind.OK:
                why.append(f"{host} does not resolve to {addr}")
            elif found.kind is _Kind.FAIL:
                why.append(f"{rtype} lookup for {host} failed: {found.detail}")
            elif found.kind is _Kind.NXDOMAIN:
                why.append(f"{host} does not exist (NXDOMAIN)")
            else:
                why.append(f"{host} has no {rtype} record")
        return RdnsResult(RdnsStatus.UNVERIFIED, names[0], "; ".join(why))

    async def _lookups(self, queries: list[tuple[dns.name.Name, dns.rdatatype.RdataType]], deadline: float
                       ) -> list[_Lookup]:
        """Run queries concurrently until the deadline; one that has not finished by then
        counts as timed out (dnspython's own lifetime tends to overrun by ~0.1 s)."""
        tasks = [asyncio.ensure_future(self._lookup(n, t, deadline)) for n, t in queries]
        if not tasks:
            return []
        try:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            done, pending = await asyncio.wait(tasks, timeout=remaining)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        late = _Lookup(_Kind.FAIL, detail=f"timed out after {self._settings.timeout:g} s")
        return [task.result() if task in done else late for task in tasks]

    # -- one query: cache, coalescing, dnspython

    async def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, deadline: float
                      ) -> _Lookup:
        key = (name, rdtype)  # dns.name.Name compares and hashes case-insensitively
        while True:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            pending = self._inflight.get(key)
            if pending is None:
                break
            try:
                # Equal queries in flight share one answer (e.g. many recipients at one
                # domain); shield: a caller that gives up does not cancel the others.
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The caller that owned the query gave up; ask again ourselves.
        future: asyncio.Future[_Lookup] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result, ttl = await self._query(name, rdtype, deadline)
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if result.kind is not _Kind.FAIL:
            self._cache.put(key, result, ttl)
        future.set_result(result)
        return result

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, deadline: float
                     ) -> tuple[_Lookup, float]:
        """One query through dnspython; (outcome, seconds it may be cached)."""
        if self._dns is None:
            return _Lookup(_Kind.FAIL, detail=self._config_error), 0.0
        lifetime = deadline - asyncio.get_running_loop().time()
        if lifetime <= 0:
            return _Lookup(_Kind.FAIL, detail=f"timed out after {self._settings.timeout:g} s"), 0.0
        try:
            answer = await self._dns.resolve(name, rdtype, raise_on_no_answer=False,
                                             lifetime=lifetime, search=False)
        except dns.resolver.NXDOMAIN as e:
            return _Lookup(_Kind.NXDOMAIN, detail="NXDOMAIN"), _negative_ttl(e)
        except dns.resolver.NoAnswer:  # only with raise_on_no_answer; kept for safety
            return _Lookup(_Kind.NODATA), 0.0
        except dns.resolver.LifetimeTimeout:
            return _Lookup(_Kind.FAIL, detail=f"timed out after {self._settings.timeout:g} s"), 0.0
        except Exception as e:  # never raise on DNS trouble: SERVFAIL, socket errors, ...
            return _Lookup(_Kind.FAIL, detail=_describe(e)), 0.0
        ttl = max(0.0, answer.expiration - time.time())
        if answer.rrset is None:
            return _Lookup(_Kind.NODATA), min(ttl, NEGATIVE_TTL_MAX)
        if rdtype == dns.rdatatype.MX:
            records: tuple[Any, ...] = tuple((rd.preference, _text(rd.exchange)) for rd in answer.rrset)
        elif rdtype == dns.rdatatype.PTR:
            records = tuple(_text(rd.target) for rd in answer.rrset)
        elif rdtype == dns.rdatatype.TXT:
            records = tuple(b"".join(rd.strings).decode("utf-8", "replace")
                            for rd in answer.rrset)
        else:
            records = tuple(str(_ip(rd.address) or rd.address) for rd in answer.rrset)
        return _Lookup(_Kind.OK, records), min(ttl, POSITIVE_TTL_MAX)


def _combine(a: _Lookup, aaaa: _Lookup) -> tuple[tuple[str, ...], _Kind, str]:
    """A host's A and AAAA outcomes -> (addresses, IPv4 first; the worst outcome; a detail
    for when there are no addresses)."""
    addrs: list[str] = []
    for found in (a, aaaa):
        if found.kind is _Kind.OK:
            addrs.extend(r for r in found.records if r not in addrs)
    if a.kind is _Kind.FAIL or aaaa.kind is _Kind.FAIL:
        failed, which = (a, "A") if a.kind is _Kind.FAIL else (aaaa, "AAAA")
        return tuple(addrs), _Kind.FAIL, f"{which} lookup failed: {failed.detail}"
    if a.kind is _Kind.NXDOMAIN and aaaa.kind is _Kind.NXDOMAIN:
        return tuple(addrs), _Kind.NXDOMAIN, "host does not exist (NXDOMAIN)"
    return tuple(addrs), _Kind.NODATA, "no A or AAAA records"


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    # RFC 2308 5: the SOA's TTL and MINIMUM bound how long NXDOMAIN may be remembered.
    try:
        ttls = [r.resolve_chaining().minimum_ttl for r in exc.responses().values()]
    except Exception:
        return 0.0
    return min([NEGATIVE_TTL_MAX, *ttls]) if ttls else 0.0
