"""Counting for the abuse limits: pure bookkeeping, the clock is injected.

Nothing here does I/O or reads the time by itself: the session driver asks, these classes
count. What a full counter answers (the reply, the rule, the detail of the log line) is
policy/gates.py's; the numbers come from ``[listeners.NAME.limits]`` and ``[relay]``.

- ``WindowLimiter``: "at most N per window seconds" per key (client IP, user). A sliding
  window counter (the previous fixed window's count weighted by how much of it still
  overlaps the sliding window, plus the current one): three numbers per key whatever the
  rate, no burst of 2N across a window boundary as a plain fixed window allows.
- ``ConnectionCounter``: open connections per listener and per client address.
- ``FreeSpaceGuard``: the disk guard; the free-space reading is a function given by the
  caller (``os.statvfs`` in the relay, a table in the tests) and cached for ``ttl`` seconds
  so that a MAIL flood is not a syscall each.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from relaywarden.policy.gates import check_connections, check_disk
from relaywarden.policy.model import Decision

Clock = Callable[[], float]


@dataclass(slots=True)
class _Window:
    start: float          # start of the current fixed window
    current: int          # taken in [start, start + window)
    previous: int         # taken in [start - window, start)


class WindowLimiter:
    """At most ``limit`` units per ``window`` seconds per key; ``limit = 0``: unlimited."""

    def __init__(self, *, limit: int, window: float, clock: Clock) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if window <= 0:
            raise ValueError("window must be > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._keys: dict[Hashable, _Window] = {}
        self._last_prune = clock()

    def configure(self, *, limit: int, window: float) -> None:
        """New numbers (config reload); the counts taken so far are kept."""
        if window != self.window:
            self._keys.clear()       # the old windows' boundaries mean nothing any more
        self.limit = limit
        self.window = window

    def _slot(self, key: Hashable, now: float) -> _Window | None:
        slot = self._keys.get(key)
        if slot is None:
            return None
        elapsed = now - slot.start
        if elapsed >= 2 * self.window:
            del self._keys[key]
            return None
        if elapsed >= self.window:
            # One whole window later: the current window becomes the previous one.
            slot.start += self.window
            slot.previous, slot.current = slot.current, 0
        return slot

    def used(self, key: Hashable) -> float:
        """The estimated count in the sliding window ending now."""
        now = self._clock()
        slot = self._slot(key, now)
        if slot is None:
            return 0.0
        overlap = 1.0 - (now - slot.start) / self.window
        return slot.previous * overlap + slot.current

    def allows(self, key: Hashable, n: int = 1) -> bool:
        """Would ``n`` more units stay within the limit? Nothing is counted."""
        if self.limit == 0:
            return True
        # A small epsilon: float weighting must not refuse the last unit of an exact budget.
        return self.used(key) + n <= self.limit + 1e-9

    def take(self, key: Hashable, n: int = 1) -> None:
        """Count ``n`` units for ``key`` (call after ``allows`` said yes)."""
        if self.limit == 0:
            return
        now = self._clock()
        slot = self._slot(key, now)
        if slot is None:
            slot = self._keys[key] = _Window(start=now, current=0, previous=0)
        slot.current += n
        self._prune(now)

    def take_all(self, keys: Sequence[Hashable], n: int = 1) -> bool:
        """Count ``n`` for every key if every key allows it; False (nothing counted) otherwise."""
        if self.limit == 0:
            return True                   # no limit: nothing to count (as allows/take)
        if not all(self.allows(key, n) for key in keys):
            return False
        for key in keys:
            self.take(key, n)
        return True

    def _prune(self, now: float) -> None:
        # Forget keys idle for two windows, at most once per window: memory stays bounded
        # by the clients of the last two windows.
        if now - self._last_prune < self.window:
            return
        self._last_prune = now
        stale = [key for key, slot in self._keys.items() if now - slot.start >= 2 * self.window]
        for key in stale:
            del self._keys[key]

    def __len__(self) -> int:
        return len(self._keys)


class ConnectionCounter:
    """Open connections on one listener, in all and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def of(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def check(self, ip: str, *, max_total: int, max_per_ip: int) -> str | None:
        """None when one more connection from ``ip`` is allowed, else the reason (0 = no limit).
        The decision is policy/gates.check_connections's, which the session asks itself."""
        refused = check_connections("", ip, total=self.total, from_ip=self.of(ip),
                                    max_total=max_total, max_per_ip=max_per_ip)
        return None if refused is None else refused.detail

    def opened(self, ip: str) -> None:
        self.total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def closed(self, ip: str) -> None:
        self.total -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


class FreeSpaceGuard:
    """Is there at least ``min_free`` bytes of free space? (0: never checked.)

    ``free_bytes`` is called at most once per ``ttl`` seconds. When it fails (OSError), the
    answer is "yes": the guard protects the disk, it must not stop the relay by itself.
    """

    def __init__(self, *, min_free: int, free_bytes: Callable[[], int], clock: Clock,
                 ttl: float = 1.0) -> None:
        self.min_free = min_free
        self._free_bytes = free_bytes
        self._clock = clock
        self._ttl = ttl
        self._checked_at: float | None = None
        self._free: int | None = None

    def free(self) -> int | None:
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._ttl:
            try:
                self._free = self._free_bytes()
            except OSError:
                self._free = None
            self._checked_at = now
        return self._free

    def ok(self) -> bool:
        return self.check() is None

    def check(self) -> Decision | None:
        """The disk gate (policy/gates.check_disk) on this guard's reading: None when there
        is space enough, or when the guard is off (then the disk is not even read)."""
        if self.min_free <= 0:
            return None
        return check_disk(self.free(), self.min_free)
