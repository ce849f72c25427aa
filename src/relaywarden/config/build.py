"""Turn a validated `Config` into the pure values the parts use: `Policy`, `Router`."""

from __future__ import annotations

from ipaddress import ip_address

from relaywarden.config.errors import dotted_key
from relaywarden.config.schema import Config, GroupSettings, HopSettings, ListenerSettings, parse_next_hop
from relaywarden.delivery.routing import MX_PLACEHOLDER, NextHop, Route, RouteKind, Router, SenderRoute
from relaywarden.policy.dnsbl import parse_site
from relaywarden.policy import (
    AccessRules,
    Action,
    ClientGroup,
    Gates,
    ListenerPolicy,
    Policy,
)


def _group(name: str, group: GroupSettings) -> ClientGroup:
    return ClientGroup(
        name=name,
        networks=tuple(group.networks),
        hostnames=tuple(group.hostnames),
        users=tuple(group.users),
        directory_groups=tuple(group.directory_groups),
        recipient_domains=None if group.recipient_domains is None else tuple(group.recipient_domains),
        senders=None if group.senders is None else tuple(group.senders),
        on_violation=Action.BADMAIL if group.on_violation == "badmail" else Action.REJECT,
    )


def _listener(cfg: Config, name: str, listener: ListenerSettings, groups: dict[str, ClientGroup]) -> ListenerPolicy:
    return ListenerPolicy(
        name=name,
        access=AccessRules(
            default=Action.ACCEPT if listener.access.default == "allow" else Action.REJECT,
            allow=tuple(listener.access.allow),
            deny=tuple(listener.access.deny),
        ),
        relay_networks=tuple(listener.relay.networks),
        relay_authenticated=listener.relay.authenticated,
        # listener.groups is resolved by the schema: names in file order.
        groups=tuple(groups[group] for group in listener.groups or ()),
        hosted_domains=tuple(cfg.relay.hosted_domains),
        postmaster=cfg.relay.postmaster or f"postmaster@{cfg.relay.hostname}",
        gates=Gates(
            tls_mode=listener.tls.mode,
            tls_optional_networks=tuple(listener.tls.optional_networks),
            auth_enabled=listener.auth.enabled,
            auth_required=listener.auth.required,
            auth_plaintext_networks=tuple(listener.auth.plaintext_networks),
            require_rdns=listener.access.require_rdns,
            dnsbl=tuple(parse_site(text) for text in listener.access.dnsbl),
            dnswl=tuple(parse_site(text) for text in listener.access.dnswl),
            dnsbl_threshold=listener.access.dnsbl_threshold,
        ),
    )


def build_policy(cfg: Config) -> Policy:
    groups = {name: _group(name, group) for name, group in cfg.groups.items()}
    return Policy({name: _listener(cfg, name, listener, groups) for name, listener in cfg.listeners.items()})


def next_hop(text: str) -> NextHop:
    """A configured next hop ("mx", "[10.0.0.5]:25", "smtp.example.net:587") as a NextHop;
    "mx" becomes the placeholder the router fills with the recipient domain."""
    host, port = parse_next_hop(text)
    if host == "mx":
        return MX_PLACEHOLDER
    if host.startswith("["):
        return NextHop(host=str(ip_address(host[1:-1])), port=port, literal=True, mx=False)
    return NextHop(host=host, port=port, literal=False, mx=False)


def _route(name: str, settings: HopSettings, *, hold: bool = False,
           oauth: dict | None = None, cfg: Config | None = None) -> Route:
    assert settings.tls is not None   # filled from delivery.tls by the schema
    from relaywarden.delivery import courier

    # A next hop that is not SMTP ("graph:NAME"): the schema made it the route's only one.
    couriers = [found for text in settings.next_hops if (found := courier.split(text))]
    # Routes with a courier are built from a whole config (build_router passes it).
    assert cfg is not None or not couriers
    password = None if settings.password is None else settings.password.get_secret_value()
    if settings.auth in ("xoauth2", "oauthbearer"):
        # The secret is a token of the provider, fetched when the connection logs in.
        from relaywarden.oauth import OAuthLogin

        password = OAuthLogin(oauth[settings.oauth], settings.auth.upper())
    return Route(
        name=name,
        kind=RouteKind.HOLD if hold else RouteKind.DELIVER,
        etrn=getattr(settings, "etrn", False),
        etrn_networks=tuple(getattr(settings, "etrn_networks", ())),
        atrn_users=frozenset(user.casefold() for user in getattr(settings, "atrn_users", ())),
        hops=() if couriers else tuple(next_hop(text) for text in settings.next_hops),
        courier=courier.scheme_of(couriers[0][0]).build(couriers[0][1], cfg, settings, route=name)
        if couriers and cfg is not None else None,
        tls=settings.tls,
        implicit_tls=settings.implicit_tls,
        username=settings.username,
        password=password,
        auth_without_tls=settings.auth_without_tls,
    )


def build_router(cfg: Config) -> Router:
    oauth = None
    if cfg.oauth:
        from relaywarden.oauth import providers

        oauth = providers(cfg)
    return Router(
        routes={
            key: _route(dotted_key(("routes", key)), route, hold=route.hold, oauth=oauth,
                         cfg=cfg)
            for key, route in cfg.routes.items()
        },
        sender_routes=[
            SenderRoute(
                groups=tuple(route.groups),
                users=tuple(route.users),
                sender_domains=tuple(route.sender_domains),
                route=_route(dotted_key(("sender_routes", name)), route, oauth=oauth, cfg=cfg),
            )
            for name, route in cfg.sender_routes.items()
        ],
        default_tls=cfg.delivery.tls,
    )


def build_ldap_settings(cfg: Config):
    """The LDAP/AD checker's settings from ``[auth.ldap]`` (SMTP AUTH and console logins
    share them), or None when there is no such table."""
    from relaywarden.auth.ldap import LdapSettings

    l = cfg.auth.ldap
    if l is None:
        return None
    return LdapSettings(
        url=l.url, mode=l.mode, start_tls=l.start_tls,
        ca_file=str(l.ca_file) if l.ca_file else None, user_dn_template=l.user_dn_template,
        bind_dn=l.bind_dn, bind_password=l.bind_password(), search_base=l.search_base,
        search_filter=l.search_filter, group_attribute=l.group_attribute,
        group_search_base=l.group_search_base, group_filter=l.group_filter,
        group_name_attribute=l.group_name_attribute, timeout=l.timeout)
