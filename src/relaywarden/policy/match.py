"""Matching of clients, domains and senders against configured patterns.

Everything here is pure: plain values in, a bool or a ranking out. The parsers
(`parse_network`, `parse_access_entry`, `parse_domain_pattern`, ...) are shared with
the config schema so that what the config accepts is exactly what the policy
understands; they raise `ValueError` with a short message that the config loader
puts after `FILE: dotted.key: `.

Conventions (the parser in smtp/address.py already normalises addresses: domains are
lower-cased, one trailing dot is removed, IDNs are A-labels, address literals look like
"[10.0.0.5]" or "[ipv6:2001:db8::1]"; we normalise patterns the same way):

- hostname / domain pattern: "host.example.com" matches exactly that name;
  "*.example.com" matches any name strictly below example.com (not example.com itself,
  not badexample.com); "*" (domain patterns only) matches every domain.
- an address literal pattern "[10.0.0.5]" matches only the identical literal; wildcards
  never match literals except the catch-all "*".
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # only for annotations: the policy never parses addresses itself
    from relaywarden.smtp.address import Address

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# A DNS label as found in host names. Underscores are allowed because Windows networks
# name hosts with them ("scan_3f.corp.example.com") and refusing the config would only
# push admins to IP entries; the rest follows RFC 1123 2.1 (letters, digits, hyphen,
# not at either end, at most 63 octets).
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# Looks like an attempt at an IP address or network rather than a host name, so that
# "10.0.0.300" is reported as a bad address, not silently taken as a (numeric) host name.
_IPISH = re.compile(r"^[0-9./]+$|:")


# --------------------------------------------------------------------------------------
# Parsing (shared with config/schema.py)
# --------------------------------------------------------------------------------------


def parse_network(text: str) -> IPNetwork:
    """Parse "10.0.0.0/8", "2001:db8::/32" or a single address ("10.1.2.3" = /32).

    Strict: host bits set ("10.0.0.1/8") is an error, because it nearly always means the
    admin meant either a single host or a different network, and guessing wrong opens
    a relay to more machines than intended.
    """
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from exc
        raise ValueError(f"{text!r} has host bits set (the network is {loose})") from exc


def _ascii_name(text: str) -> str:
    """Lower-case, drop one trailing dot, turn an IDN into its A-label form."""
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{text!r} is not a valid domain name") from exc
    return name


def _check_name(name: str, original: str) -> None:
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{original!r} is not a valid host or domain name")


def parse_hostname(text: str, *, wildcard: bool = True) -> str:
    """Normalise a host name pattern: "Host.Example.COM." -> "host.example.com".

    With `wildcard`, "*.example.com" is allowed (a name strictly below example.com).
    """
    name = _ascii_name(text)
    if wildcard and name.startswith("*."):
        _check_name(name[2:], text)
        return name
    if "*" in name:
        if wildcard:
            raise ValueError(
                f"{text!r}: a wildcard is only allowed as a whole leading label, '*.example.com'"
            )
        raise ValueError(f"{text!r}: a wildcard is not allowed here")
    _check_name(name, text)
    return name


def parse_literal(text: str) -> IPAddress:
    """The IP address inside an address literal "[10.0.0.5]" / "[IPv6:2001:db8::1]".

    RFC 5321 4.1.3: IPv6 literals carry the "IPv6:" tag; we also accept an untagged IPv6
    address for robustness but both forms name the same literal.
    """
    inner = text.strip()
    if not (inner.startswith("[") and inner.endswith("]")):
        raise ValueError(f"{text!r} is not an address literal")
    inner = inner[1:-1]
    if inner.lower().startswith("ipv6:"):
        try:
            return IPv6Address(inner[5:])
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid IPv6 address literal") from exc
    try:
        return ipaddress.ip_address(inner)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid address literal") from exc


def format_literal(ip: IPAddress) -> str:
    """Canonical literal text, lower-case like the parser produces it."""
    return f"[{ip}]" if ip.version == 4 else f"[ipv6:{ip}]"


def parse_domain_pattern(text: str, *, allow_any: bool = True) -> str:
    """Normalise a recipient domain pattern: "*", "example.com", "*.example.com", "[10.0.0.5]"."""
    stripped = text.strip()
    if stripped == "*":
        if not allow_any:
            raise ValueError("'*' (any domain) is not allowed here")
        return "*"
    if stripped.startswith("["):
        return format_literal(parse_literal(stripped))
    return parse_hostname(stripped, wildcard=True)


def parse_sender_pattern(text: str) -> str:
    """Normalise a sender pattern: "<>", "user@example.com", "example.com", "*.example.com"."""
    stripped = text.strip()
    if stripped == "<>":
        return "<>"
    if "@" in stripped:
        local, _, domain = stripped.rpartition("@")
        if not local or any(ch.isspace() for ch in local) or local.startswith("<"):
            raise ValueError(f"{text!r} is not a valid mail address")
        if domain.startswith("["):
            domain = format_literal(parse_literal(domain))
        else:
            domain = parse_hostname(domain, wildcard=False)
        return f"{local}@{domain}"
    if stripped == "*":
        # "any sender" is spelled by leaving `senders` out; a "*" here is a guess at syntax
        # we would have to define (does it include "<>"?), so refuse it.
        raise ValueError("'*' is not a sender pattern (leave out `senders` to allow any sender)")
    return parse_domain_pattern(stripped, allow_any=False)


def parse_address(text: str) -> str:
    """A plain "local@domain" address in the config (e.g. relay.postmaster)."""
    stripped = text.strip()
    if stripped.startswith("<") or "@" not in stripped:
        raise ValueError(f"{text!r} is not a mail address of the form local@domain")
    return parse_sender_pattern(stripped)


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    """An IP network in an access list ("10.0.0.0/8", "10.1.2.3")."""

    network: IPNetwork

    def __str__(self) -> str:
        return str(self.network)


@dataclass(frozen=True, slots=True)
class HostnameEntry:
    """A host name pattern in an access list, matched on verified reverse DNS only."""

    pattern: str  # normalised: "host.example.com" or "*.example.com"

    def __str__(self) -> str:
        return self.pattern


Matcher = NetworkEntry | HostnameEntry


def parse_access_entry(text: str) -> Matcher:
    """An access list entry: IP address, CIDR network, host name or "*.domain"."""
    stripped = text.strip()
    if _IPISH.search(stripped):
        return NetworkEntry(parse_network(stripped))
    return HostnameEntry(parse_hostname(stripped, wildcard=True))


# --------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)   # every policy check asks, for the same few clients
def _client_forms(ip: IPAddress) -> tuple[IPAddress, ...]:
    """The client address in both families when it has both.

    A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d (RFC 4291 2.5.5.2); admins
    write 10.0.0.0/8, so an IPv4-mapped client must match IPv4 entries. The other way
    round keeps it symmetric: an entry ::ffff:10.0.0.0/104 matches the IPv4 client 10.0.0.1.
    """
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return (ip, ip.ipv4_mapped)
    if isinstance(ip, IPv4Address):
        return (ip, IPv6Address(f"::ffff:{ip}"))
    return (ip,)


def network_contains(network: IPNetwork, ip: IPAddress) -> bool:
    return any(form.version == network.version and form in network for form in _client_forms(ip))


def first_network(networks: Iterable[IPNetwork], ip: IPAddress) -> int | None:
    """Index of the first network containing `ip`, or None."""
    for index, network in enumerate(networks):
        if network_contains(network, ip):
            return index
    return None


def _name_matches(pattern: str, name: str) -> bool:
    """Host/domain pattern against an already normalised name."""
    if pattern.startswith("*."):
        # Strictly below: "x.example.com" yes; "example.com" and "badexample.com" no.
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def normalise_name(name: str) -> str:
    """Case and one trailing dot do not matter in DNS names (RFC 4343)."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def hostname_matches(pattern: str, verified_name: str | None) -> bool:
    """Only a verified reverse-DNS name (PTR confirmed by a forward lookup) may match:
    anyone controlling their own PTR record can claim to be "printer.example.com"."""
    if verified_name is None:
        return False
    return _name_matches(pattern, normalise_name(verified_name))


def entry_matches(entry: Matcher, ip: IPAddress, verified_name: str | None) -> bool:
    if isinstance(entry, NetworkEntry):
        return network_contains(entry.network, ip)
    return hostname_matches(entry.pattern, verified_name)


def specificity(entry: Matcher) -> tuple[int, int]:
    """Ranking key: a larger key is more specific.

    - any IP entry beats any host name entry (the address cannot be forged over TCP,
      a name is only as good as DNS);
    - IP entries: longer prefix wins; IPv4 prefixes count as IPv4-mapped IPv6 (+96) so
      10.0.0.0/8 (= ::ffff:10.0.0.0/104) ranks correctly against IPv6 entries;
    - host names: an exact name beats every wildcard; a longer wildcard suffix (more
      labels) beats a shorter one.
    """
    if isinstance(entry, NetworkEntry):
        prefix = entry.network.prefixlen + (96 if entry.network.version == 4 else 0)
        return (2, prefix)
    if entry.pattern.startswith("*."):
        return (1, entry.pattern.count("."))
    return (1, 1000)


def domain_matches(pattern: str, domain: str) -> bool:
    """Recipient/hosted domain pattern against a normalised domain from the parser."""
    if pattern == "*":
        return True
    if domain.startswith("[") or pattern.startswith("["):
        # Address literals are never matched by name patterns: "[10.0.0.5]" is not
        # "below" anything. Compare the addresses, so "[IPv6:...]" spellings agree.
        if not (domain.startswith("[") and pattern.startswith("[")):
            return False
        try:
            return parse_literal(domain) == parse_literal(pattern)
        except ValueError:
            return False
    return _name_matches(pattern, normalise_name(domain))


def first_domain(patterns: Iterable[str], domain: str) -> int | None:
    for index, pattern in enumerate(patterns):
        if domain_matches(pattern, domain):
            return index
    return None


def sender_matches(pattern: str, sender: "Address | None") -> bool:
    """Sender pattern against the MAIL FROM path (None is the null path "<>").

    An exact address compares the local part case-insensitively as well. RFC 5321 2.4
    says local parts MAY be case-sensitive, but a sender restriction is a guard against
    mistakes and leaks, and "Scanner@" vs "scanner@" being different senders would let
    the same mailbox slip past it; no real system hands out mailboxes differing only in
    case.
    """
    if pattern == "<>":
        return sender is None
    if sender is None:
        return False
    if "@" in pattern:
        local, _, domain = pattern.rpartition("@")
        return sender.local.casefold() == local.casefold() and domain_matches(domain, sender.domain)
    return domain_matches(pattern, sender.domain)


def first_sender(patterns: Iterable[str], sender: "Address | None") -> int | None:
    for index, pattern in enumerate(patterns):
        if sender_matches(pattern, sender):
            return index
    return None
