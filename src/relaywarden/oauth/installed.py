"""`relaywarden oauth login NAME` for kind = "google", flow = "refresh_token": the OAuth 2.0
authorization code flow of an installed ("Desktop app") client with a loopback redirect
(RFC 8252 7.3) and PKCE (RFC 7636, S256).

Why not google-auth-oauthlib's InstalledAppFlow.run_local_server: it serves exactly one
request (a browser's favicon request, or any stray one, ends the login), on a timeout it
fails with an AttributeError instead of an error, and its token request ignores the
provider's ca_file. This is the same flow in the standard library's http.server plus the
provider's requests session (tokens.http_session: ca_file, timeout).

Blocking, for the CLI only: the relay never runs it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from relaywarden.oauth.tokens import Token, TokenError, _network_text, http_session

if TYPE_CHECKING:
    from relaywarden.oauth.tokens import TokenProvider


def s256(verifier: str) -> str:
    """RFC 7636 4.2: code_challenge = BASE64URL(SHA256(ASCII(code_verifier))), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge): RFC 7636 4.1, 43..128 unreserved characters (32
    random octets, base64url: 43 characters), and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    return verifier, s256(verifier)


def authorization_url(provider: TokenProvider, redirect_uri: str, state: str,
                      challenge: str) -> str:
    s = provider.settings
    query = urllib.parse.urlencode({
        "client_id": s.client_id, "redirect_uri": redirect_uri, "response_type": "code",
        "scope": " ".join(s.scopes or []),
        # a refresh token (offline), and a new one even if this client was granted before:
        # Google sends the refresh token only with the consent screen
        "access_type": "offline", "prompt": "consent",
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256"})
    sep = "&" if "?" in (s.auth_uri or "") else "?"
    return f"{s.auth_uri}{sep}{query}"


@dataclass
class Redirect:
    """What the browser brought back to the redirect URI (RFC 6749 4.1.2 / 4.1.2.1)."""

    code: str | None
    state: str | None
    error: str | None
    error_description: str


class _Listener(http.server.HTTPServer):
    result: Redirect | None = None
    expected_state: str = ""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    timeout = 10        # a connection that sends nothing does not hold the login past --timeout

    def log_message(self, *args: Any) -> None:      # the CLI's output is the URL and errors
        pass

    def _page(self, status: int, text: str) -> None:
        data = f"<!doctype html><title>relaywarden</title><p>{text}</p>\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path != "/" or not ("code" in query or "error" in query):
            # (the browser's /favicon.ico, a probe: not the answer; keep waiting)
            self._page(404, "Not the sign-in answer.")
            return
        result = Redirect(query.get("code"), query.get("state"), query.get("error"),
                          query.get("error_description", ""))
        self.server.result = result
        if result.state != self.server.expected_state:
            self._page(400, "Refused: the state does not match this sign-in.")
        elif result.error:
            self._page(400, f"Sign-in failed: {result.error}. See the terminal.")
        else:
            self._page(200, "Signed in. You can close this tab; relaywarden finishes in the terminal.")


def listen() -> _Listener:
    """The redirect URI's listener: 127.0.0.1 (not "localhost", which may resolve to ::1
    or elsewhere: RFC 8252 8.3), a port the system picks."""
    return _Listener(("127.0.0.1", 0), _Handler)


def wait_redirect(listener: _Listener, state: str, timeout: float) -> Redirect | None:
    """Serve until the browser brings the answer, or `timeout` seconds: None."""
    listener.expected_state = state
    deadline = time.monotonic() + timeout
    while listener.result is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        listener.timeout = min(left, 1.0)
        listener.handle_request()
    return listener.result


def exchange(provider: TokenProvider, code: str, redirect_uri: str,
             verifier: str) -> tuple[Token, str]:
    """The authorization code grant (RFC 6749 4.1.3, + RFC 7636 4.5 code_verifier) at the
    token endpoint: the access token and the refresh token."""
    import requests

    s = provider.settings
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": s.client_id, "client_secret": s.client_secret(),
            "code_verifier": verifier}
    try:
        response = http_session(s).post(s.token_uri, data=form,
                                        headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise TokenError(provider.name, "unreachable", _network_text(exc)) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TokenError(provider.name, f"HTTP {response.status_code}",
                         f"{s.token_uri} answered no JSON")
    if response.status_code != 200 or "access_token" not in answer:
        raise TokenError(provider.name, str(answer.get("error") or f"HTTP {response.status_code}"),
                         str(answer.get("error_description") or ""))
    if not answer.get("refresh_token"):
        raise TokenError(provider.name, "no_refresh_token",
                         "the token endpoint sent no refresh token (access_type=offline, "
                         "prompt=consent were asked for)")
    expires = time.time() + float(answer.get("expires_in") or 3600)
    return Token(str(answer["access_token"]), expires), str(answer["refresh_token"])


def login(provider: TokenProvider, timeout: float, show: Callable[[str], None]) -> None:
    """The whole flow; `show` prints the URL. Raises TokenError (the provider's error,
    access_denied, state_mismatch, timeout); on success the refresh token is stored
    exactly as the device code flow's (TokenProvider.store_refresh_token)."""
    name = provider.name
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)      # RFC 6749 10.12: the redirect is ours, not forged
    with listen() as listener:
        redirect_uri = f"http://127.0.0.1:{listener.server_port}/"
        show(authorization_url(provider, redirect_uri, state, challenge))
        got = wait_redirect(listener, state, timeout)
    if got is None:
        raise TokenError(name, "timeout", f"no sign-in came back to {redirect_uri} within "
                         f"{timeout:g}s")
    if got.state != state:
        raise TokenError(name, "state_mismatch", "the redirect's state is not this sign-in's; "
                         "refused (run oauth login again)")
    if got.error:
        raise TokenError(name, got.error, got.error_description)
    if not got.code:
        raise TokenError(name, "no_code", "the redirect carried no authorization code")
    token, refresh_token = exchange(provider, got.code, redirect_uri, verifier)
    provider.store_refresh_token(refresh_token, token)


__all__ = ["authorization_url", "exchange", "listen", "login", "pkce_pair", "s256", "wait_redirect"]
