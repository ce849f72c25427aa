"""Append-only log files with daily or size rotation, a size cap and a file count cap.

Writes go to a user-space buffer and reach the kernel at least once a second (``flush`` is
called by the app's timer) or when the buffer fills: a log line per SMTP command must not cost
a system call on the hot path. Logs are not the durable record (the queue is); a crash may lose
the last second of log lines, never a message.
"""

from __future__ import annotations

import enum
import time
from pathlib import Path

_BUFFER = 64 * 1024


class Rotation(enum.Enum):
    DAILY = "daily"
    SIZE = "size"


class RotatingFile:
    """One logical log (e.g. the W3C protocol log) as a series of files in ``directory``.

    Daily: ``{prefix}{YYMMDD}{suffix}`` (IIS named its logs exYYMMDD.log), with
    ``{prefix}{YYMMDD}_{n}{suffix}`` when a day passes ``max_size``. Size: ``{prefix}{suffix}``
    renamed to ``{prefix}{suffix}.1`` ... when it passes ``max_size``. Only the newest ``keep``
    files of the series are kept, so logs cannot fill the disk.
    """

    def __init__(self, directory: Path, *, prefix: str, suffix: str, rotation: Rotation,
                 max_size: int, keep: int, header: str = "",
                 clock=time.time) -> None:
        self.directory = directory
        self.prefix = prefix
        self.suffix = suffix
        self.rotation = rotation
        self.max_size = max_size
        self.keep = keep
        self.header = header
        self._clock = clock
        self._fh = None
        self._day = ""
        self._part = 0
        self._written = 0
        self._roll_at = 0.0     # daily: the next UTC midnight (a cheap check per line)
        directory.mkdir(parents=True, exist_ok=True)

    # The header is written at the top of every new file (W3C needs its #Fields line).
    def write(self, line: str, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        if self._fh is None or self._needs_roll(now):
            self._roll(now)
        data = line.encode("utf-8", "backslashreplace")
        self._fh.write(data)
        self._written += len(data)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def current_path(self) -> Path | None:
        return None if self._fh is None else Path(self._fh.name)

    def _needs_roll(self, now: float) -> bool:
        if self.max_size and self._written >= self.max_size:
            return True
        # POSIX time has 86,400 seconds a day: another UTC day is outside [midnight, next).
        return self.rotation is Rotation.DAILY and not (
            self._roll_at - 86400 <= now < self._roll_at)

    def _roll(self, now: float) -> None:
        day = time.strftime("%y%m%d", time.gmtime(now))
        self._roll_at = (int(now) // 86400 + 1) * 86400
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.rotation is Rotation.DAILY:
            if day != self._day:
                self._day, self._part = day, 0
            elif self.max_size and self._written >= self.max_size:
                self._part += 1
            path = self._daily_path()
            # Restarting on the same day: continue in the newest part that still has room.
            while self.max_size and path.exists() and path.stat().st_size >= self.max_size:
                self._part += 1
                path = self._daily_path()
        else:
            self._day = day
            path = self.directory / f"{self.prefix}{self.suffix}"
            if self.max_size and path.exists() and path.stat().st_size >= self.max_size:
                self._shift_size_series(path)
        self._fh = open(path, "ab", buffering=_BUFFER)
        self._written = self._fh.tell()
        if self._written == 0 and self.header:
            header = self.header.replace("{date}", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))
            data = header.encode()
            self._fh.write(data)
            self._written += len(data)
        self._prune()

    def _daily_path(self) -> Path:
        part = f"_{self._part}" if self._part else ""
        return self.directory / f"{self.prefix}{self._day}{part}{self.suffix}"

    def _shift_size_series(self, path: Path) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))

    def _series(self) -> list[Path]:
        files = [
            p for p in self.directory.glob(f"{self.prefix}*")
            if p.is_file() and (self.suffix in p.name)
        ]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def _prune(self) -> None:
        files = self._series()
        current = self.current_path
        excess = len(files) - self.keep
        for path in files:
            if excess <= 0:
                break
            if path == current:
                continue
            path.unlink(missing_ok=True)
            excess -= 1
