"""The local users file: AUTH users kept next to the config, passwords hashed with argon2id.

Format, one user per line (``#`` starts a comment line; blank lines are ignored)::

    # relaywarden users: name:argon2id-hash[:group1,group2]
    scanner-3f:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA
    erp:$argon2id$v=19$m=65536,t=3,p=4$...$...:apps,billing

- ``name``: 1-256 characters, no ``:``, no white space or control characters. Lookup is
  case-insensitive (``Scanner`` logs in as ``scanner``); the name is stored, and reported,
  as it was given.
- the hash: an argon2id PHC string (RFC 9106) made by argon2-cffi; it never holds ``:``.
- groups (optional): comma-separated names, used by the policy's per-group rules.

Manage it with ``relaywarden user add|passwd|remove|list --file PATH``. Writes are atomic
(temp file + fsync + rename, mode 0600) and keep comments and the order of lines. The
relay re-reads the file when it changes (mtime, size or inode), so no reload is needed.

Timing: a check for a user that does not exist still verifies a password against a
dummy hash with the same argon2 parameters, so an attacker cannot tell which names exist
from how long the answer takes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from relaywarden.auth import AuthResult

__all__ = [
    "LocalBackend",
    "UserEntry",
    "UserExists",
    "UserFile",
    "UserFileError",
    "UserNotFound",
    "check_group",
    "check_name",
]

log = logging.getLogger("relaywarden.auth")

MAX_NAME = 256
MAX_PASSWORD = 1024          # argon2 takes any length; a cap keeps a hostile client cheap
_BAD_NAME_CHARS = set(":,") | {chr(c) for c in range(0x20)} | {"\x7f"}


def write_private(path: Path, text: str) -> None:
    """Replace a secrets file atomically (a reader sees the old file or the new one, never
    half of one), mode 0600, fsynced with its directory: the users files of SMTP AUTH and
    of the console."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file (mtime, size, inode: a rename over it is a new inode), or
    None when there is none: a reader re-reads a file only when this changes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class UserFileError(Exception):
    """A users-file problem that the admin must fix (bad name, unreadable file, ...)."""


class UserExists(UserFileError):
    pass


class UserNotFound(UserFileError):
    pass


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One user as listed: no hash, no password."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    hash: str
    groups: tuple[str, ...]
    line: int                 # index into the file's lines

    def __repr__(self) -> str:  # the hash stays out of logs and tracebacks
        return f"_User(name={self.name!r}, groups={self.groups!r}, line={self.line})"


def check_name(name: str) -> str:
    """Returns the name, or raises UserFileError saying what is wrong with it."""
    if not name or len(name) > MAX_NAME:
        raise UserFileError(f"a user name has 1 to {MAX_NAME} characters")
    if name != name.strip() or any(ch.isspace() or ch in _BAD_NAME_CHARS for ch in name):
        raise UserFileError("a user name may not hold ':', ',', white space or control characters")
    if name.startswith("#"):
        raise UserFileError("a user name may not start with '#'")
    return name


def check_group(group: str) -> str:
    if not group or len(group) > MAX_NAME or any(
        ch.isspace() or ch in _BAD_NAME_CHARS for ch in group
    ):
        raise UserFileError(f"bad group name {group!r}: no ':', ',', white space or control characters")
    return group


def _groups(groups: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for g in groups:
        g = g.strip()
        if g and g not in out:
            out.append(check_group(g))
    return tuple(out)


def _key(name: str) -> str:
    return name.casefold()


def _format(name: str, hash_: str, groups: tuple[str, ...]) -> str:
    return f"{name}:{hash_}" + (f":{','.join(groups)}" if groups else "")


class UserFile:
    """The users file at ``path``. Thread-safe; re-reads the file when it changes.

    ``hasher`` sets the argon2id parameters of new hashes (default: argon2-cffi's, which
    follow RFC 9106's second recommended option); tests pass a cheap one.
    """

    def __init__(self, path: str | os.PathLike[str], *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        if self.hasher.type is not argon2.Type.ID:
            raise ValueError("the users file stores argon2id hashes only")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._lines: list[str] = []
        self._users: dict[str, _User] = {}
        self.problems: list[str] = []   # malformed lines of the last load: "path:line: what"
        self._dummy: dict[tuple, str] = {}

    def __repr__(self) -> str:
        return f"UserFile({str(self.path)!r})"

    # -- reading ------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        return file_stamp(self.path)

    def _refresh(self) -> None:
        """Re-reads the file if it changed since the last read (caller holds the lock)."""
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp:
            return
        if stamp is None:
            self._stamp, self._lines, self._users, self.problems = None, [], {}, []
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserFileError(f"{self.path}: cannot read: {exc}") from None
        lines = text.splitlines()
        users: dict[str, _User] = {}
        problems: list[str] = []
        for i, raw in enumerate(lines):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            where = f"{self.path}:{i + 1}"
            if len(parts) not in (2, 3):
                problems.append(f"{where}: want name:hash[:groups]")
                continue
            name, hash_ = parts[0], parts[1]
            try:
                check_name(name)
                groups = _groups(parts[2].split(",")) if len(parts) == 3 else ()
            except UserFileError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not hash_.startswith("$argon2id$"):
                problems.append(f"{where}: {name}: the hash is not an argon2id hash")
                continue
            if _key(name) in users:
                problems.append(f"{where}: {name}: a second line for this user (the first one counts)")
                continue
            users[_key(name)] = _User(name, hash_, groups, i)
        for p in problems:
            log.warning("users file: %s", p)
        self._stamp, self._lines, self._users, self.problems = stamp, lines, users, problems

    def list(self) -> list[UserEntry]:
        """The users in file order, without their hashes."""
        with self._lock:
            self._refresh()
            return [UserEntry(u.name, u.groups) for u in sorted(self._users.values(), key=lambda u: u.line)]

    def get(self, name: str) -> UserEntry | None:
        with self._lock:
            self._refresh()
            u = self._users.get(_key(name))
            return UserEntry(u.name, u.groups) if u else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    # -- checking -----------------------------------------------------------------------

    def _dummy_hash(self, params: argon2.Parameters) -> str:
        key = (params.type, params.version, params.salt_len, params.hash_len,
               params.time_cost, params.memory_cost, params.parallelism)
        dummy = self._dummy.get(key)
        if dummy is None:
            dummy = PasswordHasher.from_parameters(params).hash(secrets.token_urlsafe(16))
            self._dummy[key] = dummy
        return dummy

    def _timing_hash(self) -> str:
        """A hash nobody's password matches, costing what a real user's check costs."""
        with self._lock:
            sample = next(iter(self._users.values()), None)
        params = None
        if sample is not None:
            with contextlib.suppress(InvalidHashError, ValueError):
                params = argon2.extract_parameters(sample.hash)
        if params is None:
            params = argon2.Parameters(
                type=argon2.Type.ID, version=argon2.low_level.ARGON2_VERSION,
                salt_len=self.hasher.salt_len, hash_len=self.hasher.hash_len,
                time_cost=self.hasher.time_cost, memory_cost=self.hasher.memory_cost,
                parallelism=self.hasher.parallelism)
        return self._dummy_hash(params)

    def verify(self, name: str, password: str) -> AuthResult:
        """Checks a password (blocking: argon2 costs tens of ms; see LocalBackend)."""
        with self._lock:
            self._refresh()
            user = self._users.get(_key(name)) if isinstance(name, str) else None
        if user is None:
            # Same work as for a real user, so the timing tells nothing (no user enumeration).
            self._check(self._timing_hash(), password)
            return AuthResult.failure("no such user", backend="file")
        if not password:
            self._check(user.hash, "\x00not-the-password")  # same cost, certain mismatch
            return AuthResult.failure("empty password", user=user.name, backend="file")
        if len(password) > MAX_PASSWORD:
            return AuthResult.failure("password too long", user=user.name, backend="file")
        ok, why = self._check(user.hash, password)
        if not ok:
            return AuthResult.failure(why, user=user.name, backend="file")
        return AuthResult.success(user.name, user.groups, backend="file")

    def _check(self, hash_: str, password: str) -> tuple[bool, str]:
        if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
            password = "\x00not-the-password"
        try:
            self.hasher.verify(hash_, password)
            return True, ""
        except VerifyMismatchError:
            return False, "wrong password"
        except (VerificationError, InvalidHashError):
            return False, "the stored hash is damaged"

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialises writers, across processes too (an flock on PATH.lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._stamp = None          # another process may have written: read afresh
                self._refresh()
                yield
        finally:
            os.close(fd)

    def _write(self, lines: builtins.list[str]) -> None:   # list: a method of this class
        write_private(self.path, "".join(line + "\n" for line in lines))
        self._stamp = None
        self._refresh()

    def _hash(self, password: str) -> str:
        if not isinstance(password, str) or not password:
            raise UserFileError("the password is empty")
        if len(password) > MAX_PASSWORD:
            raise UserFileError(f"the password is longer than {MAX_PASSWORD} characters")
        return self.hasher.hash(password)

    def add(self, name: str, password: str, *, groups: Iterable[str] = ()) -> UserEntry:
        check_name(name)
        groups_ = _groups(groups)
        hash_ = self._hash(password)
        with self._writing():
            if _key(name) in self._users:
                raise UserExists(f"user {self._users[_key(name)].name} already exists")
            lines = list(self._lines)
            if not lines:
                lines.append("# relaywarden users: name:argon2id-hash[:group1,group2]")
            lines.append(_format(name, hash_, groups_))
            self._write(lines)
        return UserEntry(name, groups_)

    def set_password(self, name: str, password: str) -> UserEntry:
        hash_ = self._hash(password)
        with self._writing():
            user = self._need(name)
            lines = list(self._lines)
            lines[user.line] = _format(user.name, hash_, user.groups)
            self._write(lines)
        return UserEntry(user.name, user.groups)

    def set_groups(self, name: str, groups: Iterable[str]) -> UserEntry:
        groups_ = _groups(groups)
        with self._writing():
            user = self._need(name)
            lines = list(self._lines)
            lines[user.line] = _format(user.name, user.hash, groups_)
            self._write(lines)
        return UserEntry(user.name, groups_)

    def remove(self, name: str) -> UserEntry:
        with self._writing():
            user = self._need(name)
            lines = list(self._lines)
            del lines[user.line]
            self._write(lines)
        return UserEntry(user.name, user.groups)

    def _need(self, name: str) -> _User:
        user = self._users.get(_key(name)) if isinstance(name, str) else None
        if user is None:
            raise UserNotFound(f"no such user: {name}")
        return user


class LocalBackend:
    """The users file as an async :class:`relaywarden.auth.Backend`.

    argon2 is CPU work by design, so each check runs in a worker thread; argon2-cffi
    releases the GIL while it hashes, so the event loop keeps serving.
    """

    name = "file"

    def __init__(self, users: UserFile) -> None:
        self.users = users

    def __repr__(self) -> str:
        return f"LocalBackend({self.users!r})"

    async def verify(self, name: str, password: str) -> AuthResult:
        try:
            return await asyncio.to_thread(self.users.verify, name, password)
        except UserFileError as exc:
            log.error("users file: %s", exc)
            return AuthResult.unavailable(str(exc), backend="file")
