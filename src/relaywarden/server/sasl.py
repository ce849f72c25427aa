"""The AUTH exchange (RFC 4954) as a small state machine: PLAIN (RFC 4616), LOGIN, and
CRAM-MD5 (RFC 2195).

Sans-IO and pure, as the protocol core: the session hands it the AUTH command and each
client line after a 334 (already base64-decoded by the core), it answers with the next step:

- ``Challenge(data)``: send ``334`` with ``data`` (the core base64-encodes it) and wait;
- ``Credentials``: the exchange is complete, a name and a password (for CRAM-MD5, the
  digest of ``challenge``) for the caller's checker, ``authenticate`` below;
- ``Failed(reply, detail)``: answer ``reply`` now; ``detail`` is for the mail log.

After a ``Credentials`` or a ``Failed`` the machine is idle again (``active`` is False):
the caller answers, and a new AUTH starts over. The core answers what comes before (AUTH
not offered, unknown mechanism, already authenticated, "*" and bad base64) itself.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relaywarden.auth import AUTH_INVALID, AuthResult
from relaywarden.smtp.reply import Reply, reply

if TYPE_CHECKING:
    from relaywarden.auth import Backend
    from relaywarden.auth.cram import CramSecrets
    from relaywarden.auth.throttle import AuthThrottle

# RFC 4954 6; 530 5.7.0 (TLS or AUTH first) and 538 5.7.11 are the gates' (policy/gates.py).
AUTH_MALFORMED = reply(501, "5.5.2", "Cannot decode the authentication data")
AUTH_LOCKED = reply(454, "4.7.0", "Too many failed authentication attempts, try again later")

_CRAM_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334`` with ``data`` and wait for the client's line."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """A complete exchange: check ``user`` and ``password`` (for CRAM-MD5, ``password`` is
    the hex digest the client made of ``challenge``)."""

    mechanism: str
    user: str
    password: str
    challenge: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Answer ``reply`` now; ``detail`` says why in the mail log."""

    mechanism: str
    reply: Reply
    detail: str


Step = Challenge | Credentials | Failed

# The states: what the next client line is.
_IDLE = ""
_PLAIN = "PLAIN"                     # the PLAIN response (no initial response was given)
_CRAM = "CRAM"                       # the CRAM-MD5 response to self._challenge
_LOGIN_USER = "LOGIN-USER"           # the LOGIN user name
_LOGIN_PASSWORD = "LOGIN-PASSWORD"   # the LOGIN password of self._user


def cram_challenge(hostname: str, nonce: int, now: float) -> bytes:
    """RFC 2195 2: a challenge in the form of an RFC 5322 msg-id, unique per use."""
    return f"<{nonce}.{int(now)}@{hostname}>".encode()


class SaslExchange:
    """One session's AUTH exchanges, one at a time. ``nonce`` and ``clock`` make the
    CRAM-MD5 challenge (injected for tests)."""

    __slots__ = ("hostname", "_state", "_user", "_challenge", "_nonce", "_clock")

    def __init__(self, hostname: str, *,
                 nonce: Callable[[], int] = lambda: secrets.randbelow(10**15),
                 clock: Callable[[], float] = time.time) -> None:
        self.hostname = hostname
        self._state = _IDLE
        self._user = b""
        self._challenge = b""
        self._nonce = nonce
        self._clock = clock

    @property
    def active(self) -> bool:
        """A challenge was sent and the client's line is awaited."""
        return self._state != _IDLE

    def reset(self) -> None:
        """The exchange ended elsewhere (the core answered "*" or bad base64)."""
        self._state = _IDLE

    def start(self, mechanism: str, initial: bytes | None) -> Step:
        """AUTH ``mechanism`` (upper case, one the core let through) with its initial
        response, or None."""
        if mechanism == "PLAIN":
            if initial is None:
                return self._ask(_PLAIN, b"")
            return self._plain(initial)
        if mechanism == "CRAM-MD5":
            if initial is not None:
                return self._fail(mechanism, AUTH_MALFORMED, "CRAM-MD5 with an initial response")
            self._challenge = cram_challenge(self.hostname, self._nonce(), self._clock())
            return self._ask(_CRAM, self._challenge)
        # LOGIN: the core only lets through the mechanisms the settings name.
        if initial is None:
            return self._ask(_LOGIN_USER, b"Username:")
        self._user = initial
        return self._ask(_LOGIN_PASSWORD, b"Password:")

    def respond(self, data: bytes) -> Step:
        """The client's line after a challenge."""
        state = self._state
        if state == _PLAIN:
            return self._plain(data)
        if state == _CRAM:
            user, _, digest = data.rpartition(b" ")
            if not user or not _CRAM_DIGEST.fullmatch(digest):
                return self._fail("CRAM-MD5", AUTH_MALFORMED, "malformed CRAM-MD5 response")
            return self._credentials("CRAM-MD5", user, digest, self._challenge)
        if state == _LOGIN_USER:
            self._user = data
            return self._ask(_LOGIN_PASSWORD, b"Password:")
        if state == _LOGIN_PASSWORD:
            return self._credentials("LOGIN", self._user, data)
        # The core sends a client line only after a 334: a driver bug, not the client's.
        raise RuntimeError("an AUTH response without an exchange in progress")

    def _ask(self, state: str, challenge: bytes) -> Challenge:
        self._state = state
        return Challenge(challenge)

    def _fail(self, mechanism: str, answer: Reply, detail: str) -> Failed:
        self._state = _IDLE
        return Failed(mechanism, answer, detail)

    def _plain(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return self._fail("PLAIN", AUTH_MALFORMED, "malformed PLAIN response")
        authzid, user, password = parts
        if authzid and authzid != user:
            # Acting for another identity (RFC 4616 2) is not something we grant anyone.
            return self._fail("PLAIN", AUTH_INVALID, "authorization identity refused")
        return self._credentials("PLAIN", user, password)

    def _credentials(self, mechanism: str, user: bytes, password: bytes,
                     challenge: bytes | None = None) -> Step:
        self._state = _IDLE
        try:
            return Credentials(mechanism, user.decode("utf-8"), password.decode("utf-8"),
                               challenge)
        except UnicodeDecodeError:
            return Failed(mechanism, AUTH_MALFORMED, "credentials are not UTF-8")


def challenge_octets(challenge: bytes) -> int:
    """The octets of a 334 line carrying ``challenge``: "334 ", base64, CRLF."""
    return 6 + (len(challenge) + 2) // 3 * 4


async def authenticate(credentials: Credentials, *, client: str, backend: Backend | None,
                       cram: CramSecrets | None, throttle: AuthThrottle | None) -> AuthResult:
    """Check the credentials: CRAM-MD5 against the shared secrets, the others with the
    password checker (auth/). The throttle counts the outcome; after a failure the answer
    waits for its growing delay (what makes guessing slow: this session waits, the rest of
    the relay does not). A temporary failure (a checker that cannot answer) is not counted."""
    user = credentials.user
    if credentials.challenge is not None:
        result = (cram.verify(user, credentials.challenge, credentials.password)
                  if cram is not None
                  else AuthResult.failure("no CRAM-MD5 secrets", backend="cram-md5"))
    elif backend is None:
        result = AuthResult.unavailable("no authentication backend")
    else:
        result = await backend.verify(user, credentials.password)
    if result.ok:
        if throttle is not None:
            throttle.success(client=client, user=user)
    elif not result.temporary and throttle is not None:
        verdict = throttle.failure(client=client, user=user)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
    return result
