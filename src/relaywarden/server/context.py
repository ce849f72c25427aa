"""What a session needs from the rest of the relay, bundled so the session reaches into nothing.

``ListenerContext`` is immutable and per listener (rebuilt on reload); ``Services`` holds the
shared, long-lived parts.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaywarden.smtp.server import ServerSettings

if TYPE_CHECKING:
    from relaywarden.logs.maillog import MailLog
    from relaywarden.logs.protocol import ProtocolLog
    from relaywarden.policy.engine import Policy
    from relaywarden.queue.store import Store
    from relaywarden.resolver import Resolver

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    def normalizes(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Legacy devices listed here get bare LF normalised instead of rejected."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.normalize_networks)


@dataclass(slots=True, kw_only=True)
class Services:
    policy: "Policy"
    store: "Store"
    mail_log: "MailLog"
    protocol_log: "ProtocolLog | None"
    resolver: "Resolver | None" = None
    on_queued: Callable[[], None] = lambda: None   # wakes the delivery scheduler
    sessions: set[Any] = field(default_factory=set)
    tasks: set[asyncio.Task] = field(default_factory=set)
