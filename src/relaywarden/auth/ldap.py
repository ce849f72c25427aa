"""LDAP and Active Directory as an AUTH backend (ldap3).

Two ways to find the user, as every LDAP-backed mail server offers them:

- ``mode="bind"``: the user's DN is made from a template and the relay binds as the user.
  ``user_dn_template="uid={user},ou=people,dc=example,dc=test"`` (OpenLDAP) or a UPN
  ``"{user}@example.test"`` / down-level ``"EXAMPLE\\{user}"`` (Active Directory).
- ``mode="search"``: a service account (``bind_dn``/``bind_password``; anonymous when
  unset) searches ``search_base`` with ``search_filter`` (``"(uid={user})"``,
  ``"(sAMAccountName={user})"``); exactly one entry must match; the relay then binds as
  that entry's DN with the user's password.

Groups (for the policy's per-group rules) come from the user entry's ``group_attribute``
(``memberOf``: each value is a group DN and the group's name is its first RDN value) and/or
from a search under ``group_search_base`` with ``group_filter`` (``"(member={dn})"``; AD
nested groups: ``"(member:1.2.840.113556.1.4.1941:={dn})"``), taking
``group_name_attribute`` (``cn``) of each hit.

Holes closed here:

- an empty password is refused before anything is sent: RFC 4513 section 5.1.2 makes a
  simple bind with a DN and an empty password an "unauthenticated bind", which many
  servers (AD included) answer with success;
- the user name is escaped for its place: RFC 4514 escaping inside a DN
  (``escape_rdn``), RFC 4515 escaping inside a filter (``escape_filter_chars``), and a
  UPN-style template refuses names with DN/filter metacharacters, so ``*)(uid=*`` or
  ``alice,ou=admins`` match nothing;
- referrals are not chased (they could point at a server we do not trust).

Outcomes: wrong password / no such user -> ``ok=False`` (535 5.7.8); the server down,
refusing, timing out, a TLS failure or a busy/unavailable answer -> ``temporary=True``
(454 4.7.0). ldap3 is blocking, so every check runs in this backend's own small thread
pool and never on the event loop; ``timeout`` bounds the connect and each answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from relaywarden.auth import AuthResult

__all__ = ["LdapBackend", "LdapSettings", "group_name_from_dn"]

log = logging.getLogger("relaywarden.auth")

MAX_NAME = 256
MAX_PASSWORD = 1024
# Characters that have a meaning in a DN (RFC 4514) or a filter (RFC 4515): a name that
# goes into a non-DN template (a UPN) must not hold them.
_UNSAFE_IN_UPN = set(',+"\\<>;=*()#') | {chr(c) for c in range(0x20)} | {"\x7f"}

# LDAP result codes (RFC 4511 4.1.9) that mean "these credentials are not good": 535.
# Everything else that is not success (busy 51, unavailable 52, other 80, ...) is 454.
_PERMANENT = {
    32,   # noSuchObject
    34,   # invalidDNSyntax (a name our escaping turned into nonsense)
    48,   # inappropriateAuthentication
    49,   # invalidCredentials (AD: also locked, disabled, expired accounts)
    50,   # insufficientAccessRights
    53,   # unwillingToPerform (e.g. an unauthenticated bind refused)
}


@dataclass(frozen=True, kw_only=True)
class LdapSettings:
    """Where the directory is and how users and groups are found (see the module doc)."""

    url: str                                   # ldap://host:port or ldaps://host:port
    mode: Literal["bind", "search"] = "bind"
    start_tls: bool = False                    # ldap:// only: upgrade before the bind
    ca_file: str | None = None                 # CA for ldaps/StartTLS (default: system CAs)
    user_dn_template: str | None = None        # bind mode: "uid={user},ou=..." or "{user}@ad.example"
    bind_dn: str | None = None                 # search mode: the service account
    bind_password: str | None = field(default=None, repr=False)
    search_base: str | None = None
    search_filter: str = "(uid={user})"        # AD: "(sAMAccountName={user})"
    group_attribute: str | None = "memberOf"
    group_search_base: str | None = None
    group_filter: str = "(member={dn})"
    group_name_attribute: str = "cn"
    timeout: float = 5.0                       # seconds, connect and each answer

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            out.append(f"url: want ldap://host[:port] or ldaps://host[:port], not {self.url!r}")
        if self.start_tls and parts.scheme == "ldaps":
            out.append("start_tls: ldaps:// is TLS already")
        if self.mode not in ("bind", "search"):
            out.append(f"mode: want 'bind' or 'search', not {self.mode!r}")
        if self.mode == "bind" and (not self.user_dn_template or "{user}" not in self.user_dn_template):
            out.append("user_dn_template: bind mode needs a template with {user}")
        if self.mode == "search":
            if not self.search_base:
                out.append("search_base: search mode needs it")
            if "{user}" not in self.search_filter:
                out.append("search_filter: needs {user}")
            if self.bind_dn and not self.bind_password:
                out.append("bind_password: the service account needs one")
        if self.group_search_base and "{dn}" not in self.group_filter and "{user}" not in self.group_filter:
            out.append("group_filter: needs {dn} or {user}")
        if self.timeout <= 0:
            out.append("timeout: must be positive")
        return out

    @property
    def dn_template(self) -> bool:
        """True when user_dn_template is a DN (attr={user},...), False for UPN/DOMAIN\\user."""
        t = self.user_dn_template or ""
        head = t.split("{user}", 1)[0]
        return "=" in head


def group_name_from_dn(dn: str) -> str:
    """``cn=scanners,ou=groups,dc=example,dc=test`` -> ``scanners``."""
    try:
        first = parse_dn(dn, escape=False, strip=True)[0]
    except LDAPException:
        return dn
    value = first[1]
    # parse_dn leaves RFC 4514 escapes in place; undo the simple ones.
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class _Temporary(Exception):
    """The directory could not answer: 454."""


class LdapBackend:
    """LDAP / AD credential check as an async :class:`relaywarden.auth.Backend`."""

    name = "ldap"

    def __init__(self, settings: LdapSettings, *, max_workers: int = 4) -> None:
        self.settings = settings
        # A pool of our own: a hung directory then ties up these threads only, never the
        # loop's default executor that DNS or the queue may need.
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ldap-auth")
        parts = urlsplit(settings.url)
        use_ssl = parts.scheme == "ldaps"
        tls = None
        if use_ssl or settings.start_tls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                            ca_certs_file=settings.ca_file)
        self._server = ldap3.Server(
            parts.hostname, port=parts.port or (636 if use_ssl else 389), use_ssl=use_ssl,
            tls=tls, get_info=ldap3.NONE, connect_timeout=settings.timeout)

    def __repr__(self) -> str:
        return f"LdapBackend({self.settings.url!r}, mode={self.settings.mode!r})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def verify(self, name: str, password: str) -> AuthResult:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self.verify_sync, name, password)
        try:
            # The thread cannot be cancelled; the answer to the client must not wait for
            # it longer than a connect and a few round trips would take.
            return await asyncio.wait_for(future, timeout=self.settings.timeout * 4 + 1)
        except asyncio.TimeoutError:
            return AuthResult.unavailable("directory did not answer in time", backend=self.name)

    # -- the blocking part, in a worker thread ------------------------------------------

    async def exists(self, address: str, search_filter: str) -> bool | str:
        """Recipient validation (server/validate.py): does an entry match ``search_filter``
        with ``{address}`` filled in (escaped, RFC 4515 3)? True / False, or why the
        directory could not answer (a str). Binds as the search-mode service account."""
        f = search_filter.replace("{address}", escape_filter_chars(address))
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self._pool, self._exists, f),
                self.settings.timeout * 3)
        except asyncio.TimeoutError:
            return f"no answer within {self.settings.timeout * 3:g} s"

    def _exists(self, search_filter: str) -> bool | str:
        s = self.settings
        try:
            conn = self._connect(s.bind_dn, s.bind_password)
        except (_Temporary, LDAPException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        try:
            if not conn.bound:
                return f"bind as {s.bind_dn} answered {self._code(conn)}"
            conn.search(s.search_base, search_filter, attributes=[], size_limit=1)
            code = self._code(conn)
            if code in (0, 4):          # success; sizeLimitExceeded: more than one matched
                return bool(conn.entries) or code == 4
            if code == 32:              # noSuchObject: nothing under the base
                return False
            return f"search answered {code}"
        except LDAPException as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.unbind()

    def verify_sync(self, name: str, password: str) -> AuthResult:
        """The whole check, blocking. Never raises for directory trouble."""
        refused = self._refuse(name, password)
        if refused:
            return AuthResult.failure(refused, backend=self.name)
        try:
            if self.settings.mode == "bind":
                return self._verify_bind(name, password)
            return self._verify_search(name, password)
        except _Temporary as exc:
            log.warning("ldap %s: %s", self.settings.url, exc)
            return AuthResult.unavailable(str(exc), backend=self.name)
        except Exception as exc:  # noqa: BLE001
            # Socket, TLS and protocol errors (and ldap3's own surprises): the directory
            # could not answer. Never the password in here: ldap3 does not echo it.
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("ldap %s: %s", self.settings.url, detail)
            return AuthResult.unavailable(detail, backend=self.name)

    def _refuse(self, name: str, password: str) -> str | None:
        if not isinstance(password, str) or password == "":
            return "empty password"       # RFC 4513 5.1.2: it would be an unauthenticated bind
        if len(password) > MAX_PASSWORD or "\x00" in password:
            return "unacceptable password"
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            return "bad user name"
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name) or name != name.strip():
            # Control characters have no business in a name; and LDAP matching ignores
            # leading/trailing spaces (RFC 4518 2.6.1), so " alice" would log in as alice
            # under another spelling.
            return "bad user name"
        if self.settings.mode == "bind" and not self.settings.dn_template:
            if any(ch in _UNSAFE_IN_UPN for ch in name):
                return "bad user name"
        return None

    def _connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        """An open, bound connection; raises _Temporary, or returns one whose bind failed."""
        s = self.settings
        # ldap3 marks a server address that once failed as unavailable and then refuses
        # it ("invalid server address") even after the directory is back: every new
        # connection starts from a clean slate (a long-lived backend must outlive outages).
        self._server.reset_availability()
        conn = ldap3.Connection(
            self._server, user=user, password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            auto_bind=ldap3.AUTO_BIND_NONE, raise_exceptions=False, auto_referrals=False,
            # ldap3 packs this into SO_RCVTIMEO as an integer: whole seconds, at least 1.
            receive_timeout=max(1, math.ceil(s.timeout)), read_only=True)
        conn.open()
        if s.start_tls and not conn.start_tls():
            conn.unbind()
            raise _Temporary(f"StartTLS failed: {conn.result}")
        conn.bind()
        return conn

    @staticmethod
    def _code(conn: ldap3.Connection) -> int:
        result = conn.result or {}
        return int(result.get("result", 80)) if isinstance(result, dict) else 80

    def _user_bind(self, dn: str, password: str, name: str) -> tuple[ldap3.Connection | None, AuthResult | None]:
        conn = self._connect(dn, password)
        if conn.bound:
            return conn, None
        code = self._code(conn)
        desc = (conn.result or {}).get("description", "") if isinstance(conn.result, dict) else ""
        conn.unbind()
        if code in _PERMANENT:
            return None, AuthResult.failure(f"bind refused: {code} {desc}".strip(), user=name,
                                            backend=self.name)
        raise _Temporary(f"bind answered {code} {desc}".strip())

    def _verify_bind(self, name: str, password: str) -> AuthResult:
        s = self.settings
        assert s.user_dn_template
        if s.dn_template:
            principal = s.user_dn_template.format(user=escape_rdn(name))
        else:
            principal = s.user_dn_template.format(user=name)
        conn, failed = self._user_bind(principal, password, name)
        if failed:
            return failed
        assert conn is not None
        try:
            dn = principal if s.dn_template else self._who_am_i(conn, name)
            groups = self._groups(conn, dn, name) if dn else set()
        finally:
            conn.unbind()
        return AuthResult.success(name, groups, backend=self.name, detail=dn or principal)

    def _who_am_i(self, conn: ldap3.Connection, name: str) -> str | None:
        """The DN behind a UPN bind: RFC 4532 "Who am I?", else a search if configured."""
        s = self.settings
        try:
            who = conn.extend.standard.who_am_i()
        except LDAPException:
            who = None
        if isinstance(who, bytes):
            who = who.decode("utf-8", "replace")
        if who and who.lower().startswith("dn:"):
            return who[3:]
        if s.search_base:
            entry = self._find(conn, name)
            if isinstance(entry, str):
                return entry
        return None

    def _find(self, conn: ldap3.Connection, name: str) -> str | AuthResult:
        s = self.settings
        assert s.search_base
        flt = s.search_filter.format(user=escape_filter_chars(name))
        ok = conn.search(s.search_base, flt, search_scope=ldap3.SUBTREE, attributes=[],
                         size_limit=2, time_limit=max(1, int(s.timeout)))
        code = self._code(conn)
        if not ok and code not in (0, 4, 32):   # 4 sizeLimitExceeded: two or more hits
            if code in (50,):
                raise _Temporary(f"the search was refused ({code}): check the service account")
            raise _Temporary(f"search answered {code}")
        hits = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        if not hits:
            return AuthResult.failure("no such user", backend=self.name)
        if len(hits) > 1 or code == 4:
            return AuthResult.failure("the search filter matches more than one entry", user=name,
                                      backend=self.name)
        return hits[0]["dn"]

    def _verify_search(self, name: str, password: str) -> AuthResult:
        s = self.settings
        svc = self._connect(s.bind_dn, s.bind_password)
        try:
            if not svc.bound:
                raise _Temporary(f"the service account cannot bind ({self._code(svc)})")
            found = self._find(svc, name)
            if isinstance(found, AuthResult):
                return found
            dn = found
            conn, failed = self._user_bind(dn, password, name)
            if failed:
                return failed
            assert conn is not None
            conn.unbind()
            # Groups are read by the service account: users often may not read groups.
            groups = self._groups(svc, dn, name)
        finally:
            svc.unbind()
        return AuthResult.success(name, groups, backend=self.name, detail=dn)

    def _groups(self, conn: ldap3.Connection, dn: str, name: str) -> set[str]:
        s = self.settings
        groups: set[str] = set()
        if s.group_attribute:
            ok = conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE,
                             attributes=[s.group_attribute], time_limit=max(1, int(s.timeout)))
            if ok:
                for entry in conn.response or []:
                    if entry.get("type") != "searchResEntry":
                        continue
                    values = (entry.get("raw_attributes") or {}).get(s.group_attribute)
                    if values is None:
                        for key, vals in (entry.get("raw_attributes") or {}).items():
                            if key.lower() == s.group_attribute.lower():
                                values = vals
                    for raw in values or []:
                        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                        groups.add(group_name_from_dn(text))
        if s.group_search_base:
            flt = s.group_filter.format(dn=escape_filter_chars(dn), user=escape_filter_chars(name))
            ok = conn.search(s.group_search_base, flt, search_scope=ldap3.SUBTREE,
                             attributes=[s.group_name_attribute], time_limit=max(1, int(s.timeout)))
            if ok:
                for entry in conn.response or []:
                    if entry.get("type") != "searchResEntry":
                        continue
                    attrs = entry.get("raw_attributes") or {}
                    vals = next((v for k, v in attrs.items()
                                 if k.lower() == s.group_name_attribute.lower()), None)
                    if vals:
                        for raw in vals:
                            groups.add(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
                    else:
                        groups.add(group_name_from_dn(entry["dn"]))
        return groups
