"""OAuth2 access tokens for next-hop AUTH (XOAUTH2, OAUTHBEARER): one `TokenProvider` per
`[oauth.NAME]` table.

The identity platforms are spoken to by their own libraries: msal for Microsoft (client
credentials with a secret or a certificate, refresh tokens, the device code flow) and
google-auth for Google (a service account acting as a mailbox through domain-wide
delegation, RFC 7523 JWT bearer grant; refresh tokens). Both block, so every call runs in
a thread; the event loop only waits.

Tokens are kept in memory and on disk (``DATA_DIR/oauth/NAME.json``, 0600, replaced
atomically: a temporary file, fsync, rename, fsync of the directory), so that a restart
or a second process (`relaywarden oauth test`) does not ask the platform again while a
token is good, and a refresh token that the platform rotated is never lost: the new one is
on disk before the access token that came with it is used. A token is refreshed
``refresh_margin`` seconds before it expires.

One refresh at a time per provider: deliveries waiting for a token share one asyncio lock
per event loop, and processes share an flock on ``NAME.lock``; whoever gets the lock second
finds the fresh token (memory, then disk) and does not ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaywarden.config.schema import Config, OAuthProviderConfig

__all__ = ["OAuthLogin", "Token", "TokenError", "TokenProvider", "providers", "write_atomic"]

_AADSTS = re.compile(r"\bAADSTS\d+\b")


class TokenError(Exception):
    """No token: `code` is the platform's error (AADSTS7000215, invalid_grant, ...) or
    our own word for a failure before any answer (unreachable, discovery_failed)."""

    def __init__(self, provider: str, code: str, description: str = "") -> None:
        self.provider = provider
        self.code = code
        self.description = " ".join(description.split())[:300]
        super().__init__(self.reason)

    @property
    def revoked(self) -> bool:
        """A refresh token the platform no longer takes (revoked, expired: only a new
        `oauth login` helps): invalid_grant, AADSTS700082 (expired by inactivity),
        AADSTS50173 / AADSTS70043 (revoked, expired by policy), AADSTS700084."""
        return self.code in {"invalid_grant", "AADSTS700082", "AADSTS50173", "AADSTS70043",
                             "AADSTS700084", "AADSTS70008"} or "invalid_grant" in self.description

    @property
    def reason(self) -> str:
        text = f"oauth.{self.provider}: {self.code}"
        if self.description and self.description != self.code:
            text += f": {self.description}"
        return text


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    expires_at: float                       # epoch seconds

    def good(self, margin: float, now: float | None = None) -> bool:
        return self.expires_at - margin > (time.time() if now is None else now)


@dataclass(frozen=True, slots=True, eq=False)
class OAuthLogin:
    """What a route's AUTH uses instead of a password: the provider and the SASL mechanism
    ("XOAUTH2" or "OAUTHBEARER"). Hashed by identity (a connection pool key): one object
    per route and provider for the life of a config."""

    provider: "TokenProvider"
    mechanism: str

    def __repr__(self) -> str:
        return f"OAuthLogin(oauth.{self.provider.name}, {self.mechanism})"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600, so that a crash at any point leaves either
    the old file or the new one whole: a temporary file in the same directory, fsync,
    rename over the old one, fsync of the directory (the rename itself is durable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: Path) -> dict[str, Any]:
    """The provider's state file; {} when there is none (or it is unreadable: a token is
    then fetched again, nothing worse)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class TokenProvider:
    def __init__(self, name: str, settings: OAuthProviderConfig, data_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self.state_path = data_dir / "oauth" / f"{name}.json"
        self.lock_path = data_dir / "oauth" / f"{name}.lock"
        self._memory: dict[str, Token] = {}
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        self._thread_lock = threading.Lock()    # one refresh per process, whatever the loop
        self._app = None                        # the msal application, once made
        self.requests = 0                       # token requests sent (tests, status)

    # --- public, async ------------------------------------------------------------------

    def cache_key(self, user: str | None) -> str:
        """Tokens of a Google service account are per mailbox (the JWT's subject); all
        other tokens are the provider's one (app-only, or the one delegated mailbox)."""
        s = self.settings
        if s.kind == "google" and s.flow == "service_account" and s.subject is None:
            return (user or "").lower()
        return ""

    async def token(self, user: str | None = None, *, stale: str | None = None) -> str:
        """An access token good for at least `refresh_margin` seconds. ``stale``: a token the
        next hop refused; a new one is fetched unless someone already replaced it."""
        key = self.cache_key(user)
        margin = self.settings.refresh_margin
        cached = self._memory.get(key)
        if cached is not None and cached.good(margin) and cached.access_token != stale:
            return cached.access_token
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:
            cached = self._memory.get(key)
            if cached is not None and cached.good(margin) and cached.access_token != stale:
                return cached.access_token
            token = await asyncio.to_thread(self.refresh_blocking, user, stale)
            return token.access_token

    # --- blocking: in a thread ------------------------------------------------------------

    def refresh_blocking(self, user: str | None, stale: str | None = None) -> Token:
        """Under the process's and the file lock: the token on disk if another process
        refreshed it meanwhile, else a new one, saved before it is returned."""
        key = self.cache_key(user)
        margin = self.settings.refresh_margin
        with self._thread_lock, self._file_lock():
            state = read_state(self.state_path)
            saved = (state.get("tokens") or {}).get(key)
            if isinstance(saved, dict):
                try:
                    disk = Token(str(saved["access_token"]), float(saved["expires_at"]))
                except (KeyError, TypeError, ValueError):
                    disk = None
                if disk is not None and disk.good(margin) and disk.access_token != stale:
                    self._memory[key] = disk
                    return disk
            try:
                token, refresh_token = self._acquire(user, state)
            except TokenError as exc:
                state.update(last_error=exc.reason, last_error_at=time.time())
                if exc.revoked and not state.get("revoked"):
                    # Noted once: the delivery worker sends ONE admin notice for it
                    # (revoked_notice), however many deliveries fail meanwhile.
                    state["revoked"] = {"reason": exc.reason, "at": time.time(), "noticed": False}
                self._save(state)
                raise
            if refresh_token:
                state["refresh_token"] = refresh_token
            state.setdefault("tokens", {})[key] = {"access_token": token.access_token,
                                                   "expires_at": token.expires_at}
            state.update(flow=self.settings.flow, last_refresh=time.time(), last_error=None,
                         last_error_at=None)
            state.pop("revoked", None)
            self._save(state)             # before use: a rotated refresh token is never lost
            self._memory[key] = token
            return token

    def store_refresh_token(self, refresh_token: str, token: Token | None = None) -> None:
        """`oauth login`: keep the refresh token (and the access token that came with it)."""
        with self._thread_lock, self._file_lock():
            state = read_state(self.state_path)
            state["refresh_token"] = refresh_token
            state["tokens"] = {}
            if token is not None:
                state["tokens"][""] = {"access_token": token.access_token,
                                       "expires_at": token.expires_at}
                self._memory[""] = token
            state.update(flow=self.settings.flow, last_refresh=time.time(), last_error=None,
                         last_error_at=None)
            state.pop("revoked", None)       # a new login: a later revocation is news again
            self._save(state)

    def revoked_notice(self) -> str | None:
        """The reason of a revoked or expired refresh token not announced yet, marked as
        announced (under the locks: one notice per revocation, whatever the processes)."""
        with self._thread_lock, self._file_lock():
            state = read_state(self.state_path)
            revoked = state.get("revoked")
            if not isinstance(revoked, dict) or revoked.get("noticed"):
                return None
            revoked["noticed"] = True
            self._save(state)
            return str(revoked.get("reason") or "")

    def status(self) -> dict[str, Any]:
        state = read_state(self.state_path)
        tokens = state.get("tokens") or {}
        expiry = max((t.get("expires_at", 0) for t in tokens.values() if isinstance(t, dict)),
                     default=None)
        return {"provider": self.name, "kind": self.settings.kind, "flow": self.settings.flow,
                "token_expires": expiry, "last_refresh": state.get("last_refresh"),
                "last_error": state.get("last_error"), "last_error_at": state.get("last_error_at"),
                "refresh_token": bool(state.get("refresh_token") or
                                      self.settings.refresh_token_seed())}

    @contextlib.contextmanager
    def _file_lock(self):
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                   # (closing releases the lock)

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_path, json.dumps(state, indent=1).encode())

    def _refresh_token(self, state: dict[str, Any]) -> str:
        rt = state.get("refresh_token") or self.settings.refresh_token_seed()
        if not rt:
            raise TokenError(self.name, "no_refresh_token",
                             f"run `relaywarden oauth login {self.name}` (or set refresh_token_file)")
        return rt

    def _acquire(self, user: str | None, state: dict[str, Any]) -> tuple[Token, str | None]:
        self.requests += 1
        if self.settings.kind == "microsoft":
            return self._microsoft(state)
        return self._google(user, state)

    # --- Microsoft: msal ----------------------------------------------------------------

    def msal_app(self, public: bool = False):
        """The msal application. The authority is the configured one (national clouds, a
        test's identity server): msal's instance discovery (a request to
        login.microsoftonline.com) and authority validation are off, so msal speaks to
        that authority only; its OpenID discovery document names the endpoints."""
        import msal
        import requests

        s = self.settings
        if self._app is not None and not public:
            return self._app
        kw = dict(authority=f"{s.authority}/{s.tenant}", validate_authority=False,
                  instance_discovery=False, http_client=http_session(s),
                  token_cache=msal.TokenCache())
        credential = s.client_secret() or (s.certificate().msal_credential()
                                          if s.certificate() else None)
        try:
            if public or credential is None:
                app = msal.PublicClientApplication(s.client_id, **kw)
            else:
                app = msal.ConfidentialClientApplication(s.client_id, client_credential=credential,
                                                         **kw)
        except requests.RequestException as exc:
            raise TokenError(self.name, "unreachable", _network_text(exc)) from None
        except ValueError as exc:           # the discovery document: missing or wrong
            raise TokenError(self.name, "discovery_failed", str(exc)) from None
        if not public:
            self._app = app
        return app

    def _microsoft(self, state: dict[str, Any]) -> tuple[Token, str | None]:
        import msal
        import requests

        s = self.settings
        app = self.msal_app()
        # msal answers from its own cache while a token is good; the refresh decision is
        # ours (refresh_margin, a token the next hop refused): always ask the platform.
        app.token_cache = msal.TokenCache()
        try:
            if s.flow == "client_credentials":
                result = app.acquire_token_for_client(scopes=s.scopes)
            else:
                result = app.acquire_token_by_refresh_token(self._refresh_token(state), scopes=s.scopes)
        except requests.RequestException as exc:
            raise TokenError(self.name, "unreachable", _network_text(exc)) from None
        return self._msal_token(result)

    def _msal_token(self, result: dict[str, Any]) -> tuple[Token, str | None]:
        if "access_token" not in result:
            description = str(result.get("error_description") or "")
            found = _AADSTS.search(description)
            code = found.group(0) if found else str(result.get("error") or "error")
            if found:
                description = description[found.end():].lstrip(": ")
            error = result.get("error")
            if found and error:
                description = f"{error}: {description}"
            raise TokenError(self.name, code, description)
        expires_in = float(result.get("expires_in") or 3600)
        return Token(result["access_token"], time.time() + expires_in), result.get("refresh_token")

    # --- Google: google-auth ------------------------------------------------------------

    def _google(self, user: str | None, state: dict[str, Any]) -> tuple[Token, str | None]:
        import google.auth.exceptions as gexc
        import google.oauth2.credentials
        import google.oauth2.service_account

        s = self.settings
        if s.flow == "service_account":
            subject = s.subject or user
            account = s.service_account_info()
            assert account is not None     # the config loads it for flow = "service_account"
            info = dict(account, token_uri=s.token_uri)
            creds = google.oauth2.service_account.Credentials.from_service_account_info(
                info, scopes=s.scopes, subject=subject)
            old_rt = None
        else:
            old_rt = self._refresh_token(state)
            creds = google.oauth2.credentials.Credentials(
                None, refresh_token=old_rt, token_uri=s.token_uri, client_id=s.client_id,
                client_secret=s.client_secret(), scopes=s.scopes)
        try:
            creds.refresh(_GoogleRequest(self.settings))
        except gexc.RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            code = str(data.get("error") or "refresh_error")
            raise TokenError(self.name, code, str(data.get("error_description") or exc.args[0])) from None
        except gexc.TransportError as exc:
            raise TokenError(self.name, "unreachable", str(exc)) from None
        expiry = creds.expiry
        expires_at = (expiry.replace(tzinfo=dt.timezone.utc).timestamp() if expiry
                      else time.time() + 3600)
        new_rt = getattr(creds, "refresh_token", None)
        return Token(creds.token, expires_at), (new_rt if new_rt and new_rt != old_rt else None)


class _GoogleRequest:
    """google-auth's requests transport with the provider's CA file and timeout."""

    def __init__(self, settings: OAuthProviderConfig) -> None:
        import google.auth.transport.requests

        self._inner = google.auth.transport.requests.Request(http_session(settings))
        self._timeout = settings.timeout

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        return self._inner(url, method=method, body=body, headers=headers,
                           timeout=self._timeout, **kwargs)


def http_session(settings: OAuthProviderConfig):
    """A requests session for the identity endpoints: the provider's CA file (else the
    system's) and timeout on every request. Passed per request because requests lets
    REQUESTS_CA_BUNDLE in the environment override a session's own `verify`."""
    import requests

    verify = str(settings.ca_file) if settings.ca_file else True
    timeout = settings.timeout

    class Session(requests.Session):
        def request(self, method, url, **kwargs):
            kwargs["verify"] = verify
            kwargs.setdefault("timeout", timeout)
            return super().request(method, url, **kwargs)

    session = Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=1)   # as msal's own session
    session.mount("https://", adapter)
    return session


def _network_text(exc: Exception) -> str:
    """A requests error in one line, without urllib3's object reprs."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    reason = getattr(inner, "strerror", None) or str(inner.args[0] if inner.args else inner)
    url = getattr(getattr(exc, "request", None), "url", None) or ""
    return f"{type(exc).__name__} {url}: {reason}".replace("  ", " ")


# One provider per name, data directory and settings for the life of the process: a config
# reload that does not change a provider keeps its tokens and its lock.
_PROVIDERS: dict[tuple[str, str, str], TokenProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


def providers(cfg: Config) -> dict[str, TokenProvider]:
    out = {}
    with _PROVIDERS_LOCK:
        for name, settings in cfg.oauth.items():
            # (the secrets read from files are not in the dump: their digest is)
            cert = settings.certificate()
            secrets = repr((settings.client_secret(), cert.thumbprint if cert else None,
                            settings.service_account_info(), settings.refresh_token_seed()))
            key = (name, str(cfg.data_dir), settings.model_dump_json()
                   + hashlib.sha256(secrets.encode()).hexdigest())
            provider = _PROVIDERS.get(key)
            if provider is None:
                provider = _PROVIDERS[key] = TokenProvider(name, settings, cfg.data_dir)
            out[name] = provider
    return out
