"""Where a message's content goes while DATA arrives: memory first, a file past a limit.

The file is the queued copy's first draft: when the message is committed, ``persist()``
makes it durable under its final name (``bodies/<queue id>``), so a large body is written
once (see queue/store.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Bodies up to this size stay in memory while DATA streams in; larger ones spill to a
#: temporary file in the data directory, so a 100 MB message never sits whole in RAM, and
#: that file becomes the queued body (bodies/<queue id>, not a blob in SQLite).
SPOOL_MEMORY_LIMIT = 1 << 20
_COPY_CHUNK = 1 << 20


class BodySpool:
    """Where DATA content goes while it arrives: memory first, a temp file past a limit."""

    __slots__ = ("_buf", "_file", "_path", "_tmp_dir", "size", "stored_as")

    def __init__(self, tmp_dir: Path) -> None:
        self._buf: bytearray | None = bytearray()
        self._file = None
        self._path: str | None = None      # the temp file, until persist() names it
        self._tmp_dir = tmp_dir
        self.size = 0
        self.stored_as: Path | None = None  # where persist() put it

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._buf is not None:
            self._buf += data
            if len(self._buf) > SPOOL_MEMORY_LIMIT:
                fd, self._path = tempfile.mkstemp(dir=self._tmp_dir, prefix="spool-")
                self._file = os.fdopen(fd, "w+b")
                self._file.write(self._buf)
                self._buf = None
        else:
            self._file.write(data)

    def chunks(self) -> Iterator[bytes]:
        if self._buf is not None:
            yield bytes(self._buf)
            return
        self._file.seek(0)
        while chunk := self._file.read(_COPY_CHUNK):
            yield chunk

    def head(self, limit: int = 16384) -> bytes:
        """The first ``limit`` bytes (the header section, for the history's Subject and
        Message-ID), without moving the file position."""
        if self._buf is not None:
            return bytes(self._buf[:limit])
        self._file.flush()
        return os.pread(self._file.fileno(), limit, 0)

    @property
    def in_memory(self) -> bool:
        return self._buf is not None

    def persist(self, target: Path) -> None:
        """Make a spilled body durable as ``target``: fsync the file, give it its name, fsync
        the directory (so the name survives a power loss too). Idempotent."""
        if self.stored_as is not None:
            return
        assert self._file is not None and self._path is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        os.link(self._path, target)   # never over another message's body (FileExistsError)
        os.unlink(self._path)
        self._path = None
        self.stored_as = target
        _fsync_dir(target.parent)

    def discard(self) -> None:
        """Drop the content. A body persist() stored is the queue's now: it stays."""
        self._buf = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None
        self.size = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
