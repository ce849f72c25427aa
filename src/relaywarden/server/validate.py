"""Recipient validation's lookups (the decision is policy/recipients.py's).

- Files are read when first needed and again when their modification time or size changes
  (looked at no more than once a second), so an admin edits the list and nothing restarts.
  An unreadable file is a failed source (450 4.1.1 by default), never a crash.
- A callahead asks the domain's route's next hop, over a connection kept open for the next
  question (EHLO once; MAIL FROM:<>, RCPT TO, RSET per address). At most CALLAHEAD_CONNECTIONS
  questions per next hop run at once; the answers are cached (``positive_ttl`` /
  ``negative_ttl``; a failure is not cached). A 5xx to RCPT is "unknown", a 2xx "known",
  anything else (4xx, no connection, timeout) "failed".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relaywarden.delivery.client import ClientPolicy, DeliveryError, OutboundConnection
from relaywarden.policy.recipients import AddressList, Answer, Known, parse_list
from relaywarden.resolver.resolver import TtlCache

CALLAHEAD_CONNECTIONS = 4
CALLAHEAD_TIMEOUT = 10.0
CACHE_ENTRIES = 100_000


@dataclass
class _File:
    path: Path
    stamp: tuple[float, int] | None = None
    checked: float = 0.0
    content: AddressList | None = None
    error: str = ""


@dataclass
class _Hop:
    idle: list[OutboundConnection] = field(default_factory=list)
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CALLAHEAD_CONNECTIONS))


class RecipientValidator:
    """One per receiving process; ``settings`` are cfg.recipients (per domain, "*")."""

    def __init__(self, settings: dict[str, Any], *, hops: Callable[[str], Any],
                 helo: str, clock: Callable[[], float] = time.monotonic,
                 directory: Any = None) -> None:
        self.directory = directory  # auth.ldap.LdapBackend for ldap = true, or None
        self.settings = {k.lower().rstrip("."): v for k, v in settings.items()}
        self._hops = hops           # domain -> [(address, port)] of its route, or a reason (str)
        self.helo = helo
        self._clock = clock
        self._files: dict[Path, _File] = {}
        self._cache = TtlCache(CACHE_ENTRIES)     # answers, per their TTL (LRU when full)
        self._pools: dict[tuple[str, int], _Hop] = {}
        self.lookups = 0            # callaheads made (the tests count them)

    def for_domain(self, domain: str) -> tuple[str, Any] | None:
        """The settings that apply to a hosted domain, with their config key; None: none."""
        d = domain.lower().rstrip(".")
        if d in self.settings:
            return f'recipients."{d}"', self.settings[d]
        if "*" in self.settings:
            return 'recipients."*"', self.settings["*"]
        return None

    def answer_now(self, address: str, settings: Any) -> list[Answer] | None:
        """The answers that need no network: the files, and a cached callahead. None: a
        callahead must be made (lookup())."""
        answers = self._file_answers(address, settings)
        if any(a.known is Known.YES for a in answers) or not (settings.callahead
                                                               or settings.ldap):
            return answers
        if settings.ldap:
            return None
        hit = self._cached(address)
        if hit is None:
            return None
        return answers + [hit]

    async def lookup(self, address: str, settings: Any) -> list[Answer]:
        answers = self._file_answers(address, settings)
        if any(a.known is Known.YES for a in answers):
            return answers
        if settings.ldap:
            answers.append(await self._ldap(address, settings))
            if answers[-1].known is Known.YES:
                return answers
        if not settings.callahead:
            return answers
        hit = self._cached(address)
        if hit is None:
            hit = await self._callahead(address, settings)
        return answers + [hit]

    # -- files -----------------------------------------------------------------------------

    def _file_answers(self, address: str, settings: Any) -> list[Answer]:
        out = []
        for path in settings.files:
            f = self._load(path)
            if f.content is None:
                out.append(Answer(f"file {path}", Known.FAILED, f.error))
            else:
                out.append(Answer(f"file {path}",
                                  Known.YES if f.content.knows(address) else Known.NO))
        return out

    def _load(self, path: Path) -> _File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _File(path)
        now = self._clock()
        if f.content is not None and now - f.checked < 1.0:
            return f
        f.checked = now
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size)
            if stamp != f.stamp or f.content is None:
                content, bad = parse_list(path.read_text(encoding="utf-8", errors="replace"))
                f.content, f.stamp = content, stamp
                f.error = "; ".join(f"line {n}: {why}" for n, why in bad[:3])
        except OSError as exc:
            f.content = None
            f.error = f"cannot read: {exc.strerror or exc}"
        return f

    # -- the directory -----------------------------------------------------------------------

    async def _ldap(self, address: str, settings: Any) -> Answer:
        hit = self._cached("ldap:" + address)
        if hit is not None:
            return hit
        if self.directory is None:
            return Answer("ldap", Known.FAILED, "no [auth.ldap] directory")
        found = await self.directory.exists(address, settings.ldap_filter)
        if isinstance(found, str):
            return Answer("ldap", Known.FAILED, found)
        answer = Answer("ldap", Known.YES if found else Known.NO)
        self._remember("ldap:" + address, answer,
                       settings.positive_ttl if found else settings.negative_ttl)
        return answer

    # -- callahead -------------------------------------------------------------------------

    def _cached(self, address: str) -> Answer | None:
        answer = self._cache.get(address.lower())
        return None if answer is None else replace(answer, cached=True)

    def _remember(self, address: str, answer: Answer, ttl: float) -> None:
        self._cache.put(address.lower(), answer, ttl)

    async def _callahead(self, address: str, settings: Any) -> Answer:
        domain = address.rpartition("@")[2].lower()
        hops = await self._hops(domain)
        if isinstance(hops, str):
            return Answer("callahead", Known.FAILED, hops)
        last = "no next hop"
        for host, port in hops:
            source = f"callahead {host}:{port}"
            try:
                async with asyncio.timeout(CALLAHEAD_TIMEOUT):
                    answer = await self._ask(host, port, address)
            except TimeoutError:
                last = f"{source}: timed out"
                continue
            except DeliveryError as exc:
                last = f"{source}: {exc}"
                continue
            except OSError as exc:
                last = f"{source}: {exc.strerror or exc}"
                continue
            text = " ".join(x for x in (str(answer.code), answer.enhanced or "",
                                        " ".join(answer.lines)) if x)
            if 200 <= answer.code < 300:
                result = Answer(source, Known.YES, text)
                self._remember(address, result, settings.positive_ttl)
                return result
            if 500 <= answer.code < 600:
                result = Answer(source, Known.NO, text)
                self._remember(address, result, settings.negative_ttl)
                return result
            return Answer(source, Known.FAILED, text)    # 4xx: not now; not cached
        return Answer("callahead", Known.FAILED, last)

    async def _ask(self, host: str, port: int, address: str):
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = _Hop()
        async with pool.gate:
            conn = None
            while pool.idle:
                candidate = pool.idle.pop()
                if candidate.usable:
                    conn = candidate
                    break
                await candidate.close()
            self.lookups += 1
            if conn is None:
                conn = await OutboundConnection.open(
                    host, port, ClientPolicy(helo=self.helo, connect_timeout=CALLAHEAD_TIMEOUT,
                                             command_timeout=CALLAHEAD_TIMEOUT))
            try:
                answer = await conn.verify(address)
            except BaseException:
                await conn.close()
                raise
            if conn.usable:
                pool.idle.append(conn)
            else:
                await conn.close()
            return answer

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in pool.idle:
                await conn.close()
            pool.idle.clear()


def route_hops(router: Any, resolver: Any, mx_port: int) -> Callable[[str], Any]:
    """domain -> [(address, port)] of its route's next hops, or why there are none (for a
    callahead: it asks your own server, never an MX on the internet)."""
    async def hops(domain: str) -> list[tuple[str, int]] | str:
        route = router.route(domain, sender="", group=None, user=None)
        if not route.hops or route.mx:
            return (f"{route.name} has no next_hops to ask (a callahead asks your own"
                    " server)")
        out: list[tuple[str, int]] = []
        why = ""
        for hop in route.hops:
            port = hop.port or mx_port
            if hop.literal:
                out.append((hop.host, port))
                continue
            found = await resolver.addresses(hop.host)
            addresses = [a for h in found.hosts for a in h.addresses]
            if addresses:
                out.append((addresses[0], port))
            else:
                why = found.detail or f"no address for {hop.host}"
        return out or why or "no next hop"
    return hops
