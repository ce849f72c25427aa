"""Brute-force throttle for AUTH: pure bookkeeping with an injected clock.

Failures are counted twice: per client address (one host guessing many passwords or
many names) and per user name (many hosts guessing one account). The session asks::

    verdict = throttle.check(client=ip, user=name)     # before verifying
    if verdict.locked: answer 454 4.7.0 (or 421 and close) -- do not even check the password
    result = await backend.verify(name, password)
    if result.ok: throttle.success(client=ip, user=name)
    elif not result.temporary:
        verdict = throttle.failure(client=ip, user=name)
        await asyncio.sleep(verdict.delay)             # then 535 5.7.8 (or 454 if now locked)

- the delay grows with the failures of the worse of the two counters
  (``delays``: 0, 1, 2, 4, 8 s by default, the last one repeating);
- reaching ``client_limit`` (or ``user_limit``) failures within ``window`` seconds locks
  that client (or that user name) for ``lockout`` seconds;
- a success resets the user's counter (not the client's: a host that knows one password
  must not wipe its record of guessing others);
- memory is bounded: at most ``max_entries`` keys of each kind, least recently touched
  dropped first, and entries with nothing recent in them expire.

A temporary backend failure (directory down) is not the client's fault and is not counted.
User names are compared case-insensitively, like the users file does.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AuthThrottle", "ThrottleSettings", "Verdict"]


@dataclass(frozen=True, kw_only=True)
class ThrottleSettings:
    delays: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)   # after failure 1, 2, 3, ...
    client_limit: int = 10          # failures within `window` that lock a client address
    user_limit: int = 20            # ... that lock a user name (higher: others can trigger it)
    window: float = 900.0           # seconds a failure counts
    lockout: float = 900.0          # seconds a lock lasts
    max_entries: int = 10_000       # per kind (clients, users)

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError("delays: at least one, none negative")
        if self.client_limit < 1 or self.user_limit < 1:
            raise ValueError("client_limit and user_limit must be at least 1")
        if self.window <= 0 or self.lockout < 0 or self.max_entries < 1:
            raise ValueError("window must be positive, lockout not negative, max_entries >= 1")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do now: wait `delay` seconds before answering; `locked` means refuse."""

    delay: float = 0.0
    locked: bool = False
    retry_after: float = 0.0        # seconds until the lock ends (when locked)
    reason: str = ""                # "client 192.0.2.1 locked", for the log


@dataclass(slots=True)
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class _Table:
    def __init__(self, *, limit: int, window: float, lockout: float, max_entries: int) -> None:
        self.limit, self.window, self.lockout, self.max_entries = limit, window, lockout, max_entries
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def _prune(self, entry: _Entry, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()

    def expire(self, now: float) -> None:
        # Least recently touched first: stop at the first entry still alive.
        while self.entries:
            key, entry = next(iter(self.entries.items()))
            self._prune(entry, now)
            if entry.failures or entry.locked_until > now:
                break
            del self.entries[key]

    def get(self, key: str, now: float) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self._prune(entry, now)
        return entry

    def fail(self, key: str, now: float) -> _Entry:
        entry = self.entries.pop(key, None) or _Entry()
        self._prune(entry, now)
        entry.failures.append(now)
        # Only the last `limit` failures matter: this keeps each entry small too.
        while len(entry.failures) > self.limit:
            entry.failures.popleft()
        if len(entry.failures) >= self.limit:
            entry.locked_until = max(entry.locked_until, now + self.lockout)
        self.entries[key] = entry           # most recently touched goes last
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return entry

    def reset(self, key: str) -> None:
        self.entries.pop(key, None)


class AuthThrottle:
    """Counts AUTH failures per client and per user name. Not thread-safe: one event loop."""

    def __init__(self, settings: ThrottleSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = s = settings or ThrottleSettings()
        self.clock = clock
        self.clients = _Table(limit=s.client_limit, window=s.window, lockout=s.lockout,
                              max_entries=s.max_entries)
        self.users = _Table(limit=s.user_limit, window=s.window, lockout=s.lockout,
                            max_entries=s.max_entries)

    def __len__(self) -> int:
        return len(self.clients.entries) + len(self.users.entries)

    @staticmethod
    def _user_key(user: str | None) -> str | None:
        return user.casefold() if user else None

    def _verdict(self, client: str, user: str | None, now: float, delay: float) -> Verdict:
        c = self.clients.get(client, now)
        u = self.users.get(user, now) if user else None
        for kind, key, entry in (("client", client, c), ("user", user, u)):
            if entry is not None and entry.locked_until > now:
                return Verdict(delay=delay, locked=True, retry_after=entry.locked_until - now,
                               reason=f"{kind} {key} locked after too many failures")
        return Verdict(delay=delay)

    def check(self, *, client: str, user: str | None = None) -> Verdict:
        """Before checking a password: is this client or this user name locked?"""
        now = self.clock()
        self.clients.expire(now)
        self.users.expire(now)
        return self._verdict(client, self._user_key(user), now, 0.0)

    def failure(self, *, client: str, user: str | None = None) -> Verdict:
        """Records a failed attempt; returns how long to wait before answering it."""
        now = self.clock()
        key = self._user_key(user)
        count = len(self.clients.fail(client, now).failures)
        if key:
            count = max(count, len(self.users.fail(key, now).failures))
        delays = self.settings.delays
        delay = delays[min(count, len(delays)) - 1]
        return self._verdict(client, key, now, delay)

    def success(self, *, client: str, user: str | None = None) -> None:
        """A good password: forget the failures against this user name."""
        key = self._user_key(user)
        if key:
            self.users.reset(key)
