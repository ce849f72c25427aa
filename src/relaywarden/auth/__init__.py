"""AUTH backends: who is this user, is the password right, which groups is it in.

This package checks credentials only; the SMTP side (RFC 4954: the AUTH command, SASL
PLAIN/LOGIN decoding, the 334 challenges) lives in ``server/``. Every backend answers one
question with a typed value::

    result = await backend.verify(name, password)     # -> AuthResult
    result.reply                                      # 235 / 535 5.7.8 / 454 4.7.0

Three outcomes, because RFC 4954 section 6 gives the client three answers:

- ``ok``: 235 2.7.0, the session is authenticated as ``result.user`` with ``result.groups``;
- not ok, permanent (wrong password, no such user, empty password): 535 5.7.8;
- not ok, ``temporary`` (the directory is down or timed out): 454 4.7.0, so the client
  tries again later instead of concluding that its password is wrong.

``detail`` is for the log only (never the password); the client sees the generic text of
``reply``. Backends: :class:`relaywarden.auth.users.LocalBackend` (the local users file),
:class:`relaywarden.auth.ldap.LdapBackend` (LDAP / Active Directory), and
:class:`ChainBackend` to ask several in order. Brute-force throttling is
:mod:`relaywarden.auth.throttle`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from relaywarden.smtp.reply import Reply, reply

__all__ = [
    "AUTH_OK",
    "AUTH_INVALID",
    "AUTH_TEMPORARY",
    "AuthResult",
    "Backend",
    "ChainBackend",
]

# RFC 4954 section 6 (and the enhanced codes of RFC 4954 / RFC 3463).
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = reply(454, "4.7.0", "Temporary authentication failure")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict of one credential check. Never holds the password."""

    ok: bool
    user: str | None = None              # the name as the backend knows it (canonical spelling)
    groups: frozenset[str] = field(default_factory=frozenset)
    temporary: bool = False              # only meaningful when not ok: try again later
    detail: str = ""                     # for the log, never for the client
    backend: str = ""                    # which backend answered ("file", "ldap")

    @classmethod
    def success(cls, user: str, groups: Iterable[str] = (), *, backend: str = "",
                detail: str = "") -> AuthResult:
        return cls(ok=True, user=user, groups=frozenset(groups), backend=backend, detail=detail)

    @classmethod
    def failure(cls, detail: str, *, user: str | None = None, backend: str = "") -> AuthResult:
        return cls(ok=False, user=user, detail=detail, backend=backend)

    @classmethod
    def unavailable(cls, detail: str, *, user: str | None = None, backend: str = "") -> AuthResult:
        """The backend could not answer (server down, timeout): a temporary failure."""
        return cls(ok=False, user=user, temporary=True, detail=detail, backend=backend)

    @property
    def reply(self) -> Reply:
        """The RFC 4954 answer to the client: 235, 535 5.7.8 or 454 4.7.0."""
        if self.ok:
            return AUTH_OK
        return AUTH_TEMPORARY if self.temporary else AUTH_INVALID


@runtime_checkable
class Backend(Protocol):
    """Anything that can check a user name and password without blocking the event loop."""

    async def verify(self, name: str, password: str) -> AuthResult: ...


class ChainBackend:
    """Asks backends in order; the first success wins.

    A permanent failure moves on to the next backend (the user may live in the next one).
    When none succeeds and any of them could not answer, the result is temporary: the
    password might have been right in the directory that was down, so 535 would be a lie.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("ChainBackend needs at least one backend")
        self.backends = tuple(backends)

    async def verify(self, name: str, password: str) -> AuthResult:
        failures: list[AuthResult] = []
        for backend in self.backends:
            result = await backend.verify(name, password)
            if result.ok:
                return result
            failures.append(result)
        detail = "; ".join(f"{r.backend or '?'}: {r.detail}" for r in failures)
        if any(r.temporary for r in failures):
            return AuthResult.unavailable(detail, backend="chain")
        return AuthResult.failure(detail, backend="chain")
