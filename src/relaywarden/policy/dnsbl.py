"""DNS blocklists and allowlists at connect (``listeners.NAME.access.dnsbl`` / ``dnswl``).

A zone is asked for the client's address, reversed (RFC 5782 2.1: "4.3.2.1.zone" for
1.2.3.4; for IPv6 the 32 nibbles, RFC 5782 2.4); an A answer in 127.0.0.0/8 lists it and its
TXT record says why (RFC 5782 2.1). The entries use Postfix's postscreen_dnsbl_sites syntax,
which mail admins already know:

    zen.example.org                     any 127.x.y.z answer, weight 1
    zen.example.org=127.0.0.[2..11]     only these answers (octet: n, [n..m], [n;m;...])
    zen.example.org=127.0.0.4*3         weight 3
    list.example.net*-2                 a negative weight offsets other hits

A client is refused when the weights of the zones that list it add up to at least
``dnsbl_threshold`` (1 by default: the first hit rejects). A hit on a ``dnswl`` zone lets the
client in whatever the blocklists say. A zone that cannot be asked (timeout, SERVFAIL) counts
as not listing: resolver trouble never rejects anyone. An answer outside 127.0.0.0/8 is not
a listing (RFC 5782 2.1; some zones answer e.g. 127.255.255.254 or a public address to a
query over an open resolver to say "you are refused": never trust it as a hit).

Pure: the lookups are the resolver's (resolver/resolver.py ``Resolver.dnsbl``); this module
parses the entries and decides.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from relaywarden.policy.model import Action, Decision
from relaywarden.smtp.reply import reply

__all__ = ["DnsblSite", "parse_site", "ZoneAnswer", "decide", "query_name", "sanitize_txt"]

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_OCTET = re.compile(r"^(?:(\d{1,3})|\[(\d{1,3})\.\.(\d{1,3})\]|\[(\d{1,3}(?:;\d{1,3})*)\])$")


@dataclass(frozen=True, slots=True)
class DnsblSite:
    zone: str                                  # lower case, no trailing dot
    codes: tuple[frozenset[int], ...] | None   # per octet, the values that match; None: any
    weight: int = 1
    text: str = ""                             # as written (for the log and explain)

    def matches(self, answer: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(answer)
        except ValueError:
            return False
        if addr not in _LOOPBACK:
            return False
        if self.codes is None:
            return True
        return all(octet in allowed for octet, allowed in zip(addr.packed, self.codes))


_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def parse_site(text: str) -> DnsblSite:
    """``zone[=a.b.c.d][*weight]``; ValueError with what is wrong."""
    raw = text.strip()
    rest, weight = raw, 1
    if "*" in rest:
        rest, _, w = rest.rpartition("*")
        try:
            weight = int(w)
        except ValueError:
            raise ValueError(f"{text!r}: the weight after '*' must be a whole number") from None
        if weight == 0:
            raise ValueError(f"{text!r}: a weight of 0 would never count")
    zone, _, pattern = rest.partition("=")
    zone = zone.strip().rstrip(".").lower()
    labels = zone.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r}: {zone or '(empty)'!r} is not a DNS zone name")
    codes = None
    if pattern:
        # Dots inside [n..m] are not octet separators.
        octets = re.split(r"\.(?![^\[]*\])", pattern.strip())
        if len(octets) != 4:
            raise ValueError(f"{text!r}: the answer pattern must have four octets"
                             " (e.g. 127.0.0.2 or 127.0.0.[2..11])")
        parsed = []
        for octet in octets:
            m = _OCTET.match(octet)
            if m is None:
                raise ValueError(f"{text!r}: {octet!r} is not an octet, [n..m] or [n;m]")
            if m.group(1) is not None:
                values = {int(m.group(1))}
            elif m.group(2) is not None:
                lo, hi = int(m.group(2)), int(m.group(3))
                if lo > hi:
                    raise ValueError(f"{text!r}: [{lo}..{hi}] is empty")
                values = set(range(lo, hi + 1))
            else:
                values = {int(v) for v in m.group(4).split(";")}
            if any(v > 255 for v in values):
                raise ValueError(f"{text!r}: an octet is at most 255")
            parsed.append(frozenset(values))
        codes = tuple(parsed)
        if 127 not in codes[0]:
            raise ValueError(f"{text!r}: list answers are in 127.0.0.0/8 (RFC 5782 2.1)")
    return DnsblSite(zone=zone, codes=codes, weight=weight, text=raw)


def query_name(ip: str, zone: str) -> str | None:
    """The name to ask ``zone`` about ``ip`` (RFC 5782 2.1, 2.4); None for what is not an
    address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return ".".join(reversed(str(addr).split("."))) + "." + zone
    nibbles = addr.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + zone


_UNSAFE = re.compile(r"[^\x21-\x7e ]+")


def sanitize_txt(text: str, limit: int = 200) -> str:
    """A zone's TXT for our reply: printable ASCII only (no CR/LF that would end the reply
    line, RFC 5321 4.1.1.x), at most ``limit`` characters."""
    clean = _UNSAFE.sub(" ", text).strip()
    return clean[:limit]


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    """What one zone said about the client: its A answers (empty: not listed), its TXT,
    or ``failed`` (the lookup did not answer: counts as not listed)."""
    zone: str
    answers: tuple[str, ...] = ()
    txt: str = ""
    failed: str = ""


def decide(listener: str, ip: str, blocklists: tuple[DnsblSite, ...],
           allowlists: tuple[DnsblSite, ...], threshold: int,
           answers: dict[str, ZoneAnswer]) -> tuple[Decision | None, str]:
    """The verdict from the zones' answers: (a REJECT decision or None, what was found for
    the log). 554 5.7.1 (RFC 5321 3.1: a server may refuse a connection with 554; RFC 3463
    X.7.1 "delivery not authorized") with the listing zone and its TXT."""
    key = f"listeners.{listener}.access"
    found: list[str] = []
    for site in allowlists:
        a = answers.get(site.zone)
        if a is not None and any(site.matches(x) for x in a.answers):
            return None, f"allowed by {site.zone} ({','.join(a.answers)})"
    score = 0
    hits: list[tuple[DnsblSite, ZoneAnswer]] = []
    for site in blocklists:
        a = answers.get(site.zone)
        if a is None:
            continue
        if a.failed:
            found.append(f"{site.zone}: lookup failed ({a.failed})")
            continue
        if any(site.matches(x) for x in a.answers):
            score += site.weight
            hits.append((site, a))
            found.append(f"{site.zone}={','.join(a.answers)}*{site.weight}")
    note = "; ".join(found) if found else "not listed"
    if score < threshold or not hits:
        return None, note + (f" (score {score} < {threshold})" if hits else "")
    site, a = max(hits, key=lambda h: h[0].weight)
    why = f"Service unavailable; client [{ip}] blocked using {site.zone}"
    if a.txt:
        why += f"; {sanitize_txt(a.txt)}"
    return Decision(action=Action.REJECT, reply=reply(554, "5.7.1", why),
                    rule=f"{key}.dnsbl", detail=f"{note} (score {score} >= {threshold})"), note
