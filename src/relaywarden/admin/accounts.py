"""Console and API users: `relaywarden admin-user add|passwd|remove|list|token|revoke-token`.

The file (``admin.users_file``, default ``admin-users`` next to the config) is JSON::

    {"version": 1,
     "users": [{"name": "alice", "role": "admin", "hash": "$argon2id$...",
                "tokens": [{"sha256": "<hex>", "created": 1733300000.0}]}]}

- passwords: argon2id (argon2-cffi), never stored or printed in clear;
- API tokens: ``rwt_`` + 43 random URL-safe characters, printed once by ``token``; only
  their SHA-256 is kept (a token is a random 256-bit secret, so a fast hash suffices);
- roles: ``viewer`` < ``operator`` < ``admin`` (docs/admin.md);
- names: as for SMTP AUTH users (no ``:``, white space, control characters), compared
  case-insensitively.

Writes are atomic (temp file, fsync, rename, mode 0600) under an flock on ``PATH.lock``;
the admin process re-reads the file when it changes, so a new user can log in at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from relaywarden.auth.users import MAX_PASSWORD, UserFileError, check_name, file_stamp, write_private

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "rwt_"


def role_rank(role: str | None) -> int:
    return ROLES.index(role) + 1 if role in ROLES else 0


class AccountError(Exception):
    """A problem the admin must fix: bad name, no such user, unreadable file."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: str
    tokens: int = 0


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class AdminAccounts:
    """The admin users file. Thread-safe; re-reads the file when it changes."""

    def __init__(self, path: str | os.PathLike[str], *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: list[dict] = []
        self._dummy: str | None = None

    # -- reading ------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        return file_stamp(self.path)

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp:
            return
        if stamp is None:
            self._stamp, self._users = None, []
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
            users = data["users"]
            if not isinstance(users, list) or not all(
                    isinstance(u, dict) and isinstance(u.get("name"), str)
                    and u.get("role") in ROLES and isinstance(u.get("hash"), str) for u in users):
                raise ValueError("malformed users list")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise AccountError(f"{self.path}: cannot read: {exc}") from None
        for u in users:
            u.setdefault("tokens", [])
        self._stamp, self._users = stamp, users

    def _find(self, name: str) -> dict | None:
        if not isinstance(name, str):
            return None
        key = name.casefold()
        return next((u for u in self._users if u["name"].casefold() == key), None)

    def list(self) -> list[Account]:
        with self._lock:
            self._refresh()
            return [Account(u["name"], u["role"], len(u["tokens"])) for u in self._users]

    def get(self, name: str) -> Account | None:
        with self._lock:
            self._refresh()
            u = self._find(name)
            return Account(u["name"], u["role"], len(u["tokens"])) if u else None

    # -- checking -----------------------------------------------------------------------

    def verify(self, name: str, password: str) -> Account | None:
        """The account if the password is right (blocking: argon2 costs tens of ms)."""
        with self._lock:
            self._refresh()
            u = self._find(name)
            u = dict(u) if u else None
        if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
            password = "\x00not-the-password"
        if u is None:
            if self._dummy is None:     # same work as for a real user: names stay secret
                self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
            with contextlib.suppress(VerificationError, InvalidHashError):
                self.hasher.verify(self._dummy, password)
            return None
        try:
            self.hasher.verify(u["hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return Account(u["name"], u["role"], len(u["tokens"]))

    def by_token(self, token: str) -> Account | None:
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = token_digest(token)
        with self._lock:
            self._refresh()
            for u in self._users:
                for t in u["tokens"]:
                    if hmac.compare_digest(str(t.get("sha256", "")), digest):
                        return Account(u["name"], u["role"], len(u["tokens"]))
        return None

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._stamp = None
                self._refresh()
                yield
                self._write()
        finally:
            os.close(fd)

    def _write(self) -> None:
        write_private(self.path, json.dumps({"version": 1, "users": self._users}, indent=2) + "\n")
        self._stamp = None
        self._refresh()

    def _hash(self, password: str) -> str:
        if not isinstance(password, str) or not password:
            raise AccountError("the password is empty")
        if len(password) > MAX_PASSWORD:
            raise AccountError(f"the password is longer than {MAX_PASSWORD} characters")
        return self.hasher.hash(password)

    def _need(self, name: str) -> dict:
        u = self._find(name)
        if u is None:
            raise AccountError(f"no such user: {name}")
        return u

    def add(self, name: str, password: str, role: str) -> Account:
        try:
            check_name(name)
        except UserFileError as exc:
            raise AccountError(str(exc)) from None
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        hash_ = self._hash(password)
        with self._writing():
            existing = self._find(name)
            if existing is not None:
                raise AccountError(f"user {existing['name']} already exists")
            self._users.append({"name": name, "role": role, "hash": hash_, "tokens": []})
        return Account(name, role)

    def set_password(self, name: str, password: str) -> Account:
        hash_ = self._hash(password)
        with self._writing():
            u = self._need(name)
            u["hash"] = hash_
        return Account(u["name"], u["role"], len(u["tokens"]))

    def set_role(self, name: str, role: str) -> Account:
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self._writing():
            u = self._need(name)
            u["role"] = role
        return Account(u["name"], u["role"], len(u["tokens"]))

    def remove(self, name: str) -> Account:
        with self._writing():
            u = self._need(name)
            self._users.remove(u)
        return Account(u["name"], u["role"], len(u["tokens"]))

    def new_token(self, name: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing():
            u = self._need(name)
            u["tokens"].append({"sha256": token_digest(token), "created": round(time.time(), 3)})
        return token

    def revoke_tokens(self, name: str) -> int:
        with self._writing():
            u = self._need(name)
            n = len(u["tokens"])
            u["tokens"] = []
        return n


# ---------------------------------------------------------------------------- the CLI


def _accounts(path: str | None, config_path: str | None) -> AdminAccounts:
    if path and config_path:
        raise click.UsageError("give --file or --config, not both")
    if path:
        return AdminAccounts(path)
    from relaywarden.admin.configfile import load_config_or_exit

    cfg = load_config_or_exit(config_path)
    if cfg.admin.users_file is None:
        raise click.UsageError("the config sets no admin.users_file")
    return AdminAccounts(cfg.admin.users_file)


def _where(f):
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="the relay config: its admin.users_file (default: the embedded config)")(f)
    return click.option("--file", "path", type=click.Path(dir_okay=False),
                        help="the admin users file (instead of --config)")(f)


def _fail(message: str) -> None:
    click.echo(f"relaywarden: {message}", err=True)
    sys.exit(1)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\n").rstrip("\r")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password is empty")
    return password


@click.group("admin-user")
def admin_user() -> None:
    """Users of the web console and HTTP API: add, passwd, remove, list, token, revoke-token."""


@admin_user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="viewer: read only; operator: also queue and badmail actions; admin: everything")
@_where
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def admin_user_add(name, role, path, config_path, password_stdin) -> None:
    """Add console user NAME with ROLE (asks for the password)."""
    try:
        check_name(name)
    except UserFileError as exc:
        raise click.UsageError(f"NAME: {exc}") from None
    accounts = _accounts(path, config_path)
    try:
        existing = accounts.get(name)
        if existing is not None:
            _fail(f"user {existing.name} already exists in {accounts.path}")
        account = accounts.add(name, _password(password_stdin), role)
    except AccountError as exc:
        _fail(str(exc))
    click.echo(f"added {account.name} ({account.role}) to {accounts.path}")


@admin_user.command("passwd")
@click.argument("name")
@_where
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--role", type=click.Choice(ROLES), help="also change the role")
def admin_user_passwd(name, path, config_path, password_stdin, role) -> None:
    """Set a new password (and, with --role, a new role) for NAME."""
    accounts = _accounts(path, config_path)
    try:
        if accounts.get(name) is None:
            _fail(f"no such user: {name}")
        account = accounts.set_password(name, _password(password_stdin))
        if role:
            account = accounts.set_role(name, role)
    except AccountError as exc:
        _fail(str(exc))
    click.echo(f"password of {account.name} changed" + (f"; role {account.role}" if role else ""))


@admin_user.command("remove")
@click.argument("name")
@_where
def admin_user_remove(name, path, config_path) -> None:
    """Remove NAME (its API tokens stop working; its open sessions end at their next request)."""
    try:
        account = _accounts(path, config_path).remove(name)
    except AccountError as exc:
        _fail(str(exc))
    click.echo(f"removed {account.name}")


@admin_user.command("list")
@_where
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def admin_user_list(path, config_path, as_json) -> None:
    """List the users, their roles and how many API tokens each has."""
    try:
        accounts = _accounts(path, config_path).list()
    except AccountError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps([{"name": a.name, "role": a.role, "tokens": a.tokens}
                               for a in accounts], indent=2))
        return
    if not accounts:
        click.echo("no users")
    for a in accounts:
        click.echo(f"{a.name}  {a.role}" + (f"  tokens: {a.tokens}" if a.tokens else ""))


@admin_user.command("token")
@click.argument("name")
@_where
def admin_user_token(name, path, config_path) -> None:
    """Make a new API token for NAME and print it (once: only its SHA-256 is kept)."""
    try:
        token = _accounts(path, config_path).new_token(name)
    except AccountError as exc:
        _fail(str(exc))
    click.echo(token)


@admin_user.command("revoke-token")
@click.argument("name")
@_where
def admin_user_revoke(name, path, config_path) -> None:
    """Revoke every API token of NAME."""
    try:
        n = _accounts(path, config_path).revoke_tokens(name)
    except AccountError as exc:
        _fail(str(exc))
    click.echo(f"revoked {n} token(s) of {name}")
