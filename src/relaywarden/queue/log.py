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

import os
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaywarden.queue import compact
from relaywarden.queue.fileops import FileOps

#: Bytes preallocated per segment; an entry that does not fit starts the next segment.
SEGMENT_BYTES = 8 << 20
_HEAD = struct.Struct("<cII")
_LEN = struct.Struct("<I")

MESSAGE, DONE, INDEXED = b"M", b"D", b"I"

#: The log's directory in the data directory. Not ``log/``: that is the text logs' (the
#: mail log, the protocol logs), which people read, rotate and ship; segments are the queue.
DIR_NAME = "handoff"


def directory(data_dir: Path) -> Path:
    return data_dir / DIR_NAME


def adopt_legacy(data_dir: Path) -> int:
    """Segments a relay of 2026-12-05/06 wrote into ``data_dir/log`` (beside the text logs)
    move into the log's own directory, before recovery reads it. Returns how many files."""
    old, new = data_dir / "log", directory(data_dir)
    moved = 0
    if not old.is_dir():
        return 0
    names = [p.name for p in old.glob("segment-*") if p.suffix in (".log", ".end", ".marks")]
    names += [n for n in ("synced", "followed") if (old / n).is_file()]
    for name in sorted(names):
        new.mkdir(exist_ok=True)
        os.replace(old / name, new / name)
        moved += 1
    return moved


def entry(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload), zlib.crc32(payload, zlib.crc32(kind))) + payload


def message_entry(envelope: dict[str, Any], body: bytes) -> bytes:
    head = compact.dumps(envelope).encode()
    return entry(MESSAGE, _LEN.pack(len(head)) + head + body)


def marker(kind: bytes, queue_id: str) -> bytes:
    return entry(kind, queue_id.encode())


def split_message(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _LEN.unpack_from(payload)
    return compact.loads(payload[4:4 + n]), payload[4 + n:]


_ID_PREFIX = b'{"queue_id":"'


def message_id(payload: bytes) -> str:
    """The queue id of an ``M`` entry's payload, without decoding its envelope: the JSON
    starts with it (message_entry of store.envelope_record, whose first key it is; queue
    ids need no JSON escaping). Anything else is decoded in full."""
    start = _LEN.size + len(_ID_PREFIX)
    if payload[_LEN.size:start] == _ID_PREFIX:
        end = payload.find(b'"', start)
        if end > start:
            return payload[start:end].decode()
    return split_message(payload)[0]["queue_id"]


def read_entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The whole entries of a segment's bytes, in order, up to the end of what was written
    (zeros) or to the first torn or damaged entry."""
    for kind, payload, _ in entries_to(data):
        yield kind, payload


def entries_to(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """As read_entries(), each with the offset where it ends."""
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        kind, size, crc = _HEAD.unpack_from(data, pos)
        if kind not in (MESSAGE, DONE, INDEXED):
            return                      # b"\0": the preallocated, never written tail
        start = pos + _HEAD.size
        payload = data[start:start + size]
        if len(payload) != size or zlib.crc32(payload, zlib.crc32(kind)) != crc:
            return                      # torn by a crash mid-write: never acknowledged
        pos = start + size
        yield kind, payload, pos


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


def marks_path(segment: Path) -> Path:
    """The markers the delivery process writes for a segment's messages (two processes)."""
    return segment.with_suffix(".marks")


_SYNCED = struct.Struct("<QQI")


def number_of(segment: Path) -> int:
    return int(segment.stem.split("-")[1])


def write_position(fd: int, number: int, offset: int) -> None:
    head = struct.pack("<QQ", number, offset)
    os.pwrite(fd, head + struct.pack("<I", zlib.crc32(head)), 0)


def _position(raw: bytes) -> tuple[int, int] | None:
    """(segment number, offset) from ``synced`` (how far the receiving process's entries
    are durable) or ``followed`` (how far the delivery process has read them)."""
    if len(raw) != _SYNCED.size:
        return None
    number, offset, crc = _SYNCED.unpack(raw)
    # Read while it was being rewritten: the caller looks again at its next claim.
    return (number, offset) if zlib.crc32(raw[:16]) == crc else None


class Log:
    """The segments of one process's log. Used by the queue's writer thread only.

    ``removes``: this process removes finished segments (one process receives and
    delivers). Otherwise (``delivery.process = "separate"``) the delivery process follows
    the log (``Follower``) and removes them; this side publishes how far its entries are
    durable in the file ``synced``, and seals each segment it leaves (``.end``)."""

    def __init__(self, log_dir: Path, files: FileOps, first_number: int = 1, *,
                 removes: bool = True) -> None:
        self.dir = log_dir
        self.files = files
        self.removes = removes
        self._next_number = first_number
        self.current: Segment | None = None
        self.segments: dict[int, Segment] = {}
        self._synced_fd: int | None = None
        if not removes:
            self._synced_fd = os.open(log_dir / "synced", os.O_RDWR | os.O_CREAT, 0o600)
        self._followed_fd: int | None = None     # opened once the delivery process made it

    def _publish(self, number: int, offset: int) -> None:
        if self._synced_fd is not None:
            write_position(self._synced_fd, number, offset)

    def backlog(self) -> int | None:
        """Bytes of entries the delivery process has not read yet (two processes), about."""
        return self.progress()[0]

    def progress(self) -> tuple[int | None, tuple[int, int] | None]:
        """The backlog (as ``backlog()``) and how far the delivery process has read
        (segment number, offset; None: it has not said yet)."""
        current = self.current
        followed = self.followed()
        if current is None or followed is None:
            return (None if current is None else current.used), followed
        number, offset = followed
        return (current.number - number) * SEGMENT_BYTES + current.used - offset, followed

    def followed(self) -> tuple[int, int] | None:
        """How far the delivery process has read (segment number, offset; None: it has
        not said yet), from a descriptor kept open: it rewrites ``followed`` in place
        (Follower), and hand-off's backlog and back-pressure ask up to a hundred times a
        second, where an open, read and close each time cost three system calls."""
        if self._followed_fd is None:
            try:
                self._followed_fd = os.open(self.dir / "followed", os.O_RDONLY)
            except FileNotFoundError:
                return None
        return _position(os.pread(self._followed_fd, _SYNCED.size, 0))

    def _open_segment(self) -> Segment:
        number = self._next_number
        path = self.dir / f"segment-{number:08d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self.files.allocate(fd, SEGMENT_BYTES)     # ENOSPC here: the disk is full
            self.files.fsync(fd)                       # the allocation, before any entry
            self.files.fsync_dir(self.dir)             # and the name
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._next_number += 1
        segment = Segment(number, path, fd)
        self.segments[number] = segment
        self._publish(number, 0)
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
            self._close(segment)
            raise
        segment.used += len(data)
        segment.open_messages += messages
        if sync:
            self._publish(segment.number, segment.used)
        return segment

    def synced(self, segment: Segment, end: int) -> None:
        """An append made with ``sync=False`` was made durable up to ``end`` by another
        process's fdatasync (queue/syncer.py): the delivery process may read it now."""
        self._publish(segment.number, end)

    def unsynced(self, segment: Segment, start: int, messages: int) -> None:
        """The fdatasync of an append made with ``sync=False`` failed: as after a failed
        append, the segment is closed where the last good append ended (``start``), so
        that its last batch, whose messages are refused, is never read back."""
        segment.used = start
        segment.open_messages -= messages
        self._close(segment)

    def finished(self, segment: Segment) -> None:
        """One of the segment's messages got its marker."""
        segment.open_messages -= 1
        if segment.closed and segment.open_messages == 0:
            self._remove(segment)

    def _close(self, segment: Segment) -> None:
        self._seal(segment)
        segment.closed = True
        if self.current is segment:
            self.current = None
        if segment.open_messages == 0 and self.removes:
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
        remove_files(segment.path)

    def close(self) -> None:
        """At shutdown: a segment with nothing open goes (when this process removes
        segments); the others stay for recover()."""
        for segment in list(self.segments.values()):
            self._close(segment)                 # removed (and its fd closed) if finished
            if segment.number in self.segments:
                try:
                    os.close(segment.fd)
                except OSError:
                    pass
        self.segments.clear()
        self.current = None
        for fd in (self._synced_fd, self._followed_fd):
            if fd is not None:
                os.close(fd)
        self._synced_fd = self._followed_fd = None


def remove_files(segment: Path) -> None:
    """A segment and what goes with it (its seal, its markers)."""
    for path in (segment, end_path(segment), marks_path(segment)):
        path.unlink(missing_ok=True)


def sealed_end(segment: Path) -> int | None:
    try:
        return int(end_path(segment).read_text())
    except (OSError, ValueError):
        return None


def scan(log_dir: Path) -> tuple[dict[str, bytes], set[str], list[Path], int]:
    """What a crash left: the messages without a marker (queue id -> M payload), the queue
    ids with one, the segment files, and the next free segment number."""
    messages: dict[str, bytes] = {}
    marked: set[str] = set()
    paths = segment_paths(log_dir)
    for path in paths:
        data = path.read_bytes()
        end = sealed_end(path)
        if end is not None:
            data = data[:end]           # not sealed: its entries are whole up to the zeros
        try:
            marks = marks_path(path).read_bytes()
        except FileNotFoundError:
            marks = b""
        for _, payload in read_entries(marks):
            marked.add(payload.decode())
        for kind, payload in read_entries(data):
            if kind == MESSAGE:
                messages[message_id(payload)] = payload
            else:
                marked.add(payload.decode())
    for queue_id in marked:
        messages.pop(queue_id, None)
    last = int(paths[-1].stem.split("-")[1]) if paths else 0
    extra = [f for p in paths for f in (end_path(p), marks_path(p)) if f.exists()]
    synced = log_dir / "synced"
    return messages, marked, paths + extra + ([synced] if synced.exists() else []), last + 1


#: The least a message's entry is counted as when a read window is sized.
_PAGE = 4096


def _first_entry_read(data: bytes, size: int, messages: int) -> int:
    """How much to read after a window of ``size`` octets (``data``) held no whole entry:
    the first entry as its head gives its length, ``messages`` times (the messages still
    wanted, taken as long as it); without a head that says more than the window (damage,
    or no head at all), everything (the caller caps it), so that damage is found."""
    if len(data) >= _HEAD.size:
        kind, length, _ = _HEAD.unpack_from(data)
        need = _HEAD.size + length
        if kind in (MESSAGE, DONE, INDEXED) and need > size:
            return need * max(1, messages)
    return 1 << 62


class Follower:
    """The delivery process's reader of the receiving process's log (two processes).

    It hands out new messages in order, only as far as they are durable (``synced``, or
    a segment's seal once the receiving process has moved on), writes the markers of their
    outcomes to ``segment-N.marks`` (not fsynced, like the markers of one process), and
    removes a segment read to its seal whose messages all have markers. It says how far it
    has read in ``followed`` (the receiving process stops handing off when it falls far
    behind). Used on the delivery process's event loop thread only."""

    READ_BYTES = 4 << 20        # more than the largest entry (a body in memory is <= 1 MiB)
    WINDOW = 16 << 10           # the least read at once

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir
        self._entry = _PAGE                 # the size of the last message entry read
        self._seal: tuple[int, int] | None = None   # (segment, its seal): _sealed_end
        self.number: int | None = None      # the segment being read
        self.offset = 0
        self._fd: int | None = None
        self.open: dict[int, int] = {}      # segment -> messages handed out without a marker
        self.read_to_end: set[int] = set()  # segments read to their seal
        self._marked: set[str] = set()      # markers a previous delivery process wrote
        # Segments up to this one were there when this follower started: a message of
        # theirs without a marker may be in the index already (its predecessor indexed it
        # and died before writing the marker); the store checks those (Store._follow).
        self.inherited = 0
        self._marks: dict[int, int] = {}    # segment -> its .marks file, open for appends
        self._followed = os.open(log_dir / "followed", os.O_RDWR | os.O_CREAT, 0o600)
        # The receiving process rewrites ``synced`` in place (write_position): an open
        # descriptor reads each new position (one pread per claim, not open/read/close).
        self._synced: int | None = None

    def start(self) -> None:
        """A delivery process that starts beside a running receiving process reads the log
        from its first segment, skipping what the one before it marked."""
        for path in segment_paths(self.dir):
            self.inherited = number_of(path)
            try:
                self._marked.update(p.decode() for _, p in read_entries(
                    marks_path(path).read_bytes()))
            except FileNotFoundError:
                pass

    def _path(self, number: int) -> Path:
        return self.dir / f"segment-{number:08d}.log"

    def read(self, want: int) -> list[tuple[int, dict[str, Any], bytes]]:
        """Up to ``want`` new messages: (segment number, envelope record, body)."""
        out: list[tuple[int, dict[str, Any], bytes]] = []
        while len(out) < want:
            synced = self._read_synced()
            if synced is None:
                break
            if self.number is None:
                paths = segment_paths(self.dir)
                if not paths:
                    break
                self.number = number_of(paths[0])
            last, durable = synced
            if self.number > last:
                break
            end = durable if self.number == last else self._sealed_end(self.number)
            if end is None:
                break                       # not sealed yet: the next look
            if self.offset >= end:
                if self.number == last:
                    break
                self._leave(self.number)
                continue
            if self._fd is None:
                self._fd = os.open(self._path(self.number), os.O_RDONLY)
            # A window sized for what is wanted, not all that is durable: a claim for a few
            # messages while thousands wait read (and copied) megabytes each time (issue 15:
            # 5% of the delivery process). Sized by the last message's entry: 50 KB messages
            # do not fit 4 KB each. An entry larger than the window is read again, as long
            # as its head says (with the messages still wanted behind it, if as long): a
            # read of all that is durable there copied 6 times the content (1.6 GB for 5,000
            # messages of 50 KB behind a backlog, strace; issue 15).
            room = end - self.offset
            cap = min(room, self.READ_BYTES)
            left = want - len(out)
            size = min(cap, max(self.WINDOW, left * self._entry))
            while True:
                data = os.pread(self._fd, size, self.offset)
                consumed = 0
                for kind, payload, at in entries_to(data):
                    consumed = at
                    if kind == MESSAGE:
                        self._entry = max(_PAGE, _HEAD.size + len(payload))
                        envelope, body = split_message(payload)
                        if envelope["queue_id"] not in self._marked:
                            out.append((self.number, envelope, body))
                            self.open[self.number] = self.open.get(self.number, 0) + 1
                    if len(out) >= want:
                        break
                if consumed or size >= cap:
                    break
                size = min(cap, _first_entry_read(data, size, left))
            if not consumed:
                # Durable bytes that are not whole entries: a damaged segment. What follows
                # in it cannot be read; recovery at the next start reads what it can.
                print(f"relaywarden: delivery: {self._path(self.number)}: damaged at offset"
                      f" {self.offset}, the rest of it is skipped", file=sys.stderr, flush=True)
                self.offset = end
                continue
            self.offset += consumed
        if self.number is not None:
            write_position(self._followed, self.number, self.offset)
        return out

    def _sealed_end(self, number: int) -> int | None:
        """The seal of a segment the receiving side has left, read once: it never changes
        once written, and a claim behind a backlog asked for it (a file opened, read and
        closed through pathlib) every time, ~1% of the delivery process (issue 15)."""
        if self._seal is not None and self._seal[0] == number:
            return self._seal[1]
        end = sealed_end(self._path(number))
        if end is not None:
            self._seal = (number, end)          # the one segment being read
        return end

    def _read_synced(self) -> tuple[int, int] | None:
        if self._synced is None:
            try:
                self._synced = os.open(self.dir / "synced", os.O_RDONLY)
            except FileNotFoundError:
                return None     # the receiving process has not started its log yet
        return _position(os.pread(self._synced, _SYNCED.size, 0))

    def _leave(self, number: int) -> None:
        """Read to its seal: on to the next segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.read_to_end.add(number)
        self.number, self.offset = number + 1, 0
        if self.open.get(number, 0) == 0:
            self._remove(number)

    def mark(self, number: int, kind: bytes, queue_id: str) -> None:
        fd = self._marks.get(number)
        if fd is None:
            fd = self._marks[number] = os.open(marks_path(self._path(number)),
                                               os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, marker(kind, queue_id))
        except OSError:
            pass   # a lost marker: after a crash the message is delivered again, never lost
        self.open[number] -= 1
        if number in self.read_to_end and self.open[number] == 0:
            self._remove(number)

    def _remove(self, number: int) -> None:
        fd = self._marks.pop(number, None)
        if fd is not None:
            os.close(fd)
        self.open.pop(number, None)
        self.read_to_end.discard(number)
        remove_files(self._path(number))

    def close(self) -> None:
        for fd in (*self._marks.values(), self._fd, self._followed, self._synced):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._marks.clear()
        self._fd = None
