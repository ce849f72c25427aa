"""Where a recipient's mail goes: pure, no DNS, no I/O.

The router answers "which route, and which next hops in which order" from the recipient
domain and who sent the mail. Resolving a host or an MX (RFC 5321 5.1) is the resolver's
job; trying the hops in order (failover) and the port default (delivery.mx_port for a hop
without a port) are the caller's.

Selection, first match wins:

1. the recipient domain's exact route        routes."example.com"
   (an address literal "[10.0.0.5]" without an exact route goes to that address: no MX)
2. the most specific wildcard route          routes."*.example.com" (longest suffix)
3. the first sender route, in file order,    sender_routes.apps
   matching the client group, the authenticated user (case-insensitive) or the
   MAIL FROM domain
4. the catch-all route                       routes."*"
5. the implicit default: MX lookup of the recipient domain with delivery.tls.

Sender routes come after the domain routes on purpose: they choose a smart host for
mail that would otherwise go to the default route, and must never divert mail for a
hosted domain (routed to the internal server) to an outside smart host.

Build a Router from the config with `relaywarden.config.build_router(cfg)` (config/
depends on delivery/, never the other way: docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from relaywarden.delivery.tls import TlsMode
from relaywarden.policy import match

if TYPE_CHECKING:
    from relaywarden.delivery.courier import Courier
    from relaywarden.oauth import OAuthLogin

__all__ = [
    "DEFAULT_ROUTE",
    "LITERAL_ROUTE",
    "NextHop",
    "Route",
    "RouteKind",
    "Router",
    "MX_PLACEHOLDER",
    "SenderRoute",
]

DEFAULT_ROUTE = "default (MX)"
LITERAL_ROUTE = "address literal"


@dataclass(frozen=True, slots=True)
class NextHop:
    """One place to connect to.

    host: a host name to resolve ("smtp.example.net"), the recipient domain whose MX is
          looked up (mx=True), or an IP address without brackets ("10.0.0.5",
          "2001:db8::5") when literal=True (connect to it as is, no DNS).
    port: as configured, or None: the caller uses delivery.mx_port.
    """

    host: str
    port: int | None
    literal: bool
    mx: bool

    def __str__(self) -> str:
        if self.mx:
            return f"mx:{self.host}" if self.host else "mx"
        host = f"[{self.host}]" if self.literal else self.host
        return host if self.port is None else f"{host}:{self.port}"


# "mx" in a configured route: replaced by NextHop(recipient domain, mx=True) per recipient.
MX_PLACEHOLDER = NextHop(host="", port=None, literal=False, mx=True)


class RouteKind(Enum):
    DELIVER = "deliver"
    HOLD = "hold"       # keep queued until released or triggered (ETRN/ATRN); hops for then


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str                       # the config key that decided: 'routes."example.com"', ...
    kind: RouteKind
    hops: tuple[NextHop, ...]       # in order: the first that answers is used (failover)
    tls: TlsMode
    implicit_tls: bool = False
    username: str | None = None
    # never in logs or reprs; an OAuthLogin (relaywarden.oauth) for auth = "xoauth2" /
    # "oauthbearer": the secret is then a token fetched when the connection logs in
    password: str | OAuthLogin | None = field(default=None, repr=False)
    auth_without_tls: bool = False
    etrn: bool = False              # ETRN may start this route's queue (RFC 1985)
    etrn_networks: tuple[match.IPNetwork, ...] = ()   # who may; empty: any client
    atrn_users: frozenset[str] = frozenset()          # ATRN (RFC 2645): casefolded users
    # A next hop that is not SMTP ("graph:NAME", see delivery.courier): it carries the
    # route's mail instead, and hops is empty.
    courier: Courier | None = None

    @property
    def sends(self) -> bool:
        """Whether the route has somewhere to send mail (a hold route may have nowhere)."""
        return bool(self.hops) or self.courier is not None

    @property
    def mx(self) -> bool:
        """True when every hop is an MX lookup (the internet, not a smart host)."""
        return bool(self.hops) and all(hop.mx for hop in self.hops)


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderRoute:
    """A route chosen by who sends: any of groups, users or sender domains matching."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()             # compared case-insensitively
    sender_domains: tuple[str, ...] = ()    # domain patterns, as policy.match understands them
    route: Route

    def matches(self, *, sender: str, group: str | None, user: str | None) -> bool:
        if group is not None and group in self.groups:
            return True
        if user is not None and user.casefold() in {name.casefold() for name in self.users}:
            return True
        domain = _sender_domain(sender)
        return domain is not None and match.first_domain(self.sender_domains, domain) is not None


def _sender_domain(sender: str) -> str | None:
    """"a@Example.COM" -> "example.com"; the null sender ("" or "<>") has none."""
    sender = sender.strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    if "@" not in sender:
        return None
    domain = sender.rpartition("@")[2]
    return domain.lower() if domain.startswith("[") else match.normalise_name(domain)


def _domain_key(domain: str) -> str:
    """The recipient domain in the form the config keys use."""
    text = domain.strip()
    if text.startswith("["):
        return match.format_literal(match.parse_literal(text))
    return match.normalise_name(text)


class Router:
    def __init__(
        self,
        *,
        routes: Mapping[str, Route],
        sender_routes: Sequence[SenderRoute] = (),
        default_tls: TlsMode = TlsMode.OPPORTUNISTIC,
    ) -> None:
        """`routes`: normalised domain pattern ("example.com", "*.example.com", "[10.0.0.5]",
        "*") -> Route, where a hop with mx=True and host "" stands for "MX of the recipient
        domain"; `sender_routes` in the order they are tried."""
        self._exact = {key: route for key, route in routes.items() if key != "*" and not key.startswith("*.")}
        # Longest suffix first: the first wildcard that matches is the most specific one.
        self._wildcards = sorted(
            ((key, route) for key, route in routes.items() if key.startswith("*.")),
            key=lambda item: -len(item[0]),
        )
        self._catch_all = routes.get("*")
        self._sender_routes = tuple(sender_routes)
        self._default_tls = default_tls
        #: Whether any route holds mail (ETRN/ATRN, hold = true): most relays have none,
        #: and then nothing needs routing at receipt (holds()).
        self.has_hold = any(r.kind is RouteKind.HOLD for r in routes.values()) or any(
            s.route.kind is RouteKind.HOLD for s in self._sender_routes)

    def holds(self, recipient_domain: str, *, sender: str, group: str | None,
              user: str | None) -> bool:
        """Whether a hold route takes this recipient's mail: it is then held at its first
        attempt, so the receiving side queues it in the index at once, where ETRN and
        ATRN find it (not the hand-off log). False for what cannot be routed."""
        if not self.has_hold:
            return False
        try:
            domain = _domain_key(recipient_domain)
        except ValueError:
            return False          # an address literal the router cannot read: not held
        found = self._match(domain, sender, group, user)
        # Only the kind is asked: no Route with the domain's MX hops is made (route()).
        return found is not None and found[0].kind is RouteKind.HOLD

    def route(self, recipient_domain: str, *, sender: str, group: str | None, user: str | None) -> Route:
        """The route for one recipient.

        recipient_domain: as the SMTP parser gives it ("example.com", "[10.0.0.5]",
            "[ipv6:2001:db8::5]"); case and one trailing dot do not matter.
        sender: the MAIL FROM address, "" (or "<>") for the null sender.
        group: the client group the policy put the client in; user: the SMTP AUTH user.
        """
        domain = _domain_key(recipient_domain)
        if not domain:
            raise ValueError("a recipient without a domain cannot be routed (<postmaster> is rewritten first)")
        found = self._match(domain, sender, group, user)
        if found is not None:
            route, per_domain = found
            return self._for(route, domain) if per_domain else route
        if domain.startswith("["):
            # RFC 5321 4.1.3: an address literal names the host; no MX lookup, and no
            # route but its own exact one applies (wildcards never match literals).
            literal = NextHop(host=str(match.parse_literal(domain)), port=None, literal=True, mx=False)
            return Route(name=LITERAL_ROUTE, kind=RouteKind.DELIVER, hops=(literal,), tls=self._default_tls)
        return Route(
            name=DEFAULT_ROUTE,
            kind=RouteKind.DELIVER,
            hops=(NextHop(host=domain, port=None, literal=False, mx=True),),
            tls=self._default_tls,
        )

    def _match(self, domain: str, sender: str, group: str | None,
               user: str | None) -> tuple[Route, bool] | None:
        """The configured route that decides for a normalised domain, and whether its MX
        hops are named for the domain (_for; a sender route's are not). None: an address
        literal without an exact route, or no route at all (route() makes those)."""
        if not domain:
            return None
        exact = self._exact.get(domain)
        if exact is not None:
            return exact, True
        if domain.startswith("["):
            return None
        for key, route in self._wildcards:
            if match.domain_matches(key, domain):
                return route, True
        for sender_route in self._sender_routes:
            if sender_route.matches(sender=sender, group=group, user=user):
                return sender_route.route, False
        if self._catch_all is not None:
            return self._catch_all, True
        return None

    def etrn_refusal(self, domain: str, client_ip: match.IPAddress) -> tuple[str, str | None]:
        """May this client start the queue of `domain` with ETRN (RFC 1985)? Returns the
        name of the route that decides and None, or the reason it may not. The route is
        the one mail for the domain takes from an unknown sender (domain routes decide;
        sender routes never match an empty sender)."""
        route = self.route(domain, sender="", group=None, user=None)
        if not route.etrn:
            return route.name, "ETRN is not enabled for this domain"
        if route.etrn_networks and match.first_network(route.etrn_networks, client_ip) is None:
            return route.name, "this client may not start the domain's queue"
        return route.name, None

    def atrn_domains(self, user: str) -> tuple[str, ...]:
        """The domains whose mail this authenticated user may collect with ATRN: exact
        domain routes that name the user (the config allows atrn_users nowhere else)."""
        who = user.casefold()
        return tuple(sorted(domain for domain, route in self._exact.items()
                            if who in route.atrn_users))

    @staticmethod
    def _for(route: Route, domain: str) -> Route:
        if not any([hop.mx for hop in route.hops]):
            return route
        hops = tuple(
            NextHop(host=domain, port=hop.port, literal=False, mx=True) if hop.mx else hop
            for hop in route.hops
        )
        return replace(route, hops=hops)
