"""Turn a validated `Config` into what the parts run with: the pure values (`Policy`,
`Router`) and each part's runtime settings and objects (listener contexts, TLS contexts,
delivery and badmail settings, DNS, AUTH checkers, logs, screening, milters, recipient
validation). The one place config becomes runtime objects (issue 17, point 3): app.py only
wires what these return."""

from __future__ import annotations

import functools
import ssl
import time
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from relaywarden import metrics
from relaywarden.auth import Backend, ChainBackend
from relaywarden.auth.cram import CramSecrets
from relaywarden.auth.throttle import AuthThrottle, ThrottleSettings
from relaywarden.auth.users import LocalBackend, UserFile
from relaywarden.config.errors import dotted_key
from relaywarden.config.load import DEFAULT_SOURCE
from relaywarden.delivery.badmail import BadmailSettings
from relaywarden.delivery.engine import DeliverySettings
from relaywarden.logs.files import RotatingFile, Rotation
from relaywarden.logs.maillog import MailLog
from relaywarden.logs.protocol import W3C_HEADER, W3C_OUTBOUND_HEADER, ProtocolLog
from relaywarden.milter import MilterSpec
from relaywarden.policy.recipients import UnknownThrottle
from relaywarden.resolver import DnsSettings, Resolver
from relaywarden.screening import Screener, ScreenRules
from relaywarden.server.context import Limits, ListenerContext, ListenerTlsMode
from relaywarden.server.tls import CertificateError, server_context
from relaywarden.server.validate import RecipientValidator, route_hops
from relaywarden.smtp.server import BareLineEnds, ServerSettings
from relaywarden.config.schema import Config, GroupConfig, HopConfig, ListenerConfig, parse_next_hop
from relaywarden.delivery.routing import MX_PLACEHOLDER, NextHop, Route, RouteKind, Router, SenderRoute
from relaywarden.policy.dnsbl import parse_site

if TYPE_CHECKING:
    from relaywarden.oauth import OAuthLogin
from relaywarden.policy import (
    AccessRules,
    Action,
    ClientGroup,
    Gates,
    ListenerPolicy,
    Policy,
)


def _group(name: str, group: GroupConfig) -> ClientGroup:
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


def _listener(cfg: Config, name: str, listener: ListenerConfig, groups: dict[str, ClientGroup]) -> ListenerPolicy:
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


def _route(name: str, settings: HopConfig, *, hold: bool = False,
           oauth: dict | None = None, cfg: Config | None = None) -> Route:
    assert settings.tls is not None   # filled from delivery.tls by the schema
    from relaywarden.delivery import courier

    # A next hop that is not SMTP ("graph:NAME"): the schema made it the route's only one.
    couriers = [found for text in settings.next_hops if (found := courier.split(text))]
    # Routes with a courier are built from a whole config (build_router passes it).
    assert cfg is not None or not couriers
    password: str | OAuthLogin | None = (
        None if settings.password is None else settings.password.get_secret_value())
    if settings.auth in ("xoauth2", "oauthbearer"):
        # The secret is a token of the provider, fetched when the connection logs in.
        from relaywarden.oauth import OAuthLogin

        assert oauth is not None        # build_router passes the providers of [oauth.*]
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


# --- The runtime settings of each part (app.py only wires what these return). ---------

def build_listener_contexts(cfg: Config) -> dict[str, ListenerContext]:
    contexts = {}
    assert cfg.relay.postmaster is not None          # filled by the schema
    for name, lc in cfg.listeners.items():
        assert lc.max_message_size is not None       # filled from relay.max_message_size
        bare = BareLineEnds.NORMALIZE if lc.line_endings.bare_lf == "normalize" else BareLineEnds.REJECT
        settings = ServerSettings(
            hostname=cfg.relay.hostname,
            max_message_size=lc.max_message_size,
            max_recipients=lc.max_recipients,
            max_errors=lc.max_errors,
            bare_line_ends=bare,
            starttls=lc.tls.mode in ("starttls", "required"),
            auth_mechanisms=((("PLAIN", "LOGIN", "CRAM-MD5") if cfg.auth.cram_md5_file
                              else ("PLAIN", "LOGIN")) if lc.auth.enabled else ()),
            etrn=any(route.etrn for route in cfg.routes.values()),
            atrn=any(route.atrn_users for route in cfg.routes.values()),
        )
        contexts[name] = ListenerContext(
            name=name,
            hostname=cfg.relay.hostname,
            banner=lc.banner,
            settings=settings,
            command_timeout=float(lc.command_timeout),
            data_timeout=float(lc.data_timeout),
            postmaster=cfg.relay.postmaster,
            normalize_networks=tuple(lc.line_endings.normalize_networks),
            reverse_lookups=cfg.dns.reverse_lookups,
            tls_mode=ListenerTlsMode(lc.tls.mode),
            limits=Limits(
                max_connections=lc.limits.max_connections,
                max_connections_per_ip=lc.limits.max_connections_per_ip,
                messages_per_window=lc.limits.messages_per_window,
                recipients_per_window=lc.limits.recipients_per_window,
                window=lc.limits.window,
                max_hops=cfg.relay.max_hops,
            ),
            milters=tuple(build_milter_spec(cfg, m) for m in lc.milters),
        )
    return contexts


def build_milter_spec(cfg: Config, name: str) -> MilterSpec:
    m = cfg.milters[name]
    return MilterSpec(name=name, socket=m.socket, connect_timeout=float(m.connect_timeout),
                      command_timeout=float(m.command_timeout),
                      eom_timeout=float(m.eom_timeout), on_failure=m.on_failure)


def build_ssl_contexts(cfg: Config) -> dict[str, ssl.SSLContext | None]:
    """A fresh server TLS context per listener that has TLS (None for the others).

    Raises CertificateError (with the config key) when a file changed since validation."""
    contexts: dict[str, ssl.SSLContext | None] = {}
    for name, lc in cfg.listeners.items():
        tls = lc.tls
        if tls.mode == "none" or tls.cert_file is None or tls.key_file is None:
            contexts[name] = None
            continue
        try:
            contexts[name] = server_context(cert_file=tls.cert_file, key_file=tls.key_file,
                                            min_version=tls.min_version)
        except CertificateError as exc:
            raise CertificateError(exc.key, f"listeners.{name}.tls.{exc.key}: {exc}") from None
    return contexts


def build_validator(cfg: Config, resolver: Resolver) -> RecipientValidator | None:
    """Recipient validation ([recipients."DOMAIN"]), or None when none is configured."""
    if not cfg.recipients:
        return None
    directory = None
    if cfg.auth.ldap is not None and any(rv.ldap for rv in cfg.recipients.values()):
        from relaywarden.auth.ldap import LdapBackend   # ldap3: only with [auth.ldap]

        directory = LdapBackend(build_ldap_settings(cfg))
    return RecipientValidator(cfg.recipients, helo=cfg.delivery.helo_name or cfg.relay.hostname,
                              hops=route_hops(build_router(cfg), resolver, cfg.delivery.mx_port),
                              directory=directory)


def build_recipient_throttle(cfg: Config) -> UnknownThrottle:
    t = cfg.recipient_throttle
    return UnknownThrottle(delays=tuple(t.delays), connection_limit=t.connection_limit,
                           client_limit=t.client_limit, window=t.window, clock=time.monotonic)


def build_cram(cfg: Config) -> CramSecrets | None:
    path = cfg.auth.cram_md5_file
    return None if path is None else CramSecrets.load(path)


def build_screener(cfg: Config) -> Screener | None:
    s = cfg.screening
    rules = ScreenRules(blocked_extensions=frozenset(s.blocked_extensions),
                        blocked_content_types=frozenset(s.blocked_content_types),
                        max_attachment_size=s.max_attachment_size,
                        look_inside_zip=s.look_inside_zip)
    return Screener(rules=rules, action=s.action, scope=s.scope) if rules.active else None


def build_delivery_settings(cfg: Config) -> DeliverySettings:
    d = cfg.delivery
    # Both filled by the schema (relay.hostname, "postmaster@" + hostname).
    assert d.helo_name is not None and cfg.relay.postmaster is not None
    return DeliverySettings(
        hostname=cfg.relay.hostname, helo=d.helo_name, postmaster=cfg.relay.postmaster,
        max_concurrent=d.max_concurrent, per_destination=d.per_destination,
        retry_schedule=tuple(d.retry_schedule), expire_after=d.expire_after,
        delay_notice_after=d.delay_notice_after or 0, mx_port=d.mx_port,
        connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
        data_timeout=d.data_timeout, ca_file=str(d.ca_file) if d.ca_file else None,
        ndr_copy_to=d.ndr_copy_to,
    )


def build_badmail_settings(cfg: Config) -> BadmailSettings:
    b = cfg.badmail
    return BadmailSettings(directory=b.dir, notify=b.notify, notify_interval=b.notify_interval,
                           command=tuple(b.command), hostname=cfg.relay.hostname,
                           postmaster=cfg.relay.postmaster,
                           config_path=None if cfg.source == DEFAULT_SOURCE
                           else str(Path(cfg.source).absolute()))


def build_auth(cfg: Config) -> tuple[Backend | None, AuthThrottle]:
    """The password checkers, in the configured order, and the brute-force throttle."""
    a = cfg.auth
    found: dict[str, Backend] = {}
    if a.users_file is not None:
        found["local"] = LocalBackend(UserFile(a.users_file))
    if a.ldap is not None:
        from relaywarden.auth.ldap import LdapBackend   # ldap3: only with [auth.ldap]

        found["ldap"] = LdapBackend(build_ldap_settings(cfg))
    backends = [found[name] for name in a.order if name in found]
    backend = None if not backends else backends[0] if len(backends) == 1 else ChainBackend(backends)
    t = a.throttle
    throttle = AuthThrottle(ThrottleSettings(delays=tuple(t.delays), client_limit=t.client_limit,
                                             user_limit=t.user_limit, window=t.window,
                                             lockout=t.lockout))
    return backend, throttle


def build_resolver(cfg: Config) -> Resolver:
    return Resolver(DnsSettings(nameservers=tuple(str(n) for n in cfg.dns.nameservers),
                                port=cfg.dns.port, timeout=cfg.dns.timeout))


def build_logs(cfg: Config) -> tuple[MailLog, ProtocolLog | None]:
    log = cfg.log
    directory = cfg.log_dir
    rotation = Rotation(log.rotate)

    def series(prefix: str, suffix: str, header: str = "") -> RotatingFile:
        out = RotatingFile(directory, prefix=prefix, suffix=suffix, rotation=rotation,
                           max_size=log.max_size, keep=log.keep, header=header)
        # Lines a full disk did not take (issue 14 item 1): relaywarden_log_lines_lost.
        out.on_lost = functools.partial(metrics.log_lines_lost, f"{prefix}{suffix}")
        return out

    mail = MailLog(series("mail", ".log") if log.mail else None, observer=metrics.observe)
    protocol = None
    if log.protocol:
        protocol = ProtocolLog(
            w3c=series("ex", ".log", W3C_HEADER) if "w3c" in log.protocol_formats else None,
            jsonl=series("ex", ".jsonl") if "json" in log.protocol_formats else None,
        )
    return mail, protocol


def build_outbound_log(cfg: Config) -> ProtocolLog | None:
    """The protocol log of the sessions the relay opens (outYYMMDD.log/.jsonl): written by
    the delivering process, and by the receiving one for ATRN."""
    log = cfg.log
    if not log.outbound_protocol:
        return None

    def series(suffix: str, header: str = "") -> RotatingFile:
        out = RotatingFile(cfg.log_dir, prefix="out", suffix=suffix,
                           rotation=Rotation(log.rotate), max_size=log.max_size,
                           keep=log.keep, header=header)
        out.on_lost = functools.partial(metrics.log_lines_lost, f"out{suffix}")
        return out

    return ProtocolLog(
        w3c=series(".log", W3C_OUTBOUND_HEADER) if "w3c" in log.protocol_formats else None,
        jsonl=series(".jsonl") if "json" in log.protocol_formats else None)


def build_oauth_providers(cfg: Config) -> dict:
    if not cfg.oauth:
        return {}
    from relaywarden.oauth import providers

    return providers(cfg)
