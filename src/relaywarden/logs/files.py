"""Append-only log files with daily or size rotation, a size cap and a file count cap.

Writes go to a user-space buffer and reach the kernel at least once a second (``flush`` is
called by the app's timer) or when the buffer fills: a log line per SMTP command must not cost
a system call on the hot path. Logs are not the durable record (the queue is); a crash may lose
the last second of log lines, never a message.

Two processes write the same series (the receiving and the delivering process share the
mail log). Each flush therefore happens under a lock on the log directory (flock on the
directory itself: no lock file), and first looks at the file as it is on disk, not at this
process's own count: if the other process rotated it away, this one follows; if the two
together filled it, this one rotates. The buffer then goes out in one O_APPEND write, so
lines of the two processes never mix within a line, none is lost, and none lands in a file
after it was rotated. A file passes ``max_size`` by at most one line of this process and one buffer (one second
of lines) of the other.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
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
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending = bytearray()
        self._size = 0              # the file's size after our last write (others add to it)
        self._day = ""              # the UTC day (YYMMDD) of the lines in the buffer
        self._part = 0
        self._roll_at = 0.0         # the next UTC midnight (a cheap check per line)
        directory.mkdir(parents=True, exist_ok=True)

    # The header is written at the top of every new file (W3C needs its #Fields line).
    def write(self, line: str, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        if not self._roll_at - 86400 <= now < self._roll_at:
            # Another UTC day (POSIX time has 86,400 seconds a day): the lines of the day
            # before go to that day's file first.
            self.flush()
            self._day = time.strftime("%y%m%d", time.gmtime(now))
            self._roll_at = (int(now) // 86400 + 1) * 86400
        self._pending += line.encode("utf-8", "backslashreplace")
        if len(self._pending) >= _BUFFER or (
                self.max_size and self._size + len(self._pending) >= self.max_size):
            # The line that fills the file goes out now: the next flush starts a new one.
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        with self._locked():
            self._choose_file()
            os.write(self._fd, self._pending)
            self._size = os.fstat(self._fd).st_size
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def current_path(self) -> Path | None:
        return self._path if self._fd is not None else None

    # -- inside the lock ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)     # releases the lock

    def _choose_file(self) -> None:
        """Keep the open file, or open the one to write now: another day, the file full
        (whoever filled it), or the name renamed away by the other process."""
        if self._fd is not None:
            try:
                on_disk = os.stat(self._path)
            except FileNotFoundError:
                on_disk = None
            ours = os.fstat(self._fd)
            same = on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (ours.st_ino, ours.st_dev)
            full = bool(self.max_size) and ours.st_size >= self.max_size
            wanted = self._daily_path() if self.rotation is Rotation.DAILY else self._path
            if same and not full and wanted == self._path:
                return
            os.close(self._fd)
            self._fd = None
        self._open()

    def _open(self) -> None:
        if self.rotation is Rotation.DAILY:
            if not self._path or not self._path.name.startswith(f"{self.prefix}{self._day}"):
                self._part = 0
            path = self._daily_path()
            # Continue in the newest part that still has room (a restart on the same day,
            # or the other process moved on).
            while self.max_size and path.exists() and path.stat().st_size >= self.max_size:
                self._part += 1
                path = self._daily_path()
        else:
            path = self.directory / f"{self.prefix}{self.suffix}"
            if self.max_size and path.exists() and path.stat().st_size >= self.max_size:
                self._shift_size_series(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._path = path
        if self.header and os.fstat(self._fd).st_size == 0:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._clock()))
            os.write(self._fd, self.header.replace("{date}", stamp).encode())
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
