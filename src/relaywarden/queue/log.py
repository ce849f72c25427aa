"""The queue's append-only log: the durable record of a message handed on from memory.

With ``delivery.handoff = true`` (one process receives and delivers), a received message's
durable record is not a SQLite transaction but an entry appended to a log segment, made
durable by one ``fdatasync`` shared by every message of the batch (group commit, as
Postfix's and the design probe's spool: issue 15). The message itself goes to the delivery
engine from memory. What happens to it next is appended as a marker, not fsynced:

- ``D`` (done): every recipient was delivered or bounced; nothing of it is in the index;
- ``I`` (indexed): it is now in the SQLite index (it waits: deferred, held by its route,
  or a DSN came of it), committed with ``synchronous=FULL`` BEFORE the marker is written,
  so the index is its durable home from then on.

A segment whose every message has its marker is removed. After a crash, ``recover()``
reads what segments are left: a message without a marker (answered 250, never finished)
goes into the index as due now. A lost ``D`` marker (power loss: markers are not
fsynced) means a delivery is made twice, never a loss; the same window Postfix's queue
manager has when it removes a delivered file.

Entry format (little endian): kind (1 byte: ``M``, ``D`` or ``I``), payload length (4),
CRC-32 of kind + payload (4), payload. ``M``'s payload is the envelope as JSON (its length
first, 4 bytes) then the body; ``D``/``I`` carry the queue id. Segments are preallocated
(``posix_fallocate``), so an append changes no file size and ``fdatasync`` writes data
only; the unused tail is zeros, and a zero kind ends the segment. A torn last entry (a crash
in the middle of a write) fails its CRC: reading stops there; it was never answered 250.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaywarden.queue.fileops import FileOps

#: Bytes preallocated per segment; an entry that does not fit starts the next segment.
SEGMENT_BYTES = 8 << 20
_HEAD = struct.Struct("<cII")
_LEN = struct.Struct("<I")

MESSAGE, DONE, INDEXED = b"M", b"D", b"I"


def entry(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload), zlib.crc32(payload, zlib.crc32(kind))) + payload


def message_entry(envelope: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(envelope, separators=(",", ":")).encode()
    return entry(MESSAGE, _LEN.pack(len(head)) + head + body)


def marker(kind: bytes, queue_id: str) -> bytes:
    return entry(kind, queue_id.encode())


def split_message(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _LEN.unpack_from(payload)
    return json.loads(payload[4:4 + n]), payload[4 + n:]


def read_entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The whole entries of a segment's bytes, in order, up to the end of what was written
    (zeros) or to the first torn or damaged entry."""
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        kind, size, crc = _HEAD.unpack_from(data, pos)
        if kind not in (MESSAGE, DONE, INDEXED):
            return                      # b"\0": the preallocated, never written tail
        start = pos + _HEAD.size
        payload = data[start:start + size]
        if len(payload) != size or zlib.crc32(payload, zlib.crc32(kind)) != crc:
            return                      # torn by a crash mid-write: never acknowledged
        yield kind, payload
        pos = start + size


@dataclass(slots=True)
class Segment:
    number: int
    path: Path
    fd: int
    used: int = 0           # bytes appended
    open_messages: int = 0  # messages in it without their marker yet
    closed: bool = False    # no more appends: removed once open_messages is 0


def end_path(segment: Path) -> Path:
    """Where a segment closed after a failed append says where its good entries end."""
    return segment.with_suffix(".end")


def segment_paths(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("segment-*.log"), key=lambda p: int(p.stem.split("-")[1]))


class Log:
    """The segments of one process's log. Used by the queue's writer thread only."""

    def __init__(self, log_dir: Path, files: FileOps, first_number: int = 1) -> None:
        self.dir = log_dir
        self.files = files
        self._next_number = first_number
        self.current: Segment | None = None
        self.segments: dict[int, Segment] = {}

    def _open_segment(self) -> Segment:
        number = self._next_number
        path = self.dir / f"segment-{number:08d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, SEGMENT_BYTES)   # ENOSPC here: the disk is full
            self.files.fsync(fd)                       # the allocation, before any entry
            self.files.fsync_dir(self.dir)             # and the name
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._next_number += 1
        segment = Segment(number, path, fd)
        self.segments[number] = segment
        return segment

    def append(self, data: bytes, messages: int, *, sync: bool) -> Segment:
        """Write ``data`` (whole entries, ``messages`` of them new messages) at the end of
        the current segment, fdatasync'ed when ``sync``; returns the segment they are in.
        On a failure the segment is closed (nothing is appended after a write or sync that
        failed: its content can no longer be trusted) and the error raised."""
        segment = self.current
        if segment is None or segment.used + len(data) > SEGMENT_BYTES:
            if segment is not None:
                self._close(segment)
            segment = self.current = self._open_segment()
        try:
            os.lseek(segment.fd, segment.used, os.SEEK_SET)
            self.files.write(segment.fd, data)
            if sync:
                self.files.datasync(segment.fd)
        except BaseException:
            # What this batch wrote (whole entries, perhaps, whose messages are now refused
            # with 451) must never be read back: the segment ends where the last good
            # append ended, and a crash-time recover() reads no further.
            self._seal(segment)
            self._close(segment)
            raise
        segment.used += len(data)
        segment.open_messages += messages
        return segment

    def finished(self, segment: Segment) -> None:
        """One of the segment's messages got its marker."""
        segment.open_messages -= 1
        if segment.closed and segment.open_messages == 0:
            self._remove(segment)

    def _close(self, segment: Segment) -> None:
        segment.closed = True
        if self.current is segment:
            self.current = None
        if segment.open_messages == 0:
            self._remove(segment)

    def _seal(self, segment: Segment) -> None:
        try:
            end = end_path(segment.path)
            end.write_text(str(segment.used))
        except OSError:
            pass   # a dying disk: at worst a refused message is delivered after a restart

    def _remove(self, segment: Segment) -> None:
        # Not fsynced: a removal that a power loss takes back leaves a segment whose
        # messages all have markers, which recover() skips.
        self.segments.pop(segment.number, None)
        try:
            os.close(segment.fd)
        except OSError:
            pass
        segment.path.unlink(missing_ok=True)
        end_path(segment.path).unlink(missing_ok=True)

    def close(self) -> None:
        """At shutdown: a segment with nothing open goes; the others stay for recover()."""
        for segment in list(self.segments.values()):
            self._close(segment)                 # removed (and its fd closed) if finished
            if segment.number in self.segments:
                try:
                    os.close(segment.fd)
                except OSError:
                    pass
        self.segments.clear()
        self.current = None


def scan(log_dir: Path) -> tuple[dict[str, bytes], set[str], list[Path], int]:
    """What a crash left: the messages without a marker (queue id -> M payload), the queue
    ids with one, the segment files, and the next free segment number."""
    messages: dict[str, bytes] = {}
    marked: set[str] = set()
    paths = segment_paths(log_dir)
    for path in paths:
        data = path.read_bytes()
        try:
            data = data[:int(end_path(path).read_text())]
        except (OSError, ValueError):
            pass                        # not sealed: its entries are whole up to the zeros
        for kind, payload in read_entries(data):
            if kind == MESSAGE:
                envelope, _ = split_message(payload)
                messages[envelope["queue_id"]] = payload
            else:
                marked.add(payload.decode())
    for queue_id in marked:
        messages.pop(queue_id, None)
    last = int(paths[-1].stem.split("-")[1]) if paths else 0
    return messages, marked, paths + [end_path(p) for p in paths if end_path(p).exists()], last + 1
