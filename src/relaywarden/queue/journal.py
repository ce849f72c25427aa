"""The queue's journal: what happened to each message, in commit order.

Every change the queue makes durable that a person would ask about later (a message
received, an attempt's outcome, an admin's action) adds a row to the ``journal`` table in
the SAME transaction as the change itself. So the journal costs no fsync of its own, is
never ahead of or behind the queue, and its ``seq`` (AUTOINCREMENT: never reused, even
after a trim) is one order of events across every process that writes the queue.

The history (``relaywarden.history``) is an index fed from here: it reads entries after
its cursor and trims what it has made durable. That is the whole interface between the
two (``read_journal`` / ``trim_journal``), so a queue on other storage keeps the history
working by keeping these two functions and the entry kinds:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    return (at, queue_id, kind, json.dumps(data, separators=(",", ":")))


def add(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Inside the caller's transaction."""
    if rows:
        db.executemany(INSERT.format(values="(?,?,?,?)"), rows)


_HEADER = re.compile(rb"^(message-id|subject)[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                     re.IGNORECASE | re.MULTILINE)
_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(rb"\r?\n[ \t]")


def header_fields(head: bytes) -> dict[str, str]:
    """Message-ID and Subject of a message from its first bytes (the header section ends
    at the first empty line, RFC 5322 2.1), unfolded, raw: RFC 2047 words are decoded by
    the reader, not on the hot path."""
    end = _END.search(head)
    section = head if end is None else head[:end.start()]
    found: dict[str, str] = {}
    for m in _HEADER.finditer(section):
        name = m.group(1).lower().decode()
        if name in found:
            continue   # the first one counts (a second is malformed anyway)
        value = m.group(2)
        if b"\n" in value:        # folded (RFC 5322 2.2.3): unfold
            value = _FOLD.sub(b" ", value)
        value = value.strip()
        found["message_id" if name == "message-id" else "subject"] = \
            value[:FIELD_LIMIT].decode("utf-8", "replace")
    return found


def read_journal(db: sqlite3.Connection, after_seq: int, limit: int) -> list[JournalEntry]:
    return [JournalEntry(seq, at, qid, kind, json.loads(data), data)
            for seq, at, qid, kind, data in
            db.execute("SELECT seq, at, queue_id, kind, data FROM journal WHERE seq > ?"
                       " ORDER BY seq LIMIT ?", (after_seq, limit))]


def trim_journal(db: sqlite3.Connection, upto_seq: int) -> int:
    """Remove entries up to ``upto_seq`` (the reader has made them durable elsewhere)."""
    return db.execute("DELETE FROM journal WHERE seq <= ?", (upto_seq,)).rowcount


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
