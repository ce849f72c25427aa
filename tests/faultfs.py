"""A disk that fails on demand: the queue's FileOps (relaywarden.queue.fileops) with faults.

Handed to ``Store.open(..., files=...)`` or ``Relay(cfg, files=...)``: the store and its body
spools then write, fsync, link and commit through it. Each fault is an attribute a test sets
and clears; nothing global is patched. It also counts the operations it saw, and can hold
the store's writer thread at its next COMMIT (``hold()``), so that a test can make messages
pile up into one group-commit batch for certain instead of hoping they do.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading

from relaywarden.queue.fileops import FileOps


def eio(what: str) -> OSError:
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected: {what})")


class FaultyFiles(FileOps):
    def __init__(self) -> None:
        self.fail_write: OSError | None = None     # every spool write raises this
        self.fail_fsync: OSError | None = None     # every file fsync raises this
        self.fail_fsync_dir: OSError | None = None
        self.fail_datasync: OSError | None = None  # every log segment fdatasync raises this
        self.fail_allocate: OSError | None = None  # every new log segment's fallocate raises this
        self.fail_link: OSError | None = None
        # Every COMMIT raises this instead of committing (what SQLite raises when its WAL
        # write or fsync fails: sqlite3.OperationalError "disk I/O error").
        self.fail_commit: Exception | None = None
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self._gate: threading.Event | None = None
        self._hold_from = 0
        self.held = threading.Event()              # the writer waits at the gate now
        self.messages_at_commit: list[int] = []   # messages in the queue as each COMMIT sees it

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    # -- holding the writer ------------------------------------------------------------------

    def hold(self, messages_at_least: int = 0) -> None:
        """The next COMMIT (the next one that sees at least this many messages in the queue,
        its own transaction's included) waits inside its transaction until release()."""
        self.held.clear()
        self._hold_from = messages_at_least
        self._gate = threading.Event()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    # -- the operations ------------------------------------------------------------------------

    def write(self, fd, data) -> None:
        self._count("write")
        if self.fail_write is not None:
            raise self.fail_write
        super().write(fd, data)

    def fsync(self, fd) -> None:
        self._count("fsync")
        if self.fail_fsync is not None:
            raise self.fail_fsync
        super().fsync(fd)

    def allocate(self, fd, size) -> None:
        self._count("allocate")
        if self.fail_allocate is not None:
            raise self.fail_allocate
        super().allocate(fd, size)

    def datasync(self, fd) -> None:
        self._count("datasync")
        if self.fail_datasync is not None:
            raise self.fail_datasync
        super().datasync(fd)

    def fsync_dir(self, path) -> None:
        self._count("fsync_dir")
        if self.fail_fsync_dir is not None:
            raise self.fail_fsync_dir
        super().fsync_dir(path)

    def link(self, source, target) -> None:
        self._count("link")
        if self.fail_link is not None:
            raise self.fail_link
        super().link(source, target)

    def commit(self, db: sqlite3.Connection) -> None:
        self._count("commit")
        # Its own transaction's rows included: the difference to the previous commit's count
        # is how many messages this batch adds.
        (count,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        self.messages_at_commit.append(count)
        gate = self._gate
        if gate is not None and count >= self._hold_from:
            self.held.set()
            gate.wait(30)
        if self.fail_commit is not None:
            raise self.fail_commit
        super().commit(db)
