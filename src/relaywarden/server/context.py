"""What a session needs from the rest of the relay, bundled so the session reaches into nothing.

``ListenerContext`` is immutable and per listener (rebuilt on reload); ``Services`` holds the
shared, long-lived parts.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaywarden.policy.limits import ConnectionCounter, FreeSpaceGuard, WindowLimiter
from relaywarden.policy.match import first_network
from relaywarden.smtp.server import ServerSettings

if TYPE_CHECKING:
    from relaywarden.auth import Backend
    from relaywarden.auth.cram import CramSecrets
    from relaywarden.auth.throttle import AuthThrottle
    from relaywarden.delivery.engine import Engine
    from relaywarden.delivery.routing import Router
    from relaywarden.screening import Screener
    from relaywarden.logs.maillog import MailLog
    from relaywarden.logs.protocol import ProtocolLog
    from relaywarden.policy.engine import Policy
    from relaywarden.queue.store import Store
    from relaywarden.resolver import Resolver

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ListenerTlsMode(enum.Enum):
    NONE = "none"
    STARTTLS = "starttls"      # offered, optional
    REQUIRED = "required"      # STARTTLS before MAIL (RFC 3207 4), except optional_networks
    IMPLICIT = "implicit"      # TLS from the first byte (RFC 8314 3.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_connections: int = 0               # 0: unlimited
    max_connections_per_ip: int = 0
    messages_per_window: int = 0
    recipients_per_window: int = 0
    window: float = 60.0
    max_hops: int = 30


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]) -> bool:
    # The policy's own rule, for every network list (relay, TLS optional, AUTH plaintext,
    # normalize): an IPv4-mapped client matches IPv4 entries and the other way round.
    return first_network(networks, ip) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerContext:
    name: str
    hostname: str
    banner: str
    settings: ServerSettings
    command_timeout: float
    data_timeout: float
    postmaster: str
    normalize_networks: tuple[IPNetwork, ...] = ()
    reverse_lookups: bool = False
    tls_mode: ListenerTlsMode = ListenerTlsMode.NONE
    limits: Limits = field(default_factory=Limits)
    # The milters asked before the 250 at the end of DATA, in order (milter.MilterSpec).
    milters: tuple[Any, ...] = ()
    # TLS optional networks, AUTH required and AUTH plaintext networks are the policy's
    # (policy/gates.py, ListenerPolicy.gates): `policy explain` asks the same rule.

    def normalizes(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Legacy devices listed here get bare LF normalised instead of rejected."""
        return _in(ip, self.normalize_networks)


class ListenerRuntime:
    """The mutable state of one listener that outlives a reload: its open connections, its
    rate windows and its current TLS context (replaced on SIGHUP: new handshakes use the
    new certificate, established sessions keep theirs)."""

    def __init__(self, *, clock=time.monotonic) -> None:
        self.connections = ConnectionCounter()
        self.messages = WindowLimiter(limit=0, window=60.0, clock=clock)
        self.recipients = WindowLimiter(limit=0, window=60.0, clock=clock)
        self.ssl_context: ssl.SSLContext | None = None

    def configure(self, ctx: ListenerContext, ssl_context: ssl.SSLContext | None) -> None:
        limits = ctx.limits
        self.messages.configure(limit=limits.messages_per_window, window=limits.window)
        self.recipients.configure(limit=limits.recipients_per_window, window=limits.window)
        self.ssl_context = ssl_context


@dataclass(slots=True, kw_only=True)
class Services:
    policy: "Policy"
    store: "Store"
    mail_log: "MailLog"
    protocol_log: "ProtocolLog | None"
    resolver: "Resolver | None" = None
    disk: FreeSpaceGuard | None = None            # relay.min_free_space
    auth: "Backend | None" = None                 # password checkers ([auth])
    auth_throttle: "AuthThrottle | None" = None
    cram: "CramSecrets | None" = None             # auth.cram_md5_file (CRAM-MD5, RFC 2195)
    runtimes: dict[str, ListenerRuntime] = field(default_factory=dict)
    router: "Router | None" = None                # ETRN: which domains a client may start
    atrn: "Engine | None" = None                  # ATRN: delivers over a client's connection
    screener: "Screener | None" = None            # [screening]: None when nothing is listed
    on_queued: Callable[[], None] = lambda: None   # wakes the delivery scheduler
    recipients: Any = None   # server.validate.RecipientValidator, or None (no validation)
    recipient_throttle: Any = None   # policy.recipients.UnknownThrottle ([recipient_throttle])
    sessions: set[Any] = field(default_factory=set)
    tasks: set[asyncio.Task] = field(default_factory=set)
