"""The admin HTTP server: JSON API under /api/v1, the web console at /, /metrics.

Runs in the admin process (relaywarden.admin.worker) on uvicorn; the contract is
docs/admin.md. Security:

- log in with ``POST /api/v1/session`` (admin users file, or LDAP with a group listed in
  ``admin.ldap_roles``); the session lives in memory, its id is the ``rw_session`` cookie
  (HttpOnly, SameSite=Strict, Secure over TLS), it ends after ``admin.session_timeout``
  without a request or when the user is removed from the file;
- a cookie-authenticated POST/PUT/DELETE needs ``X-CSRF-Token`` with the session's token;
- or ``Authorization: Bearer rwt_...`` (``relaywarden admin-user token NAME``);
- roles viewer < operator < admin; failed logins are throttled like SMTP AUTH
  (auth.throttle), 429 when locked;
- every error is an RFC 9457 problem (application/problem+json), 400s name the ``field``;
  request bodies over 64 KiB are refused with 413.

Queue data is read on a read-only SQLite connection per request and changed through
QueueAdmin, each in a worker thread: the receiving and delivery processes never wait for
this one (only SQLite's own write lock, for the length of one admin transaction).
"""

from __future__ import annotations

import asyncio
import email.header
import email.parser
import email.policy
import hmac
import http
import ipaddress
import json
import math
import os
import re
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from relaywarden import __version__
from relaywarden.admin.accounts import AccountError, AdminAccounts, role_rank
from relaywarden.admin.openapi import openapi_document
from relaywarden.config.schema import Config

MAX_BODY = 64 * 1024
MAX_SESSIONS = 10_000
STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "rw_session"
QUEUE_STATUSES = ("queued", "held", "badmail", "delivered", "bounced")
BULK_ACTIONS = ("hold", "release", "retry", "delete")
#: The mail-log event an action is written with (as `relaywarden queue ...` does).
#: The mail-log event of each admin action: its own name (a grep for "hold" finds holds).
AUDIT_EVENT = {kind: kind for kind in ("retry", "hold", "release", "delete", "flush",
                                       "badmail-release", "badmail-delete")}
#: Log lines wait this long (after their own time stamp) so that lines the two writing
#: processes flushed out of order are sent in order.
REORDER_SECONDS = 2.0
SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


# ---------------------------------------------------------------------------- problems


class Problem(Exception):
    """An RFC 9457 problem: raised anywhere in a handler, answered by `_problem_handler`."""

    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers or {}
        self.extra = extra or {}     # RFC 9457 3.2 extension members


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        # ASCII only: a lone surrogate from an 8-bit header can never make this fail.
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def problem_response(status: int, detail: str, *, field: str | None = None,
                     headers: dict[str, str] | None = None,
                     extra: dict[str, Any] | None = None) -> Response:
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if field is not None:
        body["field"] = field
    body.update(extra or {})
    return JSON(body, status_code=status, headers=headers, media_type="application/problem+json")


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problem_response(exc.status, exc.detail, field=exc.field, headers=exc.headers,
                                extra=exc.extra)
    if isinstance(exc, HTTPException):
        detail = {404: "no such resource", 405: "method not allowed here"}.get(
            exc.status_code, str(exc.detail))
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))
    print(f"relaywarden: admin: {request.method} {request.url.path}: {exc!r}",
          file=sys.stderr, flush=True)
    return problem_response(500, "internal error (see the relay's log)")


@overload
def _text(value: Any, field: str, *, required: Literal[True], max_len: int = 998) -> str: ...
@overload
def _text(value: Any, field: str, *, required: bool = False, max_len: int = 998) -> str | None: ...
def _text(value: Any, field: str, *, required: bool = False, max_len: int = 998) -> str | None:
    if value is None:
        if required:
            raise Problem(400, "missing", field=field)
        return None
    if not isinstance(value, str):
        raise Problem(400, "expected a string", field=field)
    if required and not value.strip():
        raise Problem(400, "must not be empty", field=field)
    if len(value) > max_len:
        raise Problem(400, f"longer than {max_len} characters", field=field)
    return value


def _limit(request: Request, default: int = 50) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, "expected an integer between 1 and 1000", field="limit") from None
    if not 1 <= value <= 1000:
        raise Problem(400, "expected an integer between 1 and 1000", field="limit")
    return value


@overload
def _choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str: ...
@overload
def _choice(request: Request, name: str, choices: tuple[str, ...], default: str | None = None
            ) -> str | None: ...
def _choice(request: Request, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    value = request.query_params.get(name, default)
    if value is not None and value not in choices:
        raise Problem(400, f"one of {', '.join(choices)}", field=name)
    return value


def _bool(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise Problem(400, "true or false", field=name)
    return value in ("true", "1")


async def read_json(request: Request) -> dict:
    """The request body as a JSON object; 413 past MAX_BODY, 400 when not an object."""
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > MAX_BODY:
            raise Problem(413, f"the request body is larger than {MAX_BODY} bytes")
    if not chunks.strip():
        return {}
    # Only JSON: a cross-site HTML form can send text/plain or form bodies without a
    # preflight, never application/json.
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise Problem(415, "send the body as application/json", field="body")
    try:
        data = json.loads(bytes(chunks))
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "the body is not JSON", field="body") from None
    if not isinstance(data, dict):
        raise Problem(400, "the body must be a JSON object", field="body")
    return data


class BodyLimit:
    """ASGI middleware: a declared Content-Length over MAX_BODY gets 413 before any handler
    (bodies without one are counted by read_json)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    try:
                        too_big = int(value) > MAX_BODY
                    except ValueError:
                        too_big = False
                    if too_big:
                        response = problem_response(
                            413, f"the request body is larger than {MAX_BODY} bytes",
                            headers={"Connection": "close"})
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Headers on every answer: no sniffing, no framing, no caching of API data."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/api/")

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy",
                          b"default-src 'self'; img-src 'self' data:; style-src 'self' "
                          b"'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                          b"form-action 'self'")]
                if api:
                    extra.append((b"cache-control", b"no-store"))
                message = dict(message, headers=headers + extra)
            await send(message)

        await self.app(scope, receive, wrapped)


# ---------------------------------------------------------------------------- state


@dataclass
class Session:
    sid: str
    user: str
    role: str
    csrf: str
    source: str                 # "file" or "ldap"
    last_seen: float


@dataclass
class Principal:
    user: str
    role: str
    session: Session | None = None     # None: an API token


@dataclass
class AdminState:
    cfg: Config
    config_path: Path | None
    loaded_at: float = field(default_factory=time.time)
    sessions: dict[str, Session] = field(default_factory=dict)
    accounts: AdminAccounts | None = None
    throttle: Any = None
    ldap: Any = None
    mail_log: Any = None
    # (cfg, resolver, recipient validator) that explain asks, kept so that their caches
    # live across questions (explain says "cached"); rebuilt when the config changes.
    explain_tools: Any = None
    clock: Callable[[], float] = time.monotonic
    #: Set when the process stops: open event streams end so that the server can stop.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def configure(self, cfg: Config) -> None:
        """(Re)build everything that comes from the config; sessions and the throttle's
        memory of failures are kept across a reload."""
        from relaywarden.auth.throttle import AuthThrottle, ThrottleSettings

        self.cfg = cfg
        self.loaded_at = time.time()
        self.accounts = AdminAccounts(cfg.admin.users_file) if cfg.admin.users_file else None
        if self.throttle is None:
            t = cfg.auth.throttle
            self.throttle = AuthThrottle(ThrottleSettings(
                delays=tuple(t.delays), client_limit=t.client_limit, user_limit=t.user_limit,
                window=t.window, lockout=t.lockout))
        self.ldap = _ldap_backend(cfg)
        if self.mail_log is None and cfg.log.mail:
            # As the CLI's audit lines: not counted by the metrics as mail traffic.
            from relaywarden.logs.files import RotatingFile, Rotation
            from relaywarden.logs.maillog import MailLog

            self.mail_log = MailLog(RotatingFile(
                cfg.log_dir, prefix="mail", suffix=".log", rotation=Rotation(cfg.log.rotate),
                max_size=cfg.log.max_size, keep=cfg.log.keep))

    def audit(self, kind: str, /, **fields: Any) -> None:
        """One mail-log line per admin action, with who did it (like the CLI's)."""
        from relaywarden.logs.maillog import MailEvent

        if self.mail_log is None or not self.cfg.log.mail:
            return
        self.mail_log.event(MailEvent(AUDIT_EVENT[kind]), **fields)
        self.mail_log.flush()


def _ldap_backend(cfg: Config):
    roles = cfg.admin.ldap_roles
    if cfg.auth.ldap is None or not (roles.admin or roles.operator or roles.viewer):
        return None
    from relaywarden.auth.ldap import LdapBackend
    from relaywarden.config.build import build_ldap_settings

    return LdapBackend(build_ldap_settings(cfg))


def ldap_role(cfg: Config, groups) -> str | None:
    """The highest role one of ``groups`` maps to in admin.ldap_roles (case-insensitive)."""
    have = {g.casefold() for g in groups}
    roles = cfg.admin.ldap_roles
    for role in ("admin", "operator", "viewer"):
        if any(g.casefold() in have for g in getattr(roles, role)):
            return role
    return None


def _state(request: Request) -> AdminState:
    return request.app.state.admin


def _principal(request: Request) -> Principal:
    """Who is asking (401 when nobody is), without a role or CSRF check."""
    state = _state(request)
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "use Authorization: Bearer <API token>",
                          headers={"WWW-Authenticate": 'Bearer realm="relaywarden"'})
        account = None
        if state.accounts is not None:
            try:
                account = state.accounts.by_token(token.strip())
            except AccountError as exc:
                print(f"relaywarden: admin: {exc}", file=sys.stderr, flush=True)
        if account is None:
            raise Problem(401, "unknown or revoked API token",
                          headers={"WWW-Authenticate": 'Bearer realm="relaywarden", error="invalid_token"'})
        return Principal(account.name, account.role)
    sid = request.cookies.get(COOKIE)
    session = state.sessions.get(sid) if sid else None
    now = state.clock()
    if session is not None and now - session.last_seen > state.cfg.admin.session_timeout:
        state.sessions.pop(session.sid, None)
        session = None
    if session is not None and session.source == "file":
        account = None
        if state.accounts is not None:
            try:
                account = state.accounts.get(session.user)
            except AccountError:
                account = None
        if account is None:                # removed from the file: the session ends
            state.sessions.pop(session.sid, None)
            session = None
        else:
            session.role = account.role    # a changed role applies at once
    if session is None:
        raise Problem(401, "log in first (POST /api/v1/session) or send an API token",
                      headers={"WWW-Authenticate": 'Bearer realm="relaywarden"'})
    session.last_seen = now
    return Principal(session.user, session.role, session)


def needs(role: str):
    """Decorator: the caller must have ``role`` (or higher); cookie state changes need CSRF."""
    def wrap(handler):
        async def endpoint(request: Request) -> Response:
            principal = _principal(request)
            if principal.session is not None and request.method in ("POST", "PUT", "PATCH", "DELETE"):
                sent = request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(sent.encode("utf-8", "replace"),
                                           principal.session.csrf.encode()):
                    raise Problem(403, "missing or wrong X-CSRF-Token header")
            if role_rank(principal.role) < role_rank(role):
                raise Problem(403, f"needs the {role} role (you are {principal.role})")
            request.state.principal = principal
            return await handler(request)
        endpoint.__name__ = handler.__name__
        return endpoint
    return wrap


def _user(request: Request) -> str:
    return request.state.principal.user


# ---------------------------------------------------------------------------- session


async def login(request: Request) -> Response:
    state = _state(request)
    body = await read_json(request)
    username = _text(body.get("username"), "username", required=True, max_len=256)
    password = _text(body.get("password"), "password", required=True, max_len=1024)
    client = request.client.host if request.client else "-"
    verdict = state.throttle.check(client=client, user=username)
    if verdict.locked:
        raise Problem(429, "too many failed logins; try again later",
                      headers={"Retry-After": str(max(1, math.ceil(verdict.retry_after)))})
    role = source = None
    name = username
    if state.accounts is not None:
        try:
            account = await asyncio.to_thread(state.accounts.verify, username, password)
        except AccountError as exc:
            print(f"relaywarden: admin: {exc}", file=sys.stderr, flush=True)
            account = None
        if account is not None:
            name, role, source = account.name, account.role, "file"
    if role is None and state.ldap is not None:
        result = await state.ldap.verify(username, password)
        if result.ok:
            role = ldap_role(state.cfg, result.groups)
            name, source = result.user or username, "ldap"
        elif result.temporary:
            raise Problem(503, "the directory did not answer; try again")
    if role is None:
        verdict = state.throttle.failure(client=client, user=username)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if verdict.locked:
            raise Problem(429, "too many failed logins; try again later",
                          headers={"Retry-After": str(max(1, math.ceil(verdict.retry_after)))})
        raise Problem(401, "wrong user name or password (or no console role)")
    assert source is not None       # set with role
    state.throttle.success(client=client, user=username)
    if len(state.sessions) >= MAX_SESSIONS:
        oldest = min(state.sessions.values(), key=lambda s: s.last_seen)
        state.sessions.pop(oldest.sid, None)
    session = Session(sid=secrets.token_urlsafe(32), user=name, role=role,
                      csrf=secrets.token_urlsafe(32), source=source, last_seen=state.clock())
    state.sessions[session.sid] = session
    response = JSON({"user": session.user, "role": session.role, "csrf_token": session.csrf})
    response.set_cookie(COOKIE, session.sid, httponly=True, samesite="strict",
                        secure=state.cfg.admin.tls, path="/")
    return response


@needs("viewer")
async def whoami(request: Request) -> Response:
    p = request.state.principal
    return JSON({"user": p.user, "role": p.role,
                 "csrf_token": p.session.csrf if p.session else None})


@needs("viewer")
async def logout(request: Request) -> Response:
    p = request.state.principal
    if p.session is not None:
        _state(request).sessions.pop(p.session.sid, None)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_state(request).cfg.admin.tls)
    return response


# ---------------------------------------------------------------------------- queue reads


def _ro(cfg: Config) -> sqlite3.Connection | None:
    path = cfg.data_dir / "queue.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.execute("PRAGMA query_only=ON")
    return db


def _cursor(received_at: float, queue_id: str) -> str:
    return f"{received_at!r}_{queue_id}"


def _parse_cursor(text: str, field: str) -> tuple[float, str]:
    at, sep, qid = text.partition("_")
    try:
        if not sep or not qid:
            raise ValueError
        value = float(at)
        if not math.isfinite(value):
            raise ValueError
        return value, qid
    except ValueError:
        raise Problem(400, "not a cursor from a previous page's 'next'", field=field) from None


_RECIPIENT_FIELDS = ("address", "status", "rule", "reason", "attempts", "next_attempt",
                     "last_error", "remote_mta", "held_by")


def _list_messages(cfg: Config, *, status: str | None, domain: str | None, sender: str | None,
                   recipient: str | None, limit: int, after: tuple[float, str] | None,
                   only_status: str | None = None) -> tuple[list[dict], str | None]:
    db = _ro(cfg)
    if db is None:
        return [], None
    try:
        # Hand-off: the log before the index (a message only moves from the log into the
        # index: read in this order it is seen at least once; in both, the index's wins).
        logged = []
        if status in (None, "queued") and only_status in (None, "queued"):
            logged = _logged_items(cfg, db, domain=domain, sender=sender, recipient=recipient,
                                   after=after)
        # Messages in queue-id order (ids are sortable by arrival time), walked along the
        # primary key until a page is full. A status is checked per message through the
        # recipients' primary key ("+r.status": never the status index, which SQLite
        # would otherwise scan once per message, minutes with 100,000 queued); a domain or
        # recipient is looked up through the domain index first.
        where, args = [], []
        if status:
            where.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                         " AND +r.status = ?)")
            args.append(status)
        if domain:
            where.append("m.id IN (SELECT message_id FROM recipients WHERE domain = ?)")
            args.append(domain.strip().lower().lstrip("@").rstrip("."))
        if recipient:
            where.append("m.id IN (SELECT message_id FROM recipients WHERE domain = ?"
                         " AND address = ? COLLATE NOCASE)")
            args += [recipient.strip().rpartition("@")[2].lower().rstrip("."), recipient.strip()]
        if sender:
            text = sender.strip()
            if "@" in text.lstrip("@"):
                where.append("m.sender = ? COLLATE NOCASE")
                args.append(text)
            else:
                where.append("lower(substr(m.sender, instr(m.sender, '@') + 1)) = ?")
                args.append(text.lstrip("@").lower())
        if after is not None:
            where.append("m.id > ?")
            args.append(after[1])
        sql = ("SELECT m.id, m.received_at, m.listener, m.client_ip, m.sender, m.size FROM messages m"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY m.id LIMIT ?")
        rows = db.execute(sql, args + [limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for mid, at, listener, ip, snd, size in rows:
            recipients = [dict(zip(_RECIPIENT_FIELDS, r)) for r in db.execute(
                f"SELECT {', '.join(_RECIPIENT_FIELDS)} FROM recipients WHERE message_id = ?"
                " ORDER BY idx", (mid,))]
            if only_status:
                recipients = [r for r in recipients if r["status"] == only_status]
            items.append({"id": mid, "received_at": at, "listener": listener, "client_ip": ip,
                          "sender": snd, "size": size, "recipients": recipients})
        ids = {m["id"] for m in items}
        logged = [m for m in logged if m["id"] not in ids]
        if logged:
            # Merged in queue-id order with the index's page (its limit + 1 rows).
            merged = sorted(items + logged, key=lambda m: m["id"])
            more = more or len(merged) > limit
            items = merged[:limit]
            nxt = _cursor(items[-1]["received_at"], items[-1]["id"]) if more else None
            return items, nxt
        nxt = _cursor(rows[-1][1], rows[-1][0]) if more and rows else None
        return items, nxt
    finally:
        db.close()


def _logged_items(cfg: Config, db: sqlite3.Connection, *, domain: str | None,
                  sender: str | None, recipient: str | None,
                  after: tuple[float, str] | None) -> list[dict]:
    """Hand-off (delivery.handoff): the messages on their first attempt, from the log, in
    the shape of the index's items, filtered as the query asks."""
    from relaywarden.queue import log as qlog
    from relaywarden.queue.store import logged_messages, logged_summary

    out = []
    for qid, (env, body) in logged_messages(qlog.directory(cfg.data_dir), db).items():
        if after is not None and qid <= after[1]:
            continue
        addresses = [r[0] for r in env["recipients"]]
        if domain and not any(a.rpartition("@")[2].lower() == domain.strip().lower()
                              .lstrip("@").rstrip(".") for a in addresses):
            continue
        if recipient and not any(a.lower() == recipient.strip().lower() for a in addresses):
            continue
        if sender:
            text = sender.strip()
            if "@" in text.lstrip("@"):
                if env["sender"].lower() != text.lower():
                    continue
            elif env["sender"].rpartition("@")[2].lower() != text.lstrip("@").lower():
                continue
        out.append(logged_summary(qid, env, body))
    return out


def _clean(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _headers(body: bytes) -> list[list[str]]:
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[:end + 2]
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    except Exception:  # noqa: BLE001 - a header the parser chokes on: show none
        return []
    out = []
    for name, value in msg.items():
        value = str(value)
        if "=?" in value:
            try:
                value = str(email.header.make_header(email.header.decode_header(value)))
            except Exception:  # noqa: BLE001 - keep the raw value
                pass
        out.append([_clean(str(name)), _clean(" ".join(value.split()))])
    return out


def _read(cfg: Config, work: Callable):
    """``work(reader)`` on a read-only view of the queue; None when there is no queue."""
    from relaywarden.queue.store import QueueReader

    if not (cfg.data_dir / "queue.sqlite3").exists():
        return None
    reader = QueueReader(cfg.data_dir)
    try:
        return work(reader)
    finally:
        reader.close()


def _show(cfg: Config, queue_id: str) -> dict | None:
    def work(reader):
        msg = reader.show(queue_id)
        if msg is not None:
            msg["headers"] = _headers((reader.body(queue_id) or b"")[:MAX_BODY * 4])
        return msg
    return _read(cfg, work)


def _body(cfg: Config, queue_id: str) -> bytes | None:
    return _read(cfg, lambda reader: reader.body(queue_id))


@needs("viewer")
async def queue_list(request: Request) -> Response:
    cfg = _state(request).cfg
    q = request.query_params
    status = _choice(request, "status", QUEUE_STATUSES)
    after = q.get("after")
    items, nxt = await asyncio.to_thread(
        _list_messages, cfg, status=status,
        domain=_text(q.get("domain"), "domain", max_len=255),
        sender=_text(q.get("sender"), "sender", max_len=320),
        recipient=_text(q.get("recipient"), "recipient", max_len=320),
        limit=_limit(request), after=_parse_cursor(after, "after") if after else None)
    return JSON({"items": items, "next": nxt})


@needs("viewer")
async def queue_show(request: Request) -> Response:
    queue_id = request.path_params["id"]
    msg = await asyncio.to_thread(_show, _state(request).cfg, queue_id)
    if msg is None:
        raise Problem(404, f"no message {queue_id} in the queue")
    return JSON(msg)


def _eml_response(queue_id: str, body: bytes) -> Response:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", queue_id)[:64]
    return Response(body, media_type="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="{safe}.eml"'})


@needs("viewer")
async def queue_eml(request: Request) -> Response:
    queue_id = request.path_params["id"]
    body = await asyncio.to_thread(_body, _state(request).cfg, queue_id)
    if body is None:
        raise Problem(404, f"no message {queue_id} in the queue")
    return _eml_response(queue_id, body)


# ---------------------------------------------------------------------------- queue actions


def _with_admin(cfg: Config, work: Callable):
    from relaywarden.queue.admin import OnFirstAttempt, QueueAdmin

    try:
        admin = QueueAdmin(cfg.data_dir)
    except FileNotFoundError:
        return None
    try:
        return work(admin)
    except OnFirstAttempt as exc:
        # The delivery process has the message in memory and has not put it into the
        # index in time: a moment later the same request works.
        raise Problem(409, str(exc), headers={"Retry-After": "5"}) from None
    finally:
        admin.close()


def _action(method: str):
    @needs("operator")
    async def endpoint(request: Request) -> Response:
        state = _state(request)
        queue_id = request.path_params["id"]
        user = _user(request)

        def work(admin):
            if not admin.exists(queue_id):
                return None
            n = getattr(admin, method)(queue_id, by=user)
            return n, admin.leased(queue_id=queue_id) if method == "retry" else []

        result = await asyncio.to_thread(_with_admin, state.cfg, work)
        if result is None:
            raise Problem(404, f"no message {queue_id} in the queue")
        n, leased = result
        if n == 0 and leased:
            until = time.strftime("%H:%M:%S", time.gmtime(leased[-1][2]))
            raise Problem(409, f"{queue_id}: leased by a live attempt until {until} UTC; its"
                          " outcome decides the next attempt", extra=_leased_json(leased))
        if n == 0:
            need = {"retry": "no recipient waits for a retry", "hold": "no recipient is queued",
                    "release": "the message is not held"}[method]
            raise Problem(409, f"{queue_id}: {need}")
        state.audit(method, id=queue_id, recipients=n, by=user)
        extra = _leased_json(leased) if method == "retry" else {}
        return JSON({"id": queue_id, "recipients": n, **extra})
    endpoint.__name__ = f"queue_{method}"
    return endpoint


@needs("operator")
async def queue_delete(request: Request) -> Response:
    state = _state(request)
    queue_id = request.path_params["id"]
    dsn = _bool(request, "dsn")
    user = _user(request)

    def work(admin):
        if not admin.exists(queue_id):
            return None
        if dsn:
            return admin.delete_with_dsn(queue_id, by=user, reporting_mta=state.cfg.relay.hostname)
        db = _ro(state.cfg)
        try:
            waiting = db.execute(
                "SELECT COUNT(*) FROM recipients WHERE message_id = ? AND status IN"
                " ('queued', 'held', 'badmail')", (queue_id,)).fetchone()[0]
        finally:
            db.close()
        return (waiting, None) if admin.delete(queue_id, by=user) else None

    result = await asyncio.to_thread(_with_admin, state.cfg, work)
    if result is None:
        raise Problem(404, f"no message {queue_id} in the queue")
    n, dsn_id = result
    state.audit("delete", id=queue_id, recipients=n, dsn=dsn_id, by=user)
    return JSON({"id": queue_id, "recipients": n, "dsn_id": dsn_id})


@needs("operator")
async def queue_flush(request: Request) -> Response:
    state = _state(request)
    body = await read_json(request)
    domain = _text(body.get("domain"), "domain", max_len=255)
    if domain is not None:
        domain = domain.strip().lstrip("@").rstrip(".").lower()
        if not domain or any(c.isspace() for c in domain):
            raise Problem(400, "not a domain", field="domain")
    user = _user(request)
    result = await asyncio.to_thread(
        _with_admin, state.cfg,
        lambda admin: (admin.flush(domain=domain, by=user), admin.leased(domain=domain)))
    n, leased = result or (0, [])
    state.audit("flush", domain=domain, recipients=n, by=user)
    return JSON({"recipients": n, **_leased_json(leased)})


def _leased_json(leased: list[tuple[str, str, float]]) -> dict[str, Any]:
    """Recipients an attempt under way holds (QueueAdmin.leased): a flush or retry cannot
    start them before it ends; ``until`` is when the lease ends unless renewed (epoch
    seconds), ``until_text`` the same as HH:MM:SS UTC."""
    return {"leased": [{"id": qid, "address": address, "until": until,
                        "until_text": time.strftime("%H:%M:%S UTC", time.gmtime(until))}
                       for qid, address, until in leased]}


@needs("admin")
async def queue_bulk(request: Request) -> Response:
    state = _state(request)
    body = await read_json(request)
    action = _text(body.get("action"), "action", required=True)
    if action not in BULK_ACTIONS:
        raise Problem(400, f"one of {', '.join(BULK_ACTIONS)}", field="action")
    status = _text(body.get("status"), "status")
    if status is not None and status not in QUEUE_STATUSES:
        raise Problem(400, f"one of {', '.join(QUEUE_STATUSES)}", field="status")
    domain = _text(body.get("domain"), "domain", max_len=255)
    sender = _text(body.get("sender"), "sender", max_len=320)
    recipient = _text(body.get("recipient"), "recipient", max_len=320)
    if not any((status, domain, sender, recipient)):
        raise Problem(400, "a bulk action needs a filter: status, domain, sender or recipient",
                      field="status")
    user = _user(request)
    cfg = state.cfg

    def work(admin):
        ids, after = [], None
        while True:
            items, nxt = _list_messages(cfg, status=status, domain=domain, sender=sender,
                                        recipient=recipient, limit=1000, after=after)
            ids += [item["id"] for item in items]
            if nxt is None:
                break
            after = _parse_cursor(nxt, "after")
        messages = recipients = 0
        for queue_id in ids:
            n = getattr(admin, action)(queue_id, by=user)
            if n:
                messages += 1
                recipients += n
        return messages, recipients

    result = await asyncio.to_thread(_with_admin, cfg, work)
    messages, recipients = result or (0, 0)
    state.audit(action, action=f"bulk-{action}", messages=messages, recipients=recipients,
                status=status, domain=domain, sender=sender, recipient=recipient, by=user)
    return JSON({"messages": messages, "recipients": recipients})


# ---------------------------------------------------------------------------- badmail


@needs("viewer")
async def badmail_list(request: Request) -> Response:
    cfg = _state(request).cfg
    after = request.query_params.get("after")
    items, nxt = await asyncio.to_thread(
        _list_messages, cfg, status="badmail", domain=None, sender=None, recipient=None,
        limit=_limit(request), after=_parse_cursor(after, "after") if after else None,
        only_status="badmail")
    return JSON({"items": items, "next": nxt})


def _badmail_msg(cfg: Config, queue_id: str) -> dict | None:
    msg = _show(cfg, queue_id)
    if msg is None or not any(r["status"] == "badmail" for r in msg["recipients"]):
        return None
    return msg


@needs("viewer")
async def badmail_show(request: Request) -> Response:
    queue_id = request.path_params["id"]
    msg = await asyncio.to_thread(_badmail_msg, _state(request).cfg, queue_id)
    if msg is None:
        raise Problem(404, f"no message {queue_id} in badmail")
    return JSON(msg)


@needs("viewer")
async def badmail_eml(request: Request) -> Response:
    cfg = _state(request).cfg
    queue_id = request.path_params["id"]
    msg = await asyncio.to_thread(_badmail_msg, cfg, queue_id)
    body = await asyncio.to_thread(_body, cfg, queue_id) if msg is not None else None
    if body is None:
        raise Problem(404, f"no message {queue_id} in badmail")
    return _eml_response(queue_id, body)


def _badmail_action(kind: str):
    @needs("operator")
    async def endpoint(request: Request) -> Response:
        state = _state(request)
        cfg = state.cfg
        queue_id = request.path_params["id"]
        user = _user(request)

        def work(admin):
            if not admin.exists(queue_id):
                return None
            if kind == "release":
                return admin.badmail_release(queue_id, by=user)
            deleted = admin.badmail_delete(queue_id, by=user)
            if deleted:
                for suffix in (".eml", ".json"):
                    (cfg.badmail.dir / f"{queue_id}{suffix}").unlink(missing_ok=True)
            return deleted

        changed = await asyncio.to_thread(_with_admin, cfg, work)
        if changed is None:
            raise Problem(404, f"no message {queue_id} in the queue")
        if not changed:
            raise Problem(409, f"{queue_id} has no recipient in badmail")
        action = f"badmail-{kind}"
        state.audit(action, id=queue_id, to=",".join(changed), by=user)
        return JSON({"id": queue_id, "recipients": changed})
    endpoint.__name__ = f"badmail_{kind}"
    return endpoint


# ---------------------------------------------------------------------------- history


def _history_module():
    try:
        from relaywarden.history import store
    except ImportError:
        return None
    return store


def _time_param(request: Request, name: str) -> float | None:
    text = request.query_params.get(name)
    if text is None or not text.strip():
        return None
    store = _history_module()
    try:
        value = store.parse_since(text) if store is not None and hasattr(store, "parse_since") \
            else float(text)
    except (ValueError, OverflowError):
        raise Problem(400, "a duration (2h, 7d), an epoch time or an ISO date", field=name) from None
    if not math.isfinite(value):
        raise Problem(400, "a duration (2h, 7d), an epoch time or an ISO date", field=name)
    return value


def _history(cfg: Config, work: Callable):
    store = _history_module()
    if not cfg.history.enabled:
        raise Problem(404, "the message history is turned off (history.enabled = false)")
    if store is None:
        raise Problem(503, "the message history is not available in this build")
    path = cfg.data_dir / "history.sqlite3"
    if not path.exists():
        return work(None)
    history = store.History(path, readonly=True)
    try:
        return work(history)
    finally:
        history.close()


@needs("viewer")
async def history_search(request: Request) -> Response:
    cfg = _state(request).cfg
    q = request.query_params
    store = _history_module()
    statuses = getattr(store, "STATUSES", ())
    if q.get("status") is not None and statuses and q["status"] not in statuses:
        raise Problem(400, f"one of {', '.join(statuses)}", field="status")
    kwargs = dict(
        queue_id=_text(q.get("queue_id"), "queue_id", max_len=64),
        message_id=_text(q.get("message_id"), "message_id"),
        sender=_text(q.get("sender"), "sender", max_len=320),
        recipient=_text(q.get("recipient"), "recipient", max_len=320),
        client=_text(q.get("client"), "client", max_len=64),
        status=q.get("status"), since=_time_param(request, "since"),
        until=_time_param(request, "until"), limit=_limit(request),
        before=_text(q.get("before"), "before", max_len=200))
    kwargs = {k: (v if v != "" else None) for k, v in kwargs.items()}

    def work(history):
        if history is None:
            return [], None
        try:
            return history.search(**kwargs)
        except ValueError as exc:
            raise Problem(400, str(exc), field=getattr(exc, "field", None) or "query") from None

    items, nxt = await asyncio.to_thread(_history, cfg, work)
    return JSON({"items": items, "next": nxt})


@needs("viewer")
async def history_timeline(request: Request) -> Response:
    queue_id = request.path_params["id"]
    timeline = await asyncio.to_thread(
        _history, _state(request).cfg,
        lambda history: None if history is None else history.timeline(queue_id))
    if timeline is None:
        raise Problem(404, f"no message {queue_id} in the history")
    return JSON(timeline)


# ---------------------------------------------------------------------------- status, stats


def _metrics_module():
    try:
        import relaywarden.metrics as metrics
    except ImportError:
        return None
    return metrics


def _snapshot(cfg: Config) -> dict:
    metrics = _metrics_module()
    if metrics is None or not hasattr(metrics, "snapshot"):
        return {}
    try:
        snap = metrics.snapshot(cfg.data_dir)
    except Exception as exc:  # noqa: BLE001 - the status page shows what it can
        print(f"relaywarden: admin: metrics.snapshot: {exc!r}", file=sys.stderr, flush=True)
        return {}
    return snap if isinstance(snap, dict) else {}


def _connections(snap: dict, name: str) -> int | None:
    listeners = snap.get("listeners")
    if isinstance(listeners, dict):
        value = listeners.get(name)
        if isinstance(value, dict):
            value = value.get("connections")
        return value if isinstance(value, int) else None
    if isinstance(listeners, list):
        for item in listeners:
            if isinstance(item, dict) and item.get("name") == name:
                value = item.get("connections")
                return value if isinstance(value, int) else None
    return None


def _delivery(snap: dict) -> dict:
    d = snap.get("delivery")
    destinations: list[dict] = []
    if isinstance(d, dict):
        found = d.get("destinations", d if "in_flight" not in d else {})
        if isinstance(found, dict):
            destinations = [{"destination": k, "in_flight": v} for k, v in found.items()
                            if isinstance(v, int)]
        elif isinstance(found, list):
            destinations = [x for x in found if isinstance(x, dict)]
        total = d.get("in_flight")
    else:
        total = None
    if not isinstance(total, int):
        total = sum(x.get("in_flight", 0) for x in destinations if isinstance(x.get("in_flight"), int))
    return {"in_flight": total, "destinations": destinations}


def _queue_counts(cfg: Config) -> dict:
    from relaywarden.queue import log as qlog
    from relaywarden.queue.store import queue_summary

    db = _ro(cfg)
    if db is None:
        return {"by_state": {}, "oldest_age": None}
    try:
        by_state, oldest = queue_summary(db, qlog.directory(cfg.data_dir))
    finally:
        db.close()
    return {"by_state": by_state,
            "oldest_age": None if oldest is None else max(0.0, round(time.time() - oldest, 3))}


@needs("viewer")
async def status(request: Request) -> Response:
    state = _state(request)
    cfg = state.cfg
    snap = await asyncio.to_thread(_snapshot, cfg)
    try:
        st = os.statvfs(cfg.data_dir)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    listeners = [{"name": name, "address": str(lc.address), "port": lc.port,
                  "tls": lc.tls.mode, "connections": _connections(snap, name)}
                 for name, lc in cfg.listeners.items()]
    return JSON({
        "version": __version__,
        "config": {"path": str(state.config_path) if state.config_path else cfg.source,
                   "loaded_at": state.loaded_at},
        "listeners": listeners,
        "delivery": _delivery(snap),
        "disk": {"free_bytes": free, "min_free": cfg.relay.min_free_space},
        "queue": await asyncio.to_thread(_queue_counts, cfg),
    })


@needs("viewer")
async def stats(request: Request) -> Response:
    window = _choice(request, "window", ("hour", "day"), "hour")
    metrics = _metrics_module()
    if metrics is None or not hasattr(metrics, "series"):
        raise Problem(503, "metrics are not available in this build")
    data = await asyncio.to_thread(metrics.series, _state(request).cfg.data_dir, window)
    return JSON(data)


# ---------------------------------------------------------------------------- config, explain


def redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if SECRET_KEY.search(key) and not key.endswith("_file") and value not in (None, "", []):
        return "***"
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "get_secret_value"):
        return "***"
    if hasattr(value, "value") and isinstance(value.value, str):   # enums
        return value.value
    if hasattr(value, "pattern") and isinstance(value.pattern, str):
        return value.pattern
    if hasattr(value, "network"):
        return str(value.network)
    return str(value)


@needs("viewer")
async def config_view(request: Request) -> Response:
    state = _state(request)
    data = redact(_jsonable(state.cfg.model_dump(mode="python")))
    return JSON({"source": state.cfg.source, "loaded_at": state.loaded_at, "config": data})


def _decision(d) -> dict | None:
    if d is None:
        return None
    return {"decision": d.action.value, "code": d.reply.code, "enhanced": d.reply.enhanced or None,
            "rule": d.rule, "reason": d.detail}


#: What opens a refused step, worded for the API's fields.
EXPLAIN_HINTS = {"tls": 'set "tls": true to see what happens after STARTTLS',
                 "user": 'set "user" to see what happens after AUTH',
                 "name": 'set "name" (the client\'s verified host name) to see what happens '
                         'then'}


@needs("viewer")
async def explain(request: Request) -> Response:
    """The same question and answer as `relaywarden policy explain` (admin/explain.py)."""
    from relaywarden.admin.explain import ExplainError, explain_async
    from relaywarden.config.build import build_resolver, build_validator
    from relaywarden.policy.gates import Need

    state = _state(request)
    cfg = state.cfg
    tools = state.explain_tools
    if tools is None or tools[0] is not cfg:
        if tools is not None and tools[2] is not None:
            await tools[2].close()          # the old validator's pooled callahead connections
        resolver = build_resolver(cfg)
        tools = state.explain_tools = (cfg, resolver, build_validator(cfg, resolver))
    body = await read_json(request)
    listener = _text(body.get("listener"), "listener", required=True, max_len=64)
    client = _text(body.get("client"), "client", required=True, max_len=64)
    name = _text(body.get("name"), "name", max_len=255) or None
    user = _text(body.get("user"), "user", max_len=256) or None
    tls = body.get("tls", False)
    if not isinstance(tls, bool):
        raise Problem(400, "expected true or false", field="tls")
    groups = body.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise Problem(400, "expected an array of strings", field="groups")
    sender = _text(body.get("from"), "from", max_len=998)
    recipient = _text(body.get("to"), "to", required=True, max_len=998)
    try:
        result = await explain_async(cfg, resolver=tools[1], validator=tools[2],
                                     listener=listener, client=client, name=name, user=user,
                                     tls=tls, groups=groups, sender=sender, recipient=recipient)
    except ExplainError as exc:
        raise Problem(400, exc.message, field=exc.field) from None
    return JSON({"connect": _decision(result.connect), "auth": _decision(result.auth),
                 "sender": _decision(result.sender), "recipient": _decision(result.recipient),
                 "need": result.need.value if result.need else None,
                 "lookups": [{"step": x.step, "kind": x.kind, "source": x.source,
                              "answer": x.answer, "detail": x.detail or None,
                              "cached": x.cached} for x in result.lookups],
                 "text": result.render({need: EXPLAIN_HINTS[need.value] for need in Need})})


# ---------------------------------------------------------------------------- live log


def _line_time(line: str, kind: str) -> float | None:
    try:
        if kind in _JSON_SERIES:
            return float(json.loads(line)["ts"])
        from datetime import datetime

        stamp = line.split(" ", 1)[0]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError, IndexError):
        return None


#: The log series the live view follows: the mail log, and the JSON lines of the protocol
#: logs of the sessions the relay answers (exYYMMDD) and opens (outYYMMDD).
_SERIES = {"mail": ("mail*.log", ".log"), "protocol": ("ex*.jsonl", ".jsonl"),
           "outbound": ("out*.jsonl", ".jsonl")}
_JSON_SERIES = ("protocol", "outbound")


def _current_file(directory: Path, kind: str) -> Path | None:
    pattern, suffix = _SERIES[kind]
    try:
        files = [p for p in directory.glob(pattern) if p.name.endswith(suffix)]
        return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name)) if files else None
    except OSError:
        return None


class LogTail:
    """Follows the newest file of a log series from its end; lines go through a reorder
    buffer and come out ordered by their own time stamps (file order on ties)."""

    def __init__(self, directory: Path, kind: str, *, delay: float = REORDER_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory, self.kind, self.delay, self.clock = directory, kind, delay, clock
        self.path = _current_file(directory, kind)
        self.offset = self.path.stat().st_size if self.path else 0
        self.ino = self.path.stat().st_ino if self.path else None
        self.partial = b""
        self.buffer: list[tuple[float, int, str]] = []
        self.seq = 0
        self.last_sent = 0.0

    def _read(self) -> None:
        if self.path is not None:
            try:
                st = self.path.stat()
                if st.st_ino != self.ino or st.st_size < self.offset:
                    self.offset, self.ino, self.partial = 0, st.st_ino, b""
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read(1 << 20)
                self.offset += len(data)
            except FileNotFoundError:
                data = b""
            self._take(data)
        newest = _current_file(self.directory, self.kind)
        if newest is not None and newest != self.path:
            # Rotated: finish the old file above, then follow the new one from its start.
            self.path, self.offset, self.partial = newest, 0, b""
            try:
                self.ino = newest.stat().st_ino
            except OSError:
                self.ino = None

    def _take(self, data: bytes) -> None:
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        now = self.clock()
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line or line.startswith("#"):
                continue
            at = _line_time(line, self.kind)
            self.seq += 1
            self.buffer.append((at if at is not None else now, self.seq, line))

    def poll(self) -> list[str]:
        """Lines whose time is at least ``delay`` ago, in time order."""
        self._read()
        cutoff = self.clock() - self.delay
        ready = sorted(x for x in self.buffer if x[0] <= cutoff)
        if ready:
            self.buffer = [x for x in self.buffer if x[0] > cutoff]
        return [line for _, _, line in ready]


@needs("viewer")
async def log_stream(request: Request) -> Response:
    state = _state(request)
    cfg = state.cfg
    kind = _choice(request, "log", tuple(_SERIES), "mail")
    tail = LogTail(cfg.log_dir, kind)

    async def events():
        yield ": relaywarden log stream\nretry: 2000\n\n"
        idle = 0.0
        n = 0
        while not state.stopping.is_set():
            if await request.is_disconnected():
                return
            lines = await asyncio.to_thread(tail.poll)
            for line in lines:
                n += 1
                yield f"event: {kind}\nid: {n}\ndata: {line}\n\n"
            if lines:
                idle = 0.0
            else:
                idle += 0.5
                if idle >= 15:
                    idle = 0.0
                    yield ": keep-alive\n\n"
            await asyncio.sleep(0.5)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------------------- metrics, docs


async def metrics_endpoint(request: Request) -> Response:
    state = _state(request)
    token = state.cfg.admin.metrics_token()
    if token is not None:
        auth = request.headers.get("authorization", "")
        scheme, _, sent = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode("utf-8", "replace"),
                                                                 token.encode()):
            raise Problem(401, "send Authorization: Bearer <the token of admin.metrics_token_file>",
                          headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    else:
        host = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise Problem(403, "/metrics is open to loopback clients only (or set admin.metrics_token_file)")
    metrics = _metrics_module()
    if metrics is None or not hasattr(metrics, "exposition"):
        raise Problem(503, "metrics are not available in this build")
    data, content_type = await asyncio.to_thread(metrics.exposition, state.cfg.data_dir)
    return Response(data, media_type=content_type)


async def openapi(request: Request) -> Response:
    return JSON(openapi_document(__version__))


async def index(request: Request) -> Response:
    path = STATIC_DIR / "index.html"
    if not path.is_file():
        raise Problem(404, "the web console is not installed")
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


async def api_not_found(request: Request) -> Response:
    raise Problem(404, "no such resource")


# ---------------------------------------------------------------------------- the app


def create_app(cfg: Config, config_path: Path | None = None, *,
               state: AdminState | None = None) -> Starlette:
    state = state or AdminState(cfg=cfg, config_path=config_path)
    state.configure(cfg)
    v = "/api/v1"
    routes = [
        Route(f"{v}/session", login, methods=["POST"]),
        Route(f"{v}/session", whoami, methods=["GET"]),
        Route(f"{v}/session", logout, methods=["DELETE"]),
        Route(f"{v}/queue", queue_list, methods=["GET"]),
        Route(f"{v}/queue/flush", queue_flush, methods=["POST"]),
        Route(f"{v}/queue/bulk", queue_bulk, methods=["POST"]),
        Route(f"{v}/queue/{{id}}", queue_show, methods=["GET"]),
        Route(f"{v}/queue/{{id}}", queue_delete, methods=["DELETE"]),
        Route(f"{v}/queue/{{id}}/eml", queue_eml, methods=["GET"]),
        Route(f"{v}/queue/{{id}}/retry", _action("retry"), methods=["POST"]),
        Route(f"{v}/queue/{{id}}/hold", _action("hold"), methods=["POST"]),
        Route(f"{v}/queue/{{id}}/release", _action("release"), methods=["POST"]),
        Route(f"{v}/badmail", badmail_list, methods=["GET"]),
        Route(f"{v}/badmail/{{id}}", badmail_show, methods=["GET"]),
        Route(f"{v}/badmail/{{id}}", _badmail_action("delete"), methods=["DELETE"]),
        Route(f"{v}/badmail/{{id}}/eml", badmail_eml, methods=["GET"]),
        Route(f"{v}/badmail/{{id}}/release", _badmail_action("release"), methods=["POST"]),
        Route(f"{v}/history", history_search, methods=["GET"]),
        Route(f"{v}/history/{{id}}", history_timeline, methods=["GET"]),
        Route(f"{v}/status", status, methods=["GET"]),
        Route(f"{v}/stats", stats, methods=["GET"]),
        Route(f"{v}/config", config_view, methods=["GET"]),
        Route(f"{v}/explain", explain, methods=["POST"]),
        Route(f"{v}/log/stream", log_stream, methods=["GET"]),
        Route(f"{v}/openapi.json", openapi, methods=["GET"]),
        Route("/api/{rest:path}", api_not_found),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        Mount("/", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="console"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: _problem_handler,
                                                       HTTPException: _problem_handler,
                                                       Problem: _problem_handler})
    app.state.admin = state
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    return app
