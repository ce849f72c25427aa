"""The file operations that make a message durable, in one replaceable object.

Nothing may be answered 250 unless every write, fsync, link and COMMIT behind it worked;
any of them can fail (EIO from a dying disk, ENOSPC, a failed fsync after which the kernel
may already have dropped the dirty pages). The queue does those operations through a
``FileOps`` object that it is given when it is built (``Store.open(data_dir, files=...)``,
``BodySpool(tmp_dir, files)``), like chasquid's safeio: the real one below calls ``os.*``;
a test hands in one whose operations fail on demand and watches a real SMTP session get its
451 4.3.0 with nothing half-stored left behind. No global is patched and no configuration
key selects it: the production code path is the only one there is.

What goes through it:
- the body spool of a large message (queue/spool.py): creating the spill file, every write
  to it, its fsync, the hard link that names it ``bodies/<queue id>``, the unlinks, and the
  fsync of the ``bodies`` directory;
- the writes and fdatasyncs of the queue's log segments (queue/log.py), and the fsyncs
  of a new segment and of its directory;
- the store's COMMIT (``commit``). SQLite writes and fsyncs its own files (the WAL) inside
  the C library, where Python cannot reach; a failure there surfaces as an error from
  COMMIT (SQLITE_IOERR_FSYNC, SQLITE_FULL, ...). ``commit`` is that boundary: the real one
  runs COMMIT, a failing one raises the error SQLite would raise there, before COMMIT runs,
  and the store rolls the transaction back as it does for a real one. What a test cannot
  reproduce this way: after a real failed WAL fsync the frames may still reach the disk and
  come back after a crash, so a message answered 451 can still be delivered later (a
  duplicate of the client's retry, never a loss).

Reads (pread of the spool for screening and for the SQLite row) are not routed through it:
a read that fails raises and the message is refused all the same.

After a failed fsync nothing is retried: the data it was to make durable cannot be trusted
(the kernel may have marked the pages clean), so the message is refused and its file removed.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path


class FileOps:
    """The real file operations (``os.*`` and SQLite's COMMIT). One shared instance,
    ``REAL``, is the default everywhere; a test passes a subclass whose methods fail."""

    def create_temp(self, directory: Path, prefix: str) -> tuple[int, str]:
        """A new file only this process knows (O_EXCL): its descriptor and path."""
        return tempfile.mkstemp(dir=directory, prefix=prefix)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """All of ``data``, at the file's position (a short write is continued)."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def allocate(self, fd: int, size: int) -> None:
        """Reserve ``size`` bytes for a file (a log segment): ENOSPC here when the disk is
        full, not at a later write."""
        os.posix_fallocate(fd, 0, size)

    def datasync(self, fd: int) -> None:
        """The data of a file whose size does not change (a preallocated log segment)."""
        os.fdatasync(fd)

    def link(self, source: str | Path, target: Path) -> None:
        """A second name; never over an existing file (FileExistsError)."""
        os.link(source, target)

    def unlink(self, path: str | Path) -> None:
        os.unlink(path)

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, path: Path) -> None:
        """Make the names in a directory durable (a new link, a removal)."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, db: sqlite3.Connection) -> None:
        """End the store's open transaction; raises what SQLite raises when it cannot
        (the store then rolls back and every message of the batch gets its 451)."""
        db.execute("COMMIT")


#: The file operations the relay runs with.
REAL = FileOps()
