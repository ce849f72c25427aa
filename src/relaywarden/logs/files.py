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

A write that fails (the disk is full: ENOSPC, a quota, an I/O error) never raises into the
caller: a log line must not cost a session or a delivery. The lines not written stay in the
buffer, up to ``KEEP_WHILE_FAILING`` bytes; the ones beyond are dropped and counted. The
flush timer tries again once a second (a failing log costs no system call per line); the
first write that succeeds writes what was kept and then one line saying how many were lost
(``lost_notice``, in the log's own format), and both the failure and the recovery are said
once on stderr. A write the disk cut short is cut back to its last whole line (under the
lock, so the other process never appends after half a line).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

_BUFFER = 64 * 1024
#: While the file cannot be written, this much of the newest-but-unwritten lines is kept
#: (the oldest of them, in order); lines past it are dropped and counted.
KEEP_WHILE_FAILING = 256 * 1024


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
        # Writing fails (disk full): the error, lines dropped since the last good write.
        self._failing: OSError | None = None
        self.lost = 0
        self.lost_total = 0         # lines dropped since this object was made
        #: ``lost_notice(count, file_name, now)``: the line (with its newline) that says
        #: ``count`` lines could not be written, in this log's format; "" for none.
        self.lost_notice: Callable[[int, str, float], str] = lambda count, name, now: ""
        #: Called with the number of lines each time lines are dropped (the metrics).
        self.on_lost: Callable[[int], None] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    # The header is written at the top of every new file (W3C needs its #Fields line).
    def write(self, line: str, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        if not self._roll_at - 86400 <= now < self._roll_at:
            # Another UTC day (POSIX time has 86,400 seconds a day): the lines of the day
            # before go to that day's file first.
            self.flush()
            if self._pending:
                # ... or nowhere: they must not land in the new day's file.
                self._drop(self._pending.count(b"\n"))
                self._pending.clear()
            self._day = time.strftime("%y%m%d", time.gmtime(now))
            self._roll_at = (int(now) // 86400 + 1) * 86400
        data = line.encode("utf-8", "backslashreplace")
        if self._failing is not None:
            # The flush timer tries again; until then, keep what fits and count the rest
            # (from the first line dropped on, all: the notice marks one gap).
            if self.lost or len(self._pending) + len(data) > KEEP_WHILE_FAILING:
                self._drop(1)
            else:
                self._pending += data
            return
        self._pending += data
        if len(self._pending) >= _BUFFER or (
                self.max_size and self._size + len(self._pending) >= self.max_size):
            # The line that fills the file goes out now: the next flush starts a new one.
            self.flush()

    def write_lines(self, lines: list[str], moments: list[float]) -> None:
        """``write(lines[i], moments[i])`` for each line, in order (a batch formatted at
        once, see protocol.ProtocolLog). The common case costs one encode and one look at
        the day for the whole batch: every line of this UTC day, the file not failing, and
        not filled by the batch. Otherwise line by line, so that lines still go to the file
        of their own day and a file is still cut after the line that fills it."""
        if not lines:
            return
        if (self._failing is None
                and self._roll_at - 86400 <= min(moments) and max(moments) < self._roll_at):
            data = "".join(lines).encode("utf-8", "backslashreplace")
            if not self.max_size or (
                    self._size + len(self._pending) + len(data) < self.max_size):
                self._pending += data
                if len(self._pending) >= _BUFFER:
                    self.flush()
                return
        for line, now in zip(lines, moments):
            self.write(line, now)

    @property
    def failing(self) -> bool:
        """The last write failed (the disk is full): lines are kept or counted as lost."""
        return self._failing is not None

    def flush(self) -> None:
        """Write the buffer. Never raises OSError: see the module's docstring."""
        if not self._pending and not self.lost:
            return
        now = self._clock()
        try:
            with self._locked():
                self._choose_file()
                self._write_pending()
                fd, path = self._open_file()
                if self.lost:
                    notice = self.lost_notice(self.lost, path.name, now)
                    if notice:
                        self._pending += notice.encode("utf-8", "backslashreplace")
                        self._write_pending()
                self._size = os.fstat(fd).st_size
        except OSError as exc:
            self._failed(exc)
            return
        if self._failing is not None or self.lost:
            self._say(f"{self._name()}: writing again; {self.lost} log line(s) were lost "
                      "(could not be written)")
            self._failing = None
            self.lost = 0

    def _write_pending(self) -> None:
        """One appending write of the buffer (inside the lock). On a failure, the whole
        lines that reached the file leave the buffer, a line the disk cut short is cut off
        the file again, and the error goes up."""
        fd = self._open_file()[0]
        start = os.fstat(fd).st_size     # the lock is ours: nobody else appends
        written = 0
        try:
            written = os.write(fd, self._pending)
            if written < len(self._pending):
                # A short write: the disk took only a part (the next one fails ENOSPC).
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
        except OSError:
            whole = self._pending.rfind(b"\n", 0, written) + 1
            del self._pending[:whole]
            if whole < written:
                os.ftruncate(fd, start + whole)   # shrinking needs no space
            raise
        self._pending.clear()

    def _open_file(self) -> tuple[int, Path]:
        """The file descriptor and path of the open file (set by _choose_file)."""
        assert self._fd is not None and self._path is not None
        return self._fd, self._path

    def _failed(self, exc: OSError) -> None:
        first = self._failing is None
        self._failing = exc
        if len(self._pending) > KEEP_WHILE_FAILING:
            cut = self._pending.rfind(b"\n", 0, KEEP_WHILE_FAILING) + 1
            self._drop(self._pending.count(b"\n", cut))
            del self._pending[cut:]
        if first:
            self._say(f"{self._name()}: cannot write: {exc.strerror or exc}; up to "
                      f"{KEEP_WHILE_FAILING // 1024} KB of lines are kept and the rest counted "
                      "until it can")

    def _drop(self, lines: int) -> None:
        if lines <= 0:
            return
        self.lost += lines
        self.lost_total += lines
        if self.on_lost is not None:
            try:
                self.on_lost(lines)
            except Exception:  # noqa: BLE001 - counting must not fail the caller either
                pass

    def _name(self) -> str:
        if self._path is not None:
            return self._path.name
        return f"{self.prefix}{self._day}{self.suffix}"

    @staticmethod
    def _say(message: str) -> None:
        try:
            print(f"relaywarden: log {message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass    # stderr on the same full disk, or closed

    def close(self) -> None:
        self.flush()
        if self._failing is not None:
            lines = self._pending.count(b"\n")
            self._drop(lines)
            self._pending.clear()
            self._say(f"{self._name()}: closed with {self.lost} log line(s) lost "
                      "(could not be written)")
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
            assert self._path is not None    # set with _fd
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
            header = self.header.replace("{date}", stamp).encode()
            try:
                if os.write(self._fd, header) < len(header):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
            except OSError:
                # No file without its header: the next flush opens it again and retries.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
                os.close(self._fd)
                self._fd = None
                raise
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
