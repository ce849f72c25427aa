"""Plain values the policy decides from and the decisions it returns.

The policy never reads the config file or the network: `config/build.py` turns the
config into these values, and the server fills `ClientFacts` from the connection (after
its own DNS lookups). That keeps every decision testable from one line of data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from relaywarden.policy.match import IPNetwork, Matcher
from relaywarden.smtp.reply import Reply


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    # Accept at SMTP level (the client sees 250) but quarantine the message in the badmail
    # folder instead of delivering it: the IIS habit the seed scenario relies on, so a
    # scanner user cannot tell a blocked recipient from a delivered one and the admin is
    # told instead.
    BADMAIL = "badmail"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    action: Action
    reply: Reply          # what the client is told
    rule: str             # the config entry that decided, e.g. "groups.scanners.senders"
    detail: str           # for the log and `explain`; never sent to the client


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFacts:
    listener: str
    ip: IPv4Address | IPv6Address
    # Reverse DNS name confirmed by a forward lookup (FCrDNS), or None. A name that was
    # only claimed by a PTR record must not be put here: it is attacker-controlled.
    verified_name: str | None = None
    user: str | None = None                     # authenticated user (SMTP AUTH), or None
    directory_groups: frozenset[str] = frozenset()
    # The hash, made at the first look-up: the policy's verdict caches hash these facts
    # several times per message, and an ip_address hashes in Python (hex of its int).
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash((self.listener, self.ip, self.verified_name, self.user,
                           self.directory_groups))
            object.__setattr__(self, "_hash", cached)   # frozen: set once, as __init__ would
        return cached


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRules:
    """Connection control of one listener (IIS "Connection" dialog)."""

    default: Action = Action.ACCEPT          # ACCEPT or REJECT
    allow: tuple[Matcher, ...] = ()
    deny: tuple[Matcher, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientGroup:
    name: str
    networks: tuple[IPNetwork, ...] = ()
    hostnames: tuple[str, ...] = ()          # normalised patterns, verified names only
    users: tuple[str, ...] = ()              # compared case-insensitively
    directory_groups: tuple[str, ...] = ()   # compared case-insensitively (AD group names are)
    recipient_domains: tuple[str, ...] | None = None   # None: any domain
    senders: tuple[str, ...] | None = None             # None: any sender
    on_violation: Action = Action.REJECT               # REJECT or BADMAIL


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """The listener settings the gates (policy/gates.py) read (config/build.py fills them from
    ``listeners.NAME.tls`` and ``listeners.NAME.auth``)."""

    tls_mode: str = "none"                      # "none", "starttls", "required", "implicit"
    tls_optional_networks: tuple[IPNetwork, ...] = ()
    auth_enabled: bool = False
    auth_required: bool = False
    auth_plaintext_networks: tuple[IPNetwork, ...] = ()
    require_rdns: bool = False                  # listeners.NAME.access.require_rdns
    # listeners.NAME.access.dnsbl / dnswl / dnsbl_threshold (policy/dnsbl.py DnsblSite)
    dnsbl: tuple = ()
    dnswl: tuple = ()
    dnsbl_threshold: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerPolicy:
    name: str
    access: AccessRules = AccessRules()
    relay_networks: tuple[IPNetwork, ...] = ()
    relay_authenticated: bool = False
    groups: tuple[ClientGroup, ...] = ()     # in the order they are tried
    hosted_domains: tuple[str, ...] = ()     # normalised domain patterns (no "*")
    postmaster: str = "postmaster@localhost"
    gates: Gates = Gates()                   # TLS and AUTH before MAIL (policy/gates.py)
