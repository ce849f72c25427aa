"""The queue's journal: what happened to each message, in commit order.

Every change the queue makes durable that a person would ask about later (a message
received, an attempt's outcome, an admin's action) adds a row to the ``journal`` table in
the SAME transaction as the change itself. So the journal costs no fsync of its own, is
never ahead of or behind the queue, and its ``seq`` (AUTOINCREMENT: never reused, even
after a trim) is one order of events across every process that writes the queue.

One kind of message has no queue transaction to ride in: one that hand-off (queue/log.py)
finished on its first attempt, delivered or bounced without a DSN, never in the SQLite
queue. Its entries (``received`` and its ``attempt``s, all it will ever have) are appended
to a journal file instead (``data_dir/journal/*.jsonl``, one JSON array per line, see
``Appender``): one write() on the delivering process's event loop thread, no SQLite
transaction, no queue lock, no hop to the queue's writer thread, no fsync (the transaction
it replaces had none either: a power loss may take back the tail of the file, and the
hand-off log's done marker with it, so the message is delivered again and journaled
again). That was the largest single cost of finishing a delivery (issue 15: the delivery
process costs 8-14% less CPU per message without it, docs/benchmarks.md).

The history (``relaywarden.history``) is an index fed from here: it reads entries after
its cursor and trims what it has made durable. That is the whole interface between the
two (``read_journal`` / ``trim_journal``, ``read_files`` / removing a finished file), so a
queue on other storage keeps the history working by keeping these functions and the entry
kinds:

- ``received``: envelope, client, TLS, AUTH, size, Message-ID and Subject (raw header
  values), each recipient's status, rule and reason;
- ``attempt``: one recipient's outcome (``outcome`` = delivered | deferred | bounced |
  held | badmail), next hop, TLS, the reply in full, the next hop's own queue id, the
  DSN's queue id;
- ``admin``: an action on the queue (``action``, ``by``, the recipients it changed).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported here for its effect: the queue's store and the history import the journal, so
# every process that binds SQLite parameters on the hot path gets it once.
from relaywarden.queue import binds  # noqa: F401 - sqlite3 binds None and bool fast
from relaywarden.queue import compact
from relaywarden.queue.fileops import REAL, FileOps

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    queue_id TEXT NOT NULL,
    kind     TEXT NOT NULL,          -- received | attempt | admin
    data     TEXT NOT NULL           -- JSON object
);
"""

INSERT = "INSERT INTO journal (at, queue_id, kind, data) VALUES {values}"

#: Header fields longer than this are cut in the journal (a Subject is for finding mail).
FIELD_LIMIT = 998   # RFC 5322 2.1.1: the longest line a header may have


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    at: float
    queue_id: str
    kind: str
    data: dict[str, Any]
    text: str | None = None     # ``data`` as stored (JSON), so a reader need not re-encode it


def row(at: float, queue_id: str, kind: str, data: dict[str, Any]) -> tuple:
    """The parameters of one journal row (for a multi-row INSERT)."""
    return (at, queue_id, kind, compact.dumps(data))


def add(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Inside the caller's transaction."""
    if rows:
        db.executemany(INSERT.format(values="(?,?,?,?)"), rows)


_FOLD = re.compile(rb"\r?\n[ \t]")
#: The fields looked for, as they are named in a lower-cased header section.
_FIELDS = ((b"message-id", "message_id"), (b"subject", "subject"))


def _header_end(head: bytes) -> int:
    """Where the header section ends: at the first empty line (its line end included in
    neither), or the end of ``head``. Line ends are CRLF or a bare LF."""
    # CRLF first (as messages are stored): the bare-LF search then stops where it begins.
    end = head.find(b"\n\r\n")
    bare = head.find(b"\n\n", 0, len(head) if end < 0 else end + 1)
    if bare >= 0:
        end = bare
    elif end < 0:
        return len(head)
    return end - 1 if end and head[end - 1] == 13 else end      # the CR of its CRLF


def header_fields(head: bytes) -> dict[str, str]:
    """Message-ID and Subject of a message from its first bytes (the header section ends
    at the first empty line, RFC 5322 2.1), unfolded, raw: RFC 2047 words are decoded by
    the reader, not on the hot path.

    A field is a line that starts with its name (any case), then optional blanks and a
    colon (RFC 5322 3.6.4, 3.6.5; the blanks are the obsolete syntax, 4.5.3), and runs on
    over the lines that start with a blank (folding, 2.2.3). Found with ``bytes.find`` in
    the lower-cased section rather than a case-insensitive regular expression tried at
    every line, and the empty line with ``bytes.find`` too (a regular expression for it
    took 5 us): 12.5 -> ~3 us for a 1 KB message, once per delivered message (issue 15)."""
    section = head[:_header_end(head)]
    # With a line end in front, every field's name follows a "\n", the first one's too;
    # an index in ``low`` is the next character's in ``section``.
    low = b"\n" + section.lower()
    found: dict[str, str] = {}
    for name, key in _FIELDS:
        # The first line that starts with the name and is the field (the first one counts:
        # a second is malformed anyway).
        needle = b"\n" + name
        at = low.find(needle)
        while at >= 0:
            colon = at + len(needle)
            while low[colon:colon + 1] in (b" ", b"\t"):
                colon += 1
            if low[colon:colon + 1] == b":":
                break
            at = low.find(needle, at + 1)
        else:
            continue
        start = colon                   # in ``section``: the character after the colon
        stop = section.find(b"\n", start)
        while stop >= 0 and section[stop + 1:stop + 2] in (b" ", b"\t"):
            stop = section.find(b"\n", stop + 1)      # a folded line goes on
        value = section[start:] if stop < 0 else section[start:stop]
        # Folded (RFC 5322 2.2.3): unfold. find(), not `in`: bytes.__contains__ tries
        # its argument as an int first and drops a TypeError (~1,800 instructions).
        if value.find(b"\n") >= 0:
            value = _FOLD.sub(b" ", value)
        found[key] = value.strip()[:FIELD_LIMIT].decode("utf-8", "replace")
    return found


def read_journal(db: sqlite3.Connection, after_seq: int, limit: int) -> list[JournalEntry]:
    return [JournalEntry(seq, at, qid, kind, compact.loads(data), data)
            for seq, at, qid, kind, data in
            db.execute("SELECT seq, at, queue_id, kind, data FROM journal WHERE seq > ?"
                       " ORDER BY seq LIMIT ?", (after_seq, limit))]


def trim_journal(db: sqlite3.Connection, upto_seq: int) -> int:
    """Remove entries up to ``upto_seq`` (the reader has made them durable elsewhere)."""
    return db.execute("DELETE FROM journal WHERE seq <= ?", (upto_seq,)).rowcount


# -- the journal's files --------------------------------------------------------------------

#: Under the data directory.
FILES = "journal"
SUFFIX = ".jsonl"
#: A file is closed and the next one begun past this size; the indexer removes a file once
#: it is closed and every entry in it is in the history.
FILE_BYTES = 4 << 20

#: Where a reader stands in the files: (file name, byte offset). ("", 0): nothing read yet.
Position = tuple[str, int]
START: Position = ("", 0)


def files_directory(data_dir: Path) -> Path:
    return data_dir / FILES


#: Text JSON writes as it is between quotes (no escapes): queue ids and kinds always are.
_PLAIN = re.compile(r"[A-Za-z0-9._@+-]*")


def line(row: tuple) -> bytes:
    """One row (see ``row``) as a line of a journal file: [at, queue id, kind, data].

    The time, queue id and kind are written as ``json.dumps`` would write them, without
    the encoder for what it writes unchanged (a finite float is its repr; a plain string,
    quoted): two rows per delivered message, and the encoder's calls were 5% of the
    delivery process's (issue 15)."""
    at, queue_id, kind, data = row
    a = repr(at) if type(at) is float and at - at == 0 else json.dumps(at)   # not inf/nan
    q = (f'"{queue_id}"' if type(queue_id) is str and _PLAIN.fullmatch(queue_id)
         else json.dumps(queue_id))
    k = f'"{kind}"' if type(kind) is str and _PLAIN.fullmatch(kind) else json.dumps(kind)
    return f"[{a},{q},{k},{data}]\n".encode()


class Appender:
    """Appends rows to this process's journal file (on the delivering process's event
    loop thread, one call per finished message). While a file may still grow its writer
    holds an exclusive flock on it: that is how a reader knows a file is closed for good
    (its writer closed it, or died: the kernel drops the lock). A new file is created under
    a hidden name, locked, then renamed, so no reader ever sees it unlocked before it is
    finished."""

    def __init__(self, directory: Path, files: FileOps = REAL, *,
                 file_bytes: int = FILE_BYTES) -> None:
        self.directory = directory
        self._files = files
        self._file_bytes = file_bytes
        self._fd: int | None = None
        self._size = 0

    def append(self, rows: list[tuple]) -> None:
        data = b"".join([line(r) for r in rows])
        if self._fd is None:
            self._open()
        assert self._fd is not None
        try:
            self._files.write(self._fd, data)
        except BaseException:
            # A failed write may have left part of a line: this file ends there (the reader
            # drops a closed file's torn tail); the next append begins a new one.
            self.close()
            raise
        self._size += len(data)
        if self._size >= self._file_bytes:
            self.close()

    def _open(self) -> None:
        self.directory.mkdir(exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        hidden = self.directory / f".{name}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(hidden, self.directory / name)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # drops the lock: the file is closed for its readers
            self._fd = None


def _closed(fd: int) -> bool:
    """No writer holds the file (see Appender)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def file_names(directory: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory)
                      if n.endswith(SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return []


def read_files(directory: Path, position: Position, limit: int
               ) -> tuple[list[JournalEntry], Position, Path | None]:
    """Up to ``limit`` entries after ``position``, from one file only (the one the position
    names, if it is still there, else the first by name): the entries, the position after
    them, and the file if it is now finished (closed and read to its end: remove it once
    the entries are in the history). A file still being written is read up to its last
    whole line; later files wait for it (there is one delivering process at a time). A
    closed file's torn tail (a write cut short) and a damaged line are skipped, and said."""
    names = file_names(directory)
    if not names:
        return [], position, None
    name = position[0] if position[0] in names else names[0]
    start = position[1] if name == position[0] else 0
    path = directory / name
    try:
        with open(path, "rb") as f:
            closed = _closed(f.fileno())     # before reading: after it nothing is added
            f.seek(start)
            data = f.read()
    except FileNotFoundError:               # removed meanwhile (another indexer)
        return [], position, None
    entries: list[JournalEntry] = []
    used = 0
    while len(entries) < limit:
        end = data.find(b"\n", used)
        if end < 0:
            break
        raw, used = data[used:end], end + 1
        try:
            entries.append(_parse(raw))
        except ValueError:
            print(f"relaywarden: journal {name}: a damaged line at byte"
                  f" {start + used - len(raw) - 1} skipped", file=sys.stderr, flush=True)
    if len(entries) >= limit or not closed:
        return entries, (name, start + used), None
    if used < len(data):
        print(f"relaywarden: journal {name}: {len(data) - used} byte(s) of a torn last line"
              " skipped", file=sys.stderr, flush=True)
    return entries, (name, start + len(data)), path


def _parse(raw: bytes) -> JournalEntry:
    """A line ``[at,"queue id","kind",{data}]`` (see ``line``). The data's JSON text is kept
    as it is (``JournalEntry.text``: the history stores it without encoding it again); the
    first three items never hold a comma. ValueError: not such a line."""
    head, queue_id, kind, rest = raw.decode().split(",", 3)
    if head[:1] != "[" or rest[-1:] != "]":
        raise ValueError("not a journal line")
    text = rest[:-1]
    fields = compact.loads(text)          # one JSON parse per line: most of the indexer's read
    qid, what = _string(queue_id), _string(kind)
    if not isinstance(fields, dict):
        raise ValueError("not a journal line")
    return JournalEntry(0, float(head[1:]), qid, what, fields, text)


def _string(item: str) -> str:
    """A JSON string item of a journal line: a queue id and a kind are plain (no escapes),
    read without the JSON parser; anything else goes through it."""
    plain = item[1:-1]
    if len(item) >= 2 and item[0] == '"' and item[-1] == '"' and "\\" not in plain \
            and '"' not in plain:
        return plain
    value = json.loads(item)
    if not isinstance(value, str):
        raise ValueError("not a journal line")
    return value


def remove_closed_files(directory: Path) -> int:
    """Remove every closed journal file, read or not (the history is off), and the hidden
    name of a file its writer died before renaming. Returns how many went."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        path = directory / name
        if name.startswith("."):     # a file being created now, or its writer died then
            try:
                if time.time() - path.stat().st_mtime < 60:
                    continue
            except FileNotFoundError:
                continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if _closed(fd):
                path.unlink(missing_ok=True)
                removed += 1
        finally:
            os.close(fd)
    return removed


class Journal:
    """The history indexer's connection to the queue's journal (its own process)."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "queue.sqlite3"
        if not path.exists():
            raise FileNotFoundError(f"no queue at {path}")
        # Used from the indexer's worker thread (one at a time), opened on the loop's.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        # A trim need not be durable: if a crash takes it back, the entries are read
        # again and skipped (they are at or below the history's cursor).
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The queue's writers hand the write lock over through this file (Store._transaction):
        # a trim that took SQLite's lock behind their back would send them into SQLite's
        # busy handler, which polls with sleeps.
        self._lock_fd = os.open(data_dir / "queue.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.files = files_directory(data_dir)

    def read_files(self, position: Position, limit: int = 2000
                   ) -> tuple[list[JournalEntry], Position, Path | None]:
        return read_files(self.files, position, limit)

    def remove_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def trim_files(self) -> int:
        return remove_closed_files(self.files)

    def read(self, after_seq: int, limit: int = 2000) -> list[JournalEntry]:
        return read_journal(self._db, after_seq, limit)

    def trim(self, upto_seq: int) -> int:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            return trim_journal(self._db, upto_seq)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def last_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()
        return seq

    def close(self) -> None:
        self._db.close()
        os.close(self._lock_fd)
