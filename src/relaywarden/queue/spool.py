"""Where a message's content goes while DATA arrives: memory first, a file past a limit.

The file is the queued copy's first draft: when the message is committed, ``persist()``
makes it durable under its final name (``bodies/<queue id>``), so a large body is written
once (see queue/store.py). Every write, fsync, link and unlink goes through the spool's
``FileOps`` (queue/fileops.py), so that a failing disk can be put under it in a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from relaywarden.queue.fileops import REAL, FileOps

#: Bodies up to this size stay in memory while DATA streams in; larger ones spill to a
#: temporary file in the data directory, so a 100 MB message never sits whole in RAM, and
#: that file becomes the queued body (bodies/<queue id>, not a blob in SQLite).
SPOOL_MEMORY_LIMIT = 1 << 20
_COPY_CHUNK = 1 << 20


class BodySpool:
    """Where DATA content goes while it arrives: memory first, a temp file past a limit.

    A write to the file that fails does not raise into the SMTP session in the middle of
    DATA: the rest of the content is still read (and dropped), and the failure is kept in
    ``error`` and raised by ``chunks()`` and ``persist()``, so the client gets its 451 4.3.0
    after the final dot and never a 250 for a body that is not whole on disk."""

    __slots__ = ("_buf", "_fd", "_path", "_tmp_dir", "_files", "size", "stored_as", "error")

    def __init__(self, tmp_dir: Path, files: FileOps = REAL) -> None:
        self._buf: bytearray | None = bytearray()
        self._fd: int | None = None
        self._path: str | None = None      # the temp file, until persist() names it
        self._tmp_dir = tmp_dir
        self._files = files
        self.size = 0
        self.stored_as: Path | None = None  # where persist() put it
        self.error: OSError | None = None   # the write that failed: the body is not whole

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.error is not None:
            return                          # already refused: the rest is only counted
        try:
            if self._buf is not None:
                self._buf += data
                if len(self._buf) > SPOOL_MEMORY_LIMIT:
                    self._fd, self._path = self._files.create_temp(self._tmp_dir, "spool-")
                    buf, self._buf = self._buf, None
                    self._files.write(self._fd, buf)
            else:
                self._files.write(self._spilled(), data)
        except OSError as exc:
            self.error = exc
            self._buf = None                # nothing of it is kept in memory either
            self._drop_file()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _spilled(self) -> int:
        """The spool file of a body that is no longer in memory. It is open whenever ``_buf``
        is None and no write failed: a failed write drops both, and discard() starts over in
        memory."""
        assert self._fd is not None, "a spilled body without its spool file"
        return self._fd

    def chunks(self) -> Iterator[bytes]:
        self._check()
        if self._buf is not None:
            yield bytes(self._buf)
            return
        offset = 0
        fd = self._spilled()
        while chunk := os.pread(fd, _COPY_CHUNK, offset):
            offset += len(chunk)
            yield chunk

    def head(self, limit: int = 16384) -> bytes:
        """The first ``limit`` bytes (the header section, for the history's Subject and
        Message-ID)."""
        self._check()
        if self._buf is not None:
            return bytes(self._buf[:limit])
        return os.pread(self._spilled(), limit, 0)

    @property
    def in_memory(self) -> bool:
        return self._buf is not None

    def persist(self, target: Path) -> None:
        """Make a spilled body durable as ``target``: fsync the file, give it its name, fsync
        the directory (so the name survives a power loss too). Idempotent. On a failure
        nothing is left under ``target`` and the error is raised (the client gets 451)."""
        if self.stored_as is not None:
            return
        self._check()
        assert self._fd is not None and self._path is not None
        files = self._files
        files.fsync(self._fd)
        files.link(self._path, target)   # never over another message's body (FileExistsError)
        try:
            files.unlink(self._path)
            self._path = None
            files.fsync_dir(target.parent)
        except OSError:
            # The name may not be durable: no 250 for it, and no body without a row.
            try:
                files.unlink(target)
            except OSError:
                pass                     # recover_files() removes it at the next start
            raise
        self.stored_as = target

    def discard(self) -> None:
        """Drop the content. A body persist() stored is the queue's now: it stays."""
        self._buf = bytearray()
        self._drop_file()
        self.size = 0
        self.error = None

    def _drop_file(self) -> None:
        if self._fd is not None:
            try:
                self._files.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._path is not None:
            try:
                self._files.unlink(self._path)
            except OSError:
                pass
            self._path = None
