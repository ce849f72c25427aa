"""Recipient validation for hosted domains: who exists (``[recipients."DOMAIN"]``).

Without it a relay in front of Exchange accepts any address at its domains, and bounces
what Exchange then refuses to the (usually forged) sender: backscatter, the way onto the
blocklists. With it an unknown recipient is refused at RCPT with ``550 5.1.1`` (RFC 3463
X.1.1 "bad destination mailbox address") and no DSN is ever made for it.

Sources, asked in order, combinable: ``files`` (addresses and ``@domain`` catch-alls) and
``callahead`` (ask the route's next hop, server/validate.py). The first source that knows
the address accepts it; an address no source knows is refused; when a source could not
answer (the next hop unreachable) and none knew it, the client is told to try later,
``450 4.1.1`` (RFC 5321 4.2.5 allows 450 for a mailbox unavailable for now), unless
``on_lookup_failure = "accept"``.

Pure: parsing a list and combining answers. The lookups are server/validate.py's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relaywarden.policy.model import Action, Decision
from relaywarden.smtp.reply import reply

__all__ = ["Known", "Answer", "AddressList", "parse_list", "combine", "UNKNOWN_USER",
           "LOOKUP_FAILED"]

UNKNOWN_USER = reply(550, "5.1.1", "Recipient address rejected: user unknown")
LOOKUP_FAILED = reply(450, "4.1.1", "Recipient address not verified now, try again later")


class Known(enum.Enum):
    YES = "known"
    NO = "unknown"
    FAILED = "failed"        # the source could not answer (down, timeout)


@dataclass(frozen=True, slots=True)
class Answer:
    source: str              # "file /path", "ldap", "callahead 10.0.0.5:25"
    known: Known
    detail: str = ""
    cached: bool = False     # from the answer cache (the source was not asked again)

    @property
    def said(self) -> str:
        """"file /path: unknown", "callahead 127.0.0.1:25 (cached): known (250 ...)"."""
        cached = " (cached)" if self.cached else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.source}{cached}: {self.known.value}{detail}"


@dataclass(frozen=True, slots=True)
class AddressList:
    """A recipients file: full addresses and ``@domain`` catch-alls, case-insensitive (the
    local part is compared case-insensitively too, as Exchange does)."""
    addresses: frozenset[str]
    catch_all: frozenset[str]

    def knows(self, address: str) -> bool:
        a = address.lower()
        return a in self.addresses or a.rpartition("@")[2] in self.catch_all


def parse_list(text: str) -> tuple[AddressList, list[tuple[int, str]]]:
    """A recipients file: one entry per line, ``#`` starts a comment. Returns the list and
    the lines it could not read (line number, why), which the caller reports."""
    addresses: set[str] = set()
    catch_all: set[str] = set()
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if " " in entry or "\t" in entry:
            bad.append((number, f"{entry!r}: one address per line"))
        elif entry.startswith("@"):
            if "." not in entry[1:] and entry[1:] != "localhost":
                bad.append((number, f"{entry!r}: not a domain"))
            else:
                catch_all.add(entry[1:].rstrip("."))
        elif entry.count("@") >= 1 and entry.rpartition("@")[0] and entry.rpartition("@")[2]:
            addresses.add(entry)
        else:
            bad.append((number, f"{entry!r}: neither an address nor an @domain"))
    return AddressList(frozenset(addresses), frozenset(catch_all)), bad


def combine(key: str, answers: list[Answer], *, on_lookup_failure: str) -> Decision:
    """The verdict from the sources' answers, in order. ACCEPT when one knows the address;
    REJECT 550 5.1.1 when none does and all answered; 450 4.1.1 (or ACCEPT with
    on_lookup_failure = "accept") when one could not answer."""
    said = "; ".join(a.said for a in answers)
    for a in answers:
        if a.known is Known.YES:
            return Decision(action=Action.ACCEPT, reply=reply(250, "2.1.5", "Ok"),
                            rule=key, detail=said)
    if any(a.known is Known.FAILED for a in answers):
        if on_lookup_failure == "accept":
            return Decision(action=Action.ACCEPT, reply=reply(250, "2.1.5", "Ok"),
                            rule=f"{key}.on_lookup_failure", detail=said)
        return Decision(action=Action.REJECT, reply=LOOKUP_FAILED, rule=key, detail=said)
    return Decision(action=Action.REJECT, reply=UNKNOWN_USER, rule=key, detail=said)


THROTTLED = reply(421, "4.7.0", "Too many unknown recipients, closing connection")


class UnknownThrottle:
    """A dictionary attack (a client guessing addresses) slowed, then cut off: unknown
    recipients are counted per connection and per client address over ``window`` seconds.
    The n-th unknown (the worse of the two counts) is answered ``delays[n-1]`` seconds late
    (the last delay repeating); at ``connection_limit`` in a session or ``client_limit``
    from an address in the window, the answer is ``421 4.7.0`` and the connection closes
    (RFC 5321 3.8), and a client over its address limit gets 421 at its next RCPT to a
    validated domain until the window lets it go. Pure bookkeeping, injected clock."""

    def __init__(self, *, delays: tuple[float, ...], connection_limit: int, client_limit: int,
                 window: float, clock, max_entries: int = 10_000) -> None:
        self.delays, self.connection_limit = delays, connection_limit
        self.client_limit, self.window, self.clock = client_limit, window, clock
        self.max_entries = max_entries
        self._clients: dict[str, list[float]] = {}

    def _recent(self, client: str) -> list[float]:
        now = self.clock()
        times = [t for t in self._clients.get(client, ()) if t > now - self.window]
        if times:
            self._clients[client] = times
        else:
            self._clients.pop(client, None)
        return times

    def locked(self, client: str) -> bool:
        return len(self._recent(client)) >= self.client_limit

    def unknown(self, client: str, in_session: int) -> tuple[float, str]:
        """Records one unknown recipient; (seconds to wait before answering, the config key
        of the limit reached or "")."""
        times = self._recent(client)
        times.append(self.clock())
        del times[:-self.client_limit]            # only the last `limit` matter
        self._clients.pop(client, None)
        self._clients[client] = times             # most recent last: the oldest go first
        while len(self._clients) > self.max_entries:
            del self._clients[next(iter(self._clients))]
        count = max(len(times), in_session)
        delay = self.delays[min(count, len(self.delays)) - 1]
        if in_session >= self.connection_limit:
            return delay, "recipient_throttle.connection_limit"
        if len(times) >= self.client_limit:
            return delay, "recipient_throttle.client_limit"
        return delay, ""
