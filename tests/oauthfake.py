"""Fake OAuth2 peers for the issue-12 tests, all on 127.0.0.1 and started by the tests.

- `FakeIdentity`: one HTTPS server (a trustme certificate) playing the Microsoft identity
  platform for one tenant (OpenID discovery document, v2.0 token endpoint with the client
  credentials, refresh token and device code grants, the device code endpoint) and
  Google's token endpoint (the JWT bearer grant of a service account, RFC 7523, and the
  refresh token grant, and the installed-app flow: the authorization endpoint
  /google/auth, which "signs in" at once and redirects to the loopback redirect URI
  with a code, and the authorization code grant with PKCE, RFC 7636). It checks the credentials as the real ones do (a client secret, a
  client assertion signed by the registered certificate's key, a service account's JWT
  signed by its key), answers errors in the platforms' shapes (AADSTS codes,
  invalid_grant), rotates Microsoft refresh tokens, and remembers every access token it
  issued, so that the SMTP next hop can check tokens against it. Every request is
  recorded (`paths`), so a test sees what msal and google-auth asked for.
- `OAuthSMTP`: an aiosmtpd server class (for tests/downstream.Downstream) offering AUTH
  XOAUTH2 and OAUTHBEARER (RFC 7628), accepting a token only if the fake issued it, for
  that mailbox, and it has not expired; a refused token gets the platforms' answer: a 334
  with the JSON error status, then 535 5.7.3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from downstream import _SMTP

TENANT = "contoso"


def rsa_key_pem() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return key, pem


@dataclass
class Issued:
    who: str                 # client id, or the Google subject
    expires_at: float
    kind: str                # "microsoft" / "google"
    scope: str = ""          # microsoft client credentials: the resource's /.default


@dataclass
class FakeIdentity:
    port: int
    ca: object               # trustme.CA
    client_id: str = "app-1"
    client_secret: str | None = "s3cret"
    certificate_pem: bytes | None = None         # registered certificate (client assertion)
    expires_in: int = 3600
    google_accounts: dict[str, object] = field(default_factory=dict)   # email -> public key
    google_client: tuple[str, str] = ("g-client", "g-secret")
    device_polls: int = 1                       # authorization_pending answers first
    google_deny: bool = False                   # /google/auth: the user clicks "Cancel"
    google_codes: dict[str, dict] = field(default_factory=dict)    # code -> its request
    # client credentials: the resources an app may ask for (FakeGraph adds its own)
    app_scopes: set[str] = field(default_factory=lambda: {"https://outlook.office365.com/.default"})
    issued: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: dict[str, bool] = field(default_factory=dict)    # token -> still valid
    token_requests: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _devices: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- what tests use --------------------------------------------------------------

    def new_refresh_token(self) -> str:
        rt = "rt-" + secrets.token_urlsafe(12)
        with self.lock:
            self.refresh_tokens[rt] = True
        return rt

    def check(self, token: str, user: str) -> bool:
        with self.lock:
            issued = self.issued.get(token)
        return issued is not None and issued.expires_at > time.time()

    def grants(self, grant: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.token_requests
                    if grant is None or r.get("grant_type") == grant]

    def start(self) -> "FakeIdentity":
        identity = self

        class Handler(_Handler):
            idp = identity

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        # stop() (shutdown) waits for the serving loop to look: every 0.05 s, not 0.5 s.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- the endpoints ---------------------------------------------------------------

    def _issue(self, who: str, kind: str, scope: str = "") -> dict:
        token = f"at-{kind}-" + secrets.token_urlsafe(16)
        with self.lock:
            self.issued[token] = Issued(who, time.time() + self.expires_in, kind, scope)
        return {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": token}

    def microsoft_token(self, form: dict) -> tuple[int, dict]:
        grant = form.get("grant_type")
        if form.get("client_id") != self.client_id:
            return 400, _aad("unauthorized_client", 700016,
                             f"Application with identifier '{form.get('client_id')}' was not "
                             f"found in the directory '{TENANT}'.")
        client_ok = self._client_authenticated(form)
        if grant == "client_credentials":
            if client_ok is not True:
                return 401, client_ok or _aad("invalid_client", 7000215,
                                              "Invalid client secret provided.")
            wanted = [sc for sc in form.get("scope", "").split() if sc in self.app_scopes]
            if not wanted:
                return 400, _aad("invalid_scope", 1002012, "The provided value for scope is not valid.")
            return 200, self._issue(self.client_id, "microsoft", wanted[0])
        if grant == "refresh_token":
            if client_ok not in (True, None):
                return 401, client_ok
            rt = form.get("refresh_token", "")
            with self.lock:
                valid = self.refresh_tokens.get(rt)
                if valid:
                    self.refresh_tokens[rt] = False       # rotated: the old one is spent
            if not valid:
                return 400, _aad("invalid_grant", 700082,
                                 "The refresh token has expired due to inactivity.")
            answer = self._issue(self.client_id, "microsoft")
            answer["refresh_token"] = self.new_refresh_token()
            answer["scope"] = "https://outlook.office.com/SMTP.Send"
            return 200, answer
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            code = form.get("device_code", "")
            with self.lock:
                left = self._devices.get(code)
                if left is None:
                    return 400, _aad("invalid_grant", 70000, "The device code is not valid.")
                if left > 0:
                    self._devices[code] = left - 1
                    pending = True
                else:
                    del self._devices[code]
                    pending = False
            if pending:
                return 400, _aad("authorization_pending", 70016,
                                 "The user has not yet completed authorization.")
            answer = self._issue(self.client_id, "microsoft")
            answer["refresh_token"] = self.new_refresh_token()
            return 200, answer
        return 400, _aad("unsupported_grant_type", 70003, f"grant_type {grant!r}")

    def _client_authenticated(self, form: dict):
        """True: a good secret or assertion; None: neither given; else the error."""
        if "client_secret" in form:
            if form["client_secret"] == self.client_secret:
                return True
            return _aad("invalid_client", 7000215, "Invalid client secret provided. Ensure the "
                        "secret being sent in the request is the client secret value.")
        if "client_assertion" in form:
            if self.certificate_pem is None:
                return _aad("invalid_client", 700027, "Client assertion failed signature validation.")
            cert = x509.load_pem_x509_certificate(self.certificate_pem)
            try:
                claims = jwt.decode(form["client_assertion"], cert.public_key(),
                                    algorithms=["RS256", "PS256"],
                                    options={"verify_aud": False})
            except jwt.PyJWTError:
                return _aad("invalid_client", 700027, "Client assertion failed signature validation.")
            if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
                return _aad("invalid_client", 700023, "Client assertion audience claim does not match.")
            return True
        return None

    def device_code(self, form: dict) -> tuple[int, dict]:
        code = "dc-" + secrets.token_urlsafe(8)
        with self.lock:
            self._devices[code] = self.device_polls
        return 200, {"device_code": code, "user_code": "ABCD-EFGH",
                     "verification_uri": f"{self.base}/devicelogin", "expires_in": 60,
                     "interval": 1,
                     "message": f"To sign in, open {self.base}/devicelogin and enter ABCD-EFGH."}

    def google_auth(self, query: dict) -> tuple[int, dict | str]:
        """The consent screen, signed through at once: (302, Location) or an error page.
        Checks what Google checks of an installed app's request: the client, a loopback
        redirect URI, response_type=code, the scope, and (as for our client, always)
        offline access, forced consent and a S256 PKCE challenge."""
        if query.get("client_id") != self.google_client[0]:
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        redirect = query.get("redirect_uri", "")
        if not redirect.startswith("http://127.0.0.1:"):
            return 400, {"error": "redirect_uri_mismatch", "error_description": redirect}
        wanted = {"response_type": "code", "scope": "https://mail.google.com/",
                  "access_type": "offline", "prompt": "consent", "code_challenge_method": "S256"}
        for key, value in wanted.items():
            if query.get(key) != value:
                return 400, {"error": "invalid_request", "error_description": f"{key}={query.get(key)!r}"}
        if len(query.get("code_challenge", "")) != 43 or not query.get("state"):
            return 400, {"error": "invalid_request", "error_description": "code_challenge / state"}
        back = {"state": query["state"]}
        if self.google_deny:
            back["error"] = "access_denied"
        else:
            code = "4/" + secrets.token_urlsafe(16)
            with self.lock:
                self.google_codes[code] = dict(query)
            back.update(code=code, scope="https://mail.google.com/")
        return 302, f"{redirect}?{urllib.parse.urlencode(back)}"

    def _google_code(self, form: dict) -> tuple[int, dict]:
        if (form.get("client_id"), form.get("client_secret")) != self.google_client:
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        with self.lock:
            asked = self.google_codes.pop(form.get("code", ""), None)   # one use only
        if asked is None:
            return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
        if form.get("redirect_uri") != asked["redirect_uri"]:
            return 400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != asked["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}
        answer = self._issue("google-user", "google")
        answer.update(refresh_token=self.new_refresh_token(), scope="https://mail.google.com/")
        return 200, answer

    def google_token(self, form: dict) -> tuple[int, dict]:
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._google_code(form)
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            assertion = form.get("assertion", "")
            try:
                iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
                key = self.google_accounts[iss]
                claims = jwt.decode(assertion, key, algorithms=["RS256"],
                                    # google-auth (as Google requires) names Google's endpoint
                                    audience="https://oauth2.googleapis.com/token")
            except (KeyError, jwt.PyJWTError) as exc:
                return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
            if not claims.get("sub"):
                return 400, {"error": "invalid_grant", "error_description": "no subject"}
            if "https://mail.google.com/" not in claims.get("scope", "").split():
                return 400, {"error": "invalid_scope", "error_description": "scope"}
            return 200, self._issue(claims["sub"], "google")
        if grant == "refresh_token":
            if (form.get("client_id"), form.get("client_secret")) != self.google_client:
                return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
            with self.lock:
                valid = self.refresh_tokens.get(form.get("refresh_token", ""))
            if not valid:
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            return 200, self._issue("google-user", "google")
        return 400, {"error": "unsupported_grant_type"}

    def openid_configuration(self) -> dict:
        t = f"{self.base}/{TENANT}"
        return {"issuer": f"{self.base}/{TENANT}/v2.0",
                "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
                "token_endpoint": f"{t}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{t}/discovery/v2.0/keys",
                "response_types_supported": ["code"],
                "tenant_region_scope": "EU"}


def _aad(error: str, code: int, text: str) -> dict:
    return {"error": error, "error_description": f"AADSTS{code}: {text} Trace ID: 0000",
            "error_codes": [code], "timestamp": "2026-12-05 09:00:00Z"}


class _Handler(BaseHTTPRequestHandler):
    idp: FakeIdentity

    def log_message(self, *args) -> None:       # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        idp = self.idp
        path = urllib.parse.urlsplit(self.path).path
        with idp.lock:
            idp.paths.append(f"GET {path}")
        if path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._answer(200, idp.openid_configuration())
        elif path == "/google/auth":
            status, answer = idp.google_auth(dict(urllib.parse.parse_qsl(
                urllib.parse.urlsplit(self.path).query)))
            if isinstance(answer, str):
                self.send_response(status)
                self.send_header("Location", answer)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._answer(status, answer)
        else:
            self._answer(404, {"error": "not_found"})

    def do_POST(self) -> None:
        idp = self.idp
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        with idp.lock:
            idp.paths.append(f"POST {path}")
        if path == f"/{TENANT}/oauth2/v2.0/token":
            with idp.lock:
                idp.token_requests.append(form)
            self._answer(*idp.microsoft_token(form))
        elif path == f"/{TENANT}/oauth2/v2.0/devicecode":
            self._answer(*idp.device_code(form))
        elif path == "/google/token":
            with idp.lock:
                idp.token_requests.append(form)
            self._answer(*idp.google_token(form))
        else:
            self._answer(404, {"error": "not_found"})


@dataclass
class AuthAttempt:
    mechanism: str
    user: str
    token: str
    ok: bool
    host: str | None = None          # OAUTHBEARER's host and port kvpairs
    port: str | None = None


class OAuthSMTP(_SMTP):
    """aiosmtpd with AUTH XOAUTH2 and OAUTHBEARER checked against a FakeIdentity. Set
    `idp` and `attempts` on a subclass."""

    idp: FakeIdentity
    attempts: list[AuthAttempt]
    plaintext_auth = False          # True: offer AUTH without TLS too (a careless next hop)

    def __init__(self, *args, **kwargs) -> None:
        if self.plaintext_auth:
            kwargs["auth_require_tls"] = False
        super().__init__(*args, **kwargs)

    async def _refuse(self) -> AuthResult:
        # Both platforms: the error status as a challenge, then 535 after the client's reply.
        status = json.dumps({"status": "401", "schemes": "bearer",
                             "scope": "https://mail.google.com/"})
        await self.challenge_auth(status)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.3 Authentication unsuccessful")

    async def auth_XOAUTH2(self, server, args):
        if len(args) < 2:
            return AuthResult(success=False, handled=False, message="501 5.5.2 initial response needed")
        text = base64.b64decode(args[1]).decode()
        parts = dict(p.split("=", 1) for p in text.split("\x01") if "=" in p)
        user, auth = parts.get("user", ""), parts.get("auth", "")
        token = auth.removeprefix("Bearer ")
        ok = auth.startswith("Bearer ") and text.endswith("\x01\x01") and self.idp.check(token, user)
        self.attempts.append(AuthAttempt("XOAUTH2", user, token, ok))
        if not ok:
            return await self._refuse()
        return AuthResult(success=True, auth_data=_Login(user))

    async def auth_OAUTHBEARER(self, server, args):
        if len(args) < 2:
            return AuthResult(success=False, handled=False, message="501 5.5.2 initial response needed")
        text = base64.b64decode(args[1]).decode()
        gs2, _, rest = text.partition("\x01")
        # RFC 7628 3.1: gs2-header "n,a=saslname," (no channel binding)
        head = gs2.split(",")
        user = head[1][2:].replace("=2C", ",").replace("=3D", "=") if len(head) > 1 else ""
        kv = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
        auth = kv.get("auth", "")
        token = auth.removeprefix("Bearer ")
        ok = (head[0] == "n" and auth.startswith("Bearer ") and text.endswith("\x01\x01")
              and self.idp.check(token, user))
        self.attempts.append(AuthAttempt("OAUTHBEARER", user, token, ok, kv.get("host"), kv.get("port")))
        if not ok:
            return await self._refuse()
        return AuthResult(success=True, auth_data=_Login(user))


@dataclass
class _Login:
    login: str


@dataclass
class GraphSent:
    mailbox: str             # the user of /users/{mailbox}/sendMail
    recipient: str           # one of the To/Cc/Bcc of the MIME (Graph has no envelope)
    message: bytes           # as the recipient gets it: without the Bcc header


@dataclass
class FakeGraph:
    """Microsoft Graph's sendMail in MIME mode, HTTPS on 127.0.0.1 (a trustme certificate):
    checks the bearer token (issued by `idp` for this Graph's /.default scope, not expired,
    not in `refuse`), the Content-Type (text/plain) and the base64 MIME, then "delivers"
    to every To/Cc/Bcc address of the MIME, as Graph does, with Bcc stripped. `answers`:
    scripted replies (status, headers, JSON body) used, in order, before the real work."""

    port: int
    ca: object
    idp: FakeIdentity
    sent: list[GraphSent] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)     # every request: time, mailbox, status
    answers: list[tuple[int, dict, dict | None]] = field(default_factory=list)
    refuse_first: int = 0       # the first N tokens used are answered 401 (revoked)
    refused: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def scope(self) -> str:
        return f"{self.base}/.default"

    def start(self) -> "FakeGraph":
        graph = self
        self.idp.app_scopes.add(self.scope)

        class Handler(_GraphHandler):
            fake = graph

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, n: int, timeout: float = 20) -> list[GraphSent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.sent) >= n:
                    return list(self.sent)
            time.sleep(0.05)
        raise AssertionError(f"Graph got {len(self.sent)} of {n}: {self.requests}")

    def handle(self, path: str, headers, body: bytes) -> tuple[int, dict, dict | None]:
        import email
        import email.policy
        import email.utils
        import re as _re

        found = _re.fullmatch(r"/v1\.0/users/([^/]+)/sendMail", path)
        if found is None:
            return 404, {}, _graph_error("ResourceNotFound", f"no such path {path}")
        mailbox = urllib.parse.unquote(found[1])
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        with self.idp.lock:
            issued = self.idp.issued.get(token)
        with self.lock:
            if token not in self.refused and len(self.refused) < self.refuse_first:
                self.refused.add(token)
        if (issued is None or issued.expires_at < time.time() or issued.scope != self.scope
                or token in self.refused):
            return 401, {}, _graph_error("InvalidAuthenticationToken", "Access token validation failure.")
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
        if not (headers.get("Content-Type") or "").startswith("text/plain"):
            return 415, {}, _graph_error("UnsupportedMediaType", "MIME content must be text/plain")
        if len(body) > 4 * 1024 * 1024:
            return 413, {}, _graph_error("ErrorRequestEntityTooLarge", "too large")
        try:
            mime = base64.b64decode(body, validate=True)
        except ValueError:
            return 400, {}, _graph_error("ErrorMimeContentInvalidBase64String",
                                         "Invalid base64 string for MIME content.")
        msg = email.message_from_bytes(mime, policy=email.policy.compat32)
        rcpts = [a for _, a in email.utils.getaddresses(
            msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("Bcc", [])) if a]
        if not rcpts:
            return 400, {}, _graph_error("ErrorInvalidRecipients",
                                         "At least one recipient is not valid.")
        del msg["Bcc"]
        delivered = msg.as_bytes()
        with self.lock:
            self.sent.extend(GraphSent(mailbox, r, delivered) for r in rcpts)
        return 202, {}, None


def _graph_error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message,
                      "innerError": {"date": "2026-12-05T09:00:00", "request-id": "r-1"}}}


class _GraphHandler(BaseHTTPRequestHandler):
    fake: FakeGraph
    protocol_version = "HTTP/1.1"       # keep-alive, as Graph

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.fake
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        status, headers, answer = fake.handle(path, self.headers, body)
        with fake.lock:
            fake.requests.append({"at": time.time(), "path": path, "status": status,
                                  "token": (self.headers.get("Authorization") or "")[7:]})
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("request-id", secrets.token_hex(8))
        for name, value in headers.items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
