"""Next hops that are not SMTP servers: a courier carries the message instead.

A route's next hop is normally a host that speaks SMTP ("mx", "smtp.example.net:587").
A next hop written "SCHEME:REST", where SCHEME is registered in SCHEMES, names a courier
instead: another way to hand the message on (an HTTP API, a directory on disk). The
engine gives such a route's recipients to the courier and records the outcomes it returns
exactly as it records an SMTP attempt's (delivered, deferred, bounced; DSNs; the mail log).

A courier route has exactly one next hop, the courier: failover between a courier and SMTP
hosts would hide which of them took the mail.

Adding a courier: a module with a CourierScheme object, and one line in SCHEMES
(config/couriers.py) naming it.
The module is imported only when a config uses its scheme (a courier may need libraries
the SMTP path does not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from relaywarden.config.schema import Config, HopConfig
    from relaywarden.delivery.engine import DeliverySettings, Outcome
    from relaywarden.delivery.routing import Route
    from relaywarden.logs.maillog import MailLog
    from relaywarden.logs.protocol import ProtocolLog
    from relaywarden.queue.store import DueMessage, DueRecipient

__all__ = ["SCHEMES", "Courier", "CourierContext", "CourierScheme", "scheme_of", "split"]

# The registry of schemes lives in config/couriers.py (reading a config must not import
# delivery/); these names stay here too.
from relaywarden.config.couriers import SCHEMES, split  # noqa: E402


def scheme_of(name: str) -> CourierScheme:
    from relaywarden.config.couriers import scheme_of as find

    return find(name)


class CourierScheme(Protocol):
    """What a scheme does with the REST of "SCHEME:REST" at the three stages of a config."""

    def parse(self, rest: str) -> str:
        """The REST normalised (as `config show` prints it), or ValueError saying what is
        wrong with it. Syntax only: no I/O, no other part of the config."""

    def check(self, rest: str, cfg: Config, settings: HopConfig) -> list[tuple[tuple[str, ...], str]]:
        """Problems with the rest of the config, as (key path below the route's table,
        message): `("next_hops", 0), "unknown provider"`. No network access."""

    def build(self, rest: str, cfg: Config, settings: HopConfig, *, route: str) -> Courier:
        """The courier of a validated config (route: the route's config key, for logs)."""


@dataclass(frozen=True, slots=True)
class CourierContext:
    """What a courier gets from the engine with each delivery."""

    settings: DeliverySettings
    mail_log: MailLog
    protocol_log: ProtocolLog | None = None
    clock: Callable[[], float] = time.time


class Courier(Protocol):
    """Carries one message to its recipients by something other than SMTP."""

    #: Shown as the relay= of mail log lines and the Remote-MTA-like "remote" of outcomes.
    label: str

    async def deliver(self, message: DueMessage, body: bytes | Path,
                      recipients: Sequence[DueRecipient], route: Route,
                      context: CourierContext) -> list[Outcome]:
        """One Outcome per recipient, in order. Outcome.retry_at (epoch seconds) asks for
        the next attempt not before then (e.g. an HTTP Retry-After); None: the retry
        schedule. An exception is a local error: the engine defers the message."""
