"""Microsoft Graph as a next hop: ``next_hops = ["graph:NAME"]`` (issue 12).

For Exchange Online tenants where SMTP AUTH is off, each message is handed to Graph's
``POST /v1.0/users/{mailbox}/sendMail`` as MIME (the request body is the message, base64,
``Content-Type: text/plain``), with an app-only token of the ``[oauth.NAME]`` provider
(kind "microsoft", client credentials, scope ``{graph_endpoint}/.default``; the app needs
the Mail.Send application permission, best limited to the sending mailboxes with an
application access policy). The mailbox is the route's ``mailbox``, else the envelope
sender's address.

What Graph does with the envelope: it has none. In MIME mode it sends to the To, Cc and Bcc
of the message itself (and strips Bcc from what it delivers). Relaying means: every
recipient of the envelope, and only they, get the message, once. So the copy handed to
Graph has its To/Cc/Bcc rewritten (rewrite_recipients): To and Cc keep the addresses that
are envelope recipients of this delivery, every other envelope recipient goes in Bcc, and
header addresses that are not envelope recipients (already delivered, another route's,
or Bcc'd by the client to someone else) are dropped.

Graph's answers (https://learn.microsoft.com/graph/api/user-sendmail, .../graph/throttling,
.../graph/errors) as outcomes:

- 202 Accepted: delivered (Graph has taken it; like 250 to the final dot).
- 429, 503, 504: deferred, next attempt not before Retry-After (seconds or an HTTP date).
- 401: the token is refused: one new token and one more request; refused again: deferred.
- 403 ErrorAccessDenied / Authorization_RequestDenied (the app lacks Mail.Send or an
  application access policy leaves the mailbox out) and other 5xx: deferred, an admin can
  mend it; never a bounce of everything the route carries.
- Any other 4xx: permanent, bounced with Graph's error code and message in the DSN.
- A message whose request would exceed Graph's 4 MB limit is bounced (552 5.3.4) without
  asking Graph. A token that cannot be had defers (the provider's error in the reason).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.policy
import email.utils
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaywarden.smtp.reply import Reply, reply

if TYPE_CHECKING:
    from relaywarden.config.schema import Config, HopConfig
    from relaywarden.delivery.courier import CourierContext
    from relaywarden.delivery.engine import Outcome
    from relaywarden.delivery.routing import Route
    from relaywarden.oauth import TokenProvider
    from relaywarden.queue.store import DueMessage, DueRecipient

__all__ = ["GRAPH_MAX_REQUEST", "GraphCourier", "SCHEME", "rewrite_recipients"]

#: sendMail's request limit: 4 MB, the base64 of the MIME message (about 3 MiB of message).
GRAPH_MAX_REQUEST = 4 * 1024 * 1024
#: Errors of the app's permissions, not of the message: an admin mends them; mail waits.
_ADMIN_ERRORS = {"ErrorAccessDenied", "Authorization_RequestDenied", "AccessDenied",
                 "MailboxNotEnabledForRESTAPI", "ErrorMailboxStoreUnavailable"}
_DEFER_STATUS = {429, 503, 504}


# --- the scheme: config ------------------------------------------------------------------

class GraphScheme:
    """``graph:NAME``: NAME is an [oauth.NAME] provider (see delivery.courier)."""

    def parse(self, rest: str) -> str:
        name = rest.strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"'graph:{rest}': after graph: comes the name of an [oauth.NAME] "
                             "provider")
        return name

    def check(self, rest: str, cfg: Config, settings: HopConfig) -> list[tuple[tuple, str]]:
        index = settings.next_hops.index(f"graph:{rest}")
        provider = cfg.oauth.get(rest)
        if provider is None:
            known = ", ".join(cfg.oauth) or "none defined"
            return [(("next_hops", index), f"graph:{rest}: unknown oauth provider {rest!r} "
                     f"(providers: {known})")]
        found: list[tuple[tuple, str]] = []
        if provider.kind != "microsoft" or provider.flow != "client_credentials":
            found.append((("next_hops", index), f'graph:{rest}: oauth.{rest} must be kind = '
                          '"microsoft" with flow = "client_credentials" (Graph sendMail '
                          "with an app-only token, Mail.Send)"))
        for key in ("username", "auth_without_tls", "implicit_tls"):
            if key in settings.model_fields_set:
                found.append(((key,), "not used with a graph: next hop"))
        if settings.oauth is not None:
            found.append((("oauth",), "not used with a graph: next hop (it names its provider)"))
        for table, other in cfg._hop_tables():
            if other.oauth == rest:
                from relaywarden.config.load import dotted_key

                found.append((("next_hops", index), f"graph:{rest}: oauth.{rest} is also used "
                              f"for SMTP AUTH by {dotted_key(table)}; a token serves one API: "
                              "define a second provider"))
                return found
        # One token has one audience: a provider used for Graph asks for Graph's scope
        # (what the schema filled in for SMTP is replaced; anything else is a mistake).
        from relaywarden.config.schema import DEFAULT_SCOPES

        scope = f"{provider.graph_endpoint}/.default"
        if provider.scopes == DEFAULT_SCOPES.get((provider.kind, provider.flow or "")):
            provider.scopes = [scope]
        elif provider.scopes != [scope]:
            found.append((("next_hops", index), f"graph:{rest}: oauth.{rest}.scopes must be "
                          f'["{scope}"] (or left out) for Graph'))
        return found

    def build(self, rest: str, cfg: Config, settings: HopConfig, *, route: str) -> GraphCourier:
        from relaywarden.oauth import providers

        provider = providers(cfg)[rest]
        return GraphCourier(provider=provider, mailbox=settings.mailbox, route=route)


SCHEME = GraphScheme()


# --- the envelope: To/Cc/Bcc ---------------------------------------------------------------

_RECIPIENT_FIELDS = {b"to", b"cc", b"bcc"}


def _split_header(data: bytes) -> tuple[list[bytes], bytes]:
    """(the header's fields, each with its folded lines and line ending; the rest: the
    blank line and the body). A message without a blank line is all header."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
        head, rest = (data, b"") if end < 0 else (data[:end + 1], data[end + 1:])
    else:
        head, rest = data[:end + 2], data[end + 2:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line          # a folded continuation (RFC 5322 2.2.3)
        else:
            fields.append(line)
    return fields, rest


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) of header values, as RFC 5322 3.4 address lists (groups
    flattened); encoded words in names decoded."""
    out = []
    for name, addr in email.utils.getaddresses(values):
        if "@" not in addr:
            continue
        try:
            name = str(email.policy.default.header_factory("x", name)) if name else ""
        except Exception:  # noqa: BLE001 - a name that does not decode: go without it
            name = ""
        out.append((name, addr))
    return out


def _field(name: str, pairs: list[tuple[str, str]], utf8: bool) -> bytes:
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    parts = []
    for display, addr in pairs:
        local, _, domain = addr.rpartition("@")
        try:
            parts.append(str(Address(display_name=display, username=local, domain=domain)))
        except (ValueError, TypeError):
            parts.append(f"<{addr}>")
    # A header object folds the way RFC 5322 2.2.3 and RFC 2047 want (non-ASCII display
    # names as encoded words, unless the message is SMTPUTF8, RFC 6532).
    header = policy.header_factory(name, ", ".join(parts))
    return header.fold(policy=policy).encode("utf-8" if utf8 else "ascii", "replace")


def rewrite_recipients(data: bytes, recipients: Sequence[str], *, utf8: bool = False) -> bytes:
    """The message with To/Cc/Bcc rewritten so that Graph, which sends to the header's
    addresses, sends to exactly `recipients` (the envelope), each once: To and Cc keep the
    addresses that are envelope recipients (first mention wins), the other envelope
    recipients go in Bcc (Graph delivers Bcc and strips the header), header addresses not
    in the envelope are dropped. Every other header field and the body are kept byte for
    byte (the new fields take the place of the first recipient field)."""
    fields, rest = _split_header(data)
    wanted = {a.casefold(): a for a in recipients}
    found: dict[bytes, list[str]] = {b"to": [], b"cc": []}
    kept: list[bytes] = []
    at = None
    for f in fields:
        name = f.split(b":", 1)[0].strip().lower() if b":" in f else b""
        if name in _RECIPIENT_FIELDS:
            if at is None:
                at = len(kept)
            if name in found:
                found[name].append(f.split(b":", 1)[1].decode("utf-8", "replace"))
            continue
        kept.append(f)
    placed: set[str] = set()
    new: list[bytes] = []
    for name, header in ((b"to", "To"), (b"cc", "Cc")):
        pairs = []
        for display, addr in _addresses(found[name]):
            key = addr.casefold()
            if key in wanted and key not in placed:
                placed.add(key)
                pairs.append((display, addr))
        if pairs:
            new.append(_field(header, pairs, utf8))
    bcc = [("", addr) for key, addr in wanted.items() if key not in placed]
    if bcc:
        new.append(_field("Bcc", bcc, utf8))
    if at is None:
        at = len(kept)
    kept[at:at] = new
    return b"".join(kept) + rest


# --- the courier -------------------------------------------------------------------------

_CLIENTS: dict[tuple, Any] = {}


def _client(ca_file: str | None, timeout: float, connect_timeout: float):
    """One httpx client (its connection pool) per event loop and TLS settings: requests
    to Graph reuse connections across messages and config reloads."""
    import httpx

    key = (id(asyncio.get_running_loop()), ca_file, timeout, connect_timeout)
    client = _CLIENTS.get(key)
    if client is None or client.is_closed:
        client = _CLIENTS[key] = httpx.AsyncClient(
            verify=ca_file or True,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"User-Agent": "relaywarden"})
    return client


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    code: str             # Graph's error code ("" for none)
    message: str
    retry_after: float | None
    request_id: str
    tls: str = ""         # TLS version and cipher of the request


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP date; the seconds to wait."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class GraphCourier:
    def __init__(self, *, provider: TokenProvider, mailbox: str | None, route: str) -> None:
        self.provider = provider
        self.mailbox = mailbox
        self.route = route
        # The schema fills graph_endpoint in for a provider a graph: route uses.
        self.endpoint: str = str(provider.settings.graph_endpoint)
        self.label = f"graph:{provider.name}"
        self._host = urllib.parse.urlsplit(self.endpoint).netloc

    def __repr__(self) -> str:
        return f"GraphCourier({self.label}, mailbox={self.mailbox!r})"

    async def deliver(self, message: DueMessage, body: bytes | Path,
                      recipients: Sequence[DueRecipient], route: Route,
                      context: CourierContext) -> list[Outcome]:
        from relaywarden.delivery.engine import Kind, Outcome

        remote = f"{self._host} ({self.label})"

        def every(kind: Kind, answer: Reply, *, ours: bool = True,
                  retry_at: float | None = None, tls: str = "") -> list[Outcome]:
            return [Outcome(r, kind, answer, remote, route=route.name, tls=tls,
                            synthesized=ours, retry_at=retry_at) for r in recipients]

        mailbox = self.mailbox or message.sender
        if not mailbox:
            # A bounce or notice (null sender) has no mailbox to send as: an admin sets one.
            return every(Kind.DEFERRED, reply(451, "4.3.5", f"{self.label}: the null sender has "
                                              f"no mailbox to send as; set mailbox on {route.name}"))
        size = message.size if isinstance(body, Path) else len(body)
        if _encoded(size) > GRAPH_MAX_REQUEST:
            return every(Kind.BOUNCED, _too_big(size))
        data = body if isinstance(body, bytes) else await asyncio.to_thread(body.read_bytes)
        data = rewrite_recipients(data, [r.address for r in recipients], utf8=message.smtputf8)
        if _encoded(len(data)) > GRAPH_MAX_REQUEST:
            return every(Kind.BOUNCED, _too_big(len(data)))
        payload = base64.b64encode(data)
        from relaywarden.oauth import TokenError

        stale = None
        for attempt in (1, 2):
            try:
                token = await self.provider.token(mailbox, stale=stale)
            except TokenError as exc:
                # Never a bounce: a token is an admin's to mend (issue 12).
                return every(Kind.DEFERRED, reply(451, "4.7.0", f"no OAuth token: {exc.reason}"))
            answer = await self._post(mailbox, payload, token, message, route, context)
            if answer.status != 401 or attempt == 2:
                break
            stale = token      # refused: one new token, one more request
        return self._outcomes(answer, every, context)

    def _outcomes(self, answer: _Answer, every, context: CourierContext) -> list[Outcome]:
        from relaywarden.delivery.engine import Kind

        graph = f"Graph sendMail {answer.status}"
        detail = f"{answer.code}: {answer.message}" if answer.code else answer.message
        rid = f" (request-id {answer.request_id})" if answer.request_id else ""
        if answer.status == 202:
            return every(Kind.DELIVERED, reply(250, "2.0.0", f"{graph} Accepted{rid}"),
                         ours=False, tls=answer.tls)
        text = f"{self.label}: {graph} {detail}{rid}".rstrip()
        if answer.status == 0:           # no answer: network, timeout, TLS
            return every(Kind.DEFERRED, reply(451, "4.4.1", text))
        if answer.status in _DEFER_STATUS:
            retry_at = (None if answer.retry_after is None
                        else context.clock() + answer.retry_after)
            return every(Kind.DEFERRED, reply(451, "4.4.5" if answer.status == 429 else "4.4.2",
                                              text), ours=False, retry_at=retry_at)
        if answer.status == 401:
            return every(Kind.DEFERRED, reply(454, "4.7.0", f"{text}; refused a new token too"),
                         ours=False)
        if answer.code in _ADMIN_ERRORS:
            return every(Kind.DEFERRED, reply(451, "4.7.1", text), ours=False)
        if answer.status >= 500 or answer.status < 400:
            return every(Kind.DEFERRED, reply(451, "4.4.2", text), ours=False)
        if answer.status == 413:
            return every(Kind.BOUNCED, reply(552, "5.3.4", text), ours=False)
        # Other 4xx: the request is wrong and will be wrong again (RFC 3463: 5.x.x).
        enhanced = "5.7.1" if answer.status == 403 else "5.1.0" if answer.status == 404 else "5.6.0"
        return every(Kind.BOUNCED, reply(554 if enhanced == "5.6.0" else 550, enhanced, text),
                     ours=False)

    async def _post(self, mailbox: str, payload: bytes, token: str, message: DueMessage,
                    route: Route, context: CourierContext) -> _Answer:
        import httpx

        s = context.settings
        client = _client(str(self.provider.settings.ca_file) if self.provider.settings.ca_file
                         else None, s.data_timeout, s.connect_timeout)
        path = f"/v1.0/users/{urllib.parse.quote(mailbox, safe='@')}/sendMail"
        started = time.monotonic()
        status, received, code, text, retry, rid = 0, 0, "", "", None, ""
        peer, local, tls = ("", 0), ("", 0), ""
        try:
            response = await client.post(
                self.endpoint + path, content=payload,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
            status, received = response.status_code, len(response.content)
            rid = response.headers.get("request-id", "")
            retry = _retry_after(response.headers.get("Retry-After"), context.clock())
            if status != 202:
                code, text = _graph_error(response)
            peer, local, tls = _connection_info(response, peer, local)
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._log(context, route, mailbox, path, status, received, len(payload), started,
                  message.queue_id, peer, local)
        return _Answer(status, code, " ".join(text.split())[:300], retry, rid, tls)

    def _log(self, context: CourierContext, route: Route, mailbox: str, path: str,
             status: int, received: int, sent: int, started: float, queue_id: str,
             peer: tuple, local: tuple) -> None:
        """One outbound protocol log line per request, as the SMTP path's: the route as
        s-sitename, Graph's host as s-computername, the mailbox as cs-username."""
        if context.protocol_log is None:
            return
        host = urllib.parse.urlsplit(self.endpoint)
        session = context.protocol_log.session(
            client_ip=str(local[0]), site=route.name, server_name=host.hostname or "",
            server_ip=str(peer[0]) if peer else "", server_port=host.port or 443)
        session.record(mailbox, "POST", path, status, received, sent,
                       int((time.monotonic() - started) * 1000), queue_id)


def _connection_info(response, peer: tuple, local: tuple) -> tuple[tuple, tuple, str]:
    """The addresses and TLS of the connection a response came over (for the logs only:
    whatever the transport does not tell is left out)."""
    stream = response.extensions.get("network_stream")
    info = getattr(stream, "get_extra_info", lambda name: None)
    tls = ""
    with contextlib.suppress(Exception):
        ssl_object = info("ssl_object")
        if ssl_object is not None:
            tls = f"{ssl_object.version()} {ssl_object.cipher()[0]}"
    with contextlib.suppress(Exception):
        sock = info("socket")
        if sock is not None:
            peer, local = sock.getpeername(), sock.getsockname()
    with contextlib.suppress(Exception):
        peer = info("server_addr") or peer
        local = info("client_addr") or local
    return peer, local, tls


def _encoded(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _too_big(size: int) -> Reply:
    return reply(552, "5.3.4", f"message too big for Microsoft Graph sendMail: {size} bytes "
                 f"are {_encoded(size)} in base64, over its {GRAPH_MAX_REQUEST} byte limit")


def _graph_error(response) -> tuple[str, str]:
    """Graph's error body: {"error": {"code": ..., "message": ...}}."""
    try:
        error = response.json().get("error") or {}
        return str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, AttributeError):
        return "", response.reason_phrase or ""
