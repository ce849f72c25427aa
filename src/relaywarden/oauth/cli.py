"""`relaywarden oauth status | test NAME [--smtp] | login NAME` (issue 12)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from relaywarden.admin.configfile import CONFIG_HELP, load_config_or_exit as _load


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    left = epoch - time.time()
    if abs(left) < 86400 * 2:
        text += f" (in {int(left)}s)" if left >= 0 else f" ({int(-left)}s ago)"
    return text


def _provider(cfg, name: str):
    from relaywarden.oauth import providers

    found = providers(cfg)
    if name not in found:
        known = ", ".join(found) or "none defined"
        click.echo(f"relaywarden: no provider oauth.{name} (providers: {known})", err=True)
        sys.exit(2)
    return found[name]


@click.group()
def oauth() -> None:
    """OAuth2 token providers ([oauth.NAME]) for next-hop AUTH XOAUTH2 / OAUTHBEARER."""


@oauth.command("status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per provider")
def status(config_path, as_json) -> None:
    """Per provider: flow, token expiry, last refresh, last error (from the token files;
    no network)."""
    from relaywarden.oauth import providers

    cfg = _load(config_path)
    found = providers(cfg)
    if not found:
        click.echo("no [oauth.NAME] providers configured")
        return
    for name, provider in found.items():
        st = provider.status()
        if as_json:
            click.echo(json.dumps(st))
            continue
        click.echo(f"oauth.{name}: {st['kind']}, flow {st['flow']}")
        click.echo(f"  token expires: {_when(st['token_expires'])}")
        click.echo(f"  last refresh:  {_when(st['last_refresh'])}")
        if st["flow"] == "refresh_token":
            click.echo(f"  refresh token: {'present' if st['refresh_token'] else 'none: run relaywarden oauth login ' + name}")
        error = st["last_error"]
        click.echo(f"  last error:    {error + ' (' + _when(st['last_error_at']) + ')' if error else '-'}")


@oauth.command("test")
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--refresh", is_flag=True, help="ask the platform for a new token even if one is good")
@click.option("--user", help="the mailbox (Google service accounts without subject; --smtp)")
@click.option("--smtp", is_flag=True, help="also log in to the next hop of each route using it")
def test(name, config_path, refresh, user, smtp) -> None:
    """Get a token of provider NAME (and with --smtp log in with it to the next hops of the
    routes that use it). Exit 1 with the platform's error when that fails."""
    from relaywarden.oauth import TokenError

    cfg = _load(config_path)
    provider = _provider(cfg, name)
    routes = [(table, hop) for table, hop in cfg._hop_tables() if hop.oauth == name]
    mailbox = user or next((hop.username for _, hop in routes), None)
    try:
        if refresh:
            token = provider.refresh_blocking(mailbox, stale=_current(provider, mailbox))
            access, expires = token.access_token, token.expires_at
        else:
            access = asyncio.run(provider.token(mailbox))
            expires = provider._memory[provider.cache_key(mailbox)].expires_at
    except TokenError as exc:
        click.echo(f"relaywarden: {exc.reason}", err=True)
        sys.exit(1)
    click.echo(f"oauth.{name}: token ok, expires {_when(expires)} ({len(access)} characters)")
    if smtp:
        if not routes:
            click.echo(f"relaywarden: no route uses oauth.{name}", err=True)
            sys.exit(1)
        failed = asyncio.run(_smtp_logins(cfg, routes))
        sys.exit(1 if failed else 0)


def _current(provider, user):
    token = provider._memory.get(provider.cache_key(user))
    if token is None:
        from relaywarden.oauth.tokens import read_state

        saved = (read_state(provider.state_path).get("tokens") or {}).get(provider.cache_key(user))
        return saved.get("access_token") if isinstance(saved, dict) else None
    return token.access_token


async def _smtp_logins(cfg, routes) -> int:
    """Connect, STARTTLS and AUTH to every next hop of the routes (no mail is sent)."""
    from relaywarden.config.build import build_router, next_hop
    from relaywarden.config.load import dotted_key
    from relaywarden.delivery.client import ClientPolicy, DeliveryError, OutboundConnection
    from relaywarden.config.build import build_resolver
    from relaywarden.resolver import MxStatus

    router = build_router(cfg)
    failed = 0
    resolver = None
    for table, hop_settings in routes:
        key = dotted_key(table)
        route = next((r for r in _all_routes(router) if r.name == key), None)
        if route is None:
            continue
        for text in hop_settings.next_hops:
            hop = next_hop(text)
            port = hop.port or cfg.delivery.mx_port
            addresses = [hop.host] if hop.literal else []
            if not hop.literal:
                resolver = resolver or build_resolver(cfg)
                result = await resolver.addresses(hop.host)
                if result.status is MxStatus.HOSTS:
                    addresses = [a for h in result.hosts for a in h.addresses]
            if not addresses:
                click.echo(f"{key}: {text}: host not found")
                failed += 1
                continue
            policy = ClientPolicy(
                helo=cfg.delivery.helo_name, tls=route.tls, implicit_tls=route.implicit_tls,
                ca_file=str(cfg.delivery.ca_file) if cfg.delivery.ca_file else None,
                server_name=hop.host, username=route.username, password=route.password,
                connect_timeout=cfg.delivery.connect_timeout,
                command_timeout=cfg.delivery.command_timeout)
            try:
                conn = await OutboundConnection.open(addresses[0], port, policy)
            except DeliveryError as err:
                click.echo(f"{key}: {text}: {err.stage}: {err.reply}")
                failed += 1
                continue
            click.echo(f"{key}: {text}: AUTH {conn.auth_mechanism} as {route.username} ok "
                       f"({conn.tls_version})")
            await conn.close()
    return failed


def _all_routes(router):
    yield from router._exact.values()
    yield from (route for _, route in router._wildcards)
    yield from (sr.route for sr in router._sender_routes)
    if router._catch_all is not None:
        yield router._catch_all


@oauth.command("login")
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Google: seconds to wait for the browser to come back")
def login(name, config_path, timeout) -> None:
    """Get and store the refresh token of a flow = "refresh_token" provider, for the relay.
    Microsoft: the device code flow (prints where to sign in and the code). Google: the
    installed-app flow (prints the URL to open in a browser; the browser comes back to a
    one-shot listener on 127.0.0.1 of this machine)."""
    from relaywarden.oauth import TokenError
    from relaywarden.oauth.tokens import Token

    cfg = _load(config_path)
    provider = _provider(cfg, name)
    s = provider.settings
    if s.flow != "refresh_token":
        click.echo(f"relaywarden: oauth login is for flow = \"refresh_token\" (oauth.{name} "
                   f"is {s.kind}, {s.flow})", err=True)
        sys.exit(2)
    if s.kind == "google":
        _google_login(provider, timeout)
        return
    try:
        app = provider.msal_app(public=True)
        flow = app.initiate_device_flow(scopes=s.scopes)
    except TokenError as exc:
        click.echo(f"relaywarden: {exc.reason}", err=True)
        sys.exit(1)
    if "user_code" not in flow:
        click.echo(f"relaywarden: oauth.{name}: {flow.get('error')}: "
                   f"{flow.get('error_description', '')}", err=True)
        sys.exit(1)
    click.echo(flow.get("message") or
               f"Open {flow['verification_uri']} and enter the code {flow['user_code']}")
    click.echo(f"(waiting up to {flow.get('expires_in', 900)}s for the sign-in)", err=True)
    result = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result or not result.get("refresh_token"):
        try:
            provider._msal_token(result)
        except TokenError as exc:
            click.echo(f"relaywarden: {exc.reason}", err=True)
        else:
            click.echo(f"relaywarden: oauth.{name}: no refresh token in the answer "
                       "(is offline_access allowed?)", err=True)
        sys.exit(1)
    token = Token(result["access_token"], time.time() + float(result.get("expires_in") or 3600))
    provider.store_refresh_token(result["refresh_token"], token)
    click.echo(f"oauth.{name}: signed in; refresh token stored in {provider.state_path}")


def _google_login(provider, timeout: float) -> None:
    from relaywarden.oauth import TokenError
    from relaywarden.oauth.installed import login as installed_login

    def show(url: str) -> None:
        # A browser on another machine ends on http://127.0.0.1:PORT/?... that it cannot
        # reach: that address, fetched here (curl), completes the sign-in.
        click.echo(f"Open this URL in a browser and sign in as the mailbox (browser on "
                   f"another machine: copy the http://127.0.0.1:... address it then fails "
                   f"to open, and run curl 'ADDRESS' on this machine):\n{url}")
        click.echo(f"(waiting up to {timeout:g}s for the sign-in)", err=True)

    try:
        installed_login(provider, timeout, show)
    except TokenError as exc:
        click.echo(f"relaywarden: {exc.reason}", err=True)
        sys.exit(1)
    click.echo(f"oauth.{provider.name}: signed in; refresh token stored in {provider.state_path}")
