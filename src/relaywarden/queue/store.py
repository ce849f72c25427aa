"""The durable queue: envelopes, per-recipient state and bodies in SQLite.

Nothing is answered 250 before the transaction holding the message is on disk. SQLite runs in
WAL mode with ``synchronous=FULL``, so every COMMIT fsyncs the write-ahead log. One writer
thread owns the write connection and commits whatever is waiting in one transaction (group
commit): twenty sessions that finish DATA together cost one fsync, not twenty
(docs/architecture.md, "Known traps": design for the slow disk).

Small bodies live in the ``bodies`` table. A body too large to keep in memory while it
arrives (over SPOOL_MEMORY_LIMIT) is already a file; it becomes the queue's copy as it is:
fsynced, hard-linked as ``bodies/<queue id>`` and the directory fsynced, all before the row that
names it commits (``messages.body_file = 1``). So a 5 MB body is written once, not three
times (spool file, WAL, database at checkpoint), and never blocks the group commit of the
small messages beside it. A crash can leave a body file without a row (written, never
committed); ``Store.recover_files()`` removes those at start-up.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import enum
import errno
import fcntl
import functools
import json
import os
import queue as thread_queue
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaywarden.queue import journal
from relaywarden.queue import log as qlog
from relaywarden.queue import syncer
from relaywarden.queue.fileops import REAL, FileOps
from relaywarden.queue.spool import SPOOL_MEMORY_LIMIT, BodySpool

__all__ = ["SPOOL_MEMORY_LIMIT", "BodySpool", "Envelope", "QueueReader", "RecipientRecord",
           "RecipientStatus", "RecipientUpdate", "DueMessage", "DueRecipient", "Store",
           "StoreError", "BodyMissing", "new_queue_id"]

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id           TEXT PRIMARY KEY,
    received_at  REAL NOT NULL,
    listener     TEXT NOT NULL,
    client_ip    TEXT NOT NULL,
    client_name  TEXT,
    client_group TEXT,                  -- the policy client group (sender-dependent routes)
    helo         TEXT NOT NULL,
    auth_user    TEXT,
    sender       TEXT NOT NULL,          -- '' is the null reverse-path <>
    ret          TEXT,                   -- DSN RET (RFC 3461 4.3)
    envid        TEXT,                   -- DSN ENVID (RFC 3461 4.4)
    body_type    TEXT,                   -- BODY= (7BIT / 8BITMIME)
    smtputf8     INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    body_file    INTEGER NOT NULL DEFAULT 0   -- 1: the body is the file bodies/<id>
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id     TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL,
    address        TEXT NOT NULL,
    domain         TEXT NOT NULL,        -- lower-case, for routing and `flush --domain`
    orcpt          TEXT,                 -- DSN ORCPT (RFC 3461 4.2)
    notify         TEXT,                 -- DSN NOTIFY, comma separated (RFC 3461 4.1)
    status         TEXT NOT NULL,        -- queued | held | delivered | bounced | badmail
    rule           TEXT NOT NULL,        -- the policy rule that accepted or quarantined it
    reason         TEXT NOT NULL,
    next_attempt   REAL NOT NULL,        -- due time; a claimed recipient gets a lease here
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT NOT NULL DEFAULT '',
    remote_mta     TEXT NOT NULL DEFAULT '',
    delay_notified INTEGER NOT NULL DEFAULT 0,
    filed          INTEGER NOT NULL DEFAULT 0,   -- badmail: written to the badmail folder
    lease_until    REAL NOT NULL DEFAULT 0,      -- an attempt is under way until then
    released       INTEGER NOT NULL DEFAULT 0,   -- let out of hold by the admin or ETRN:
                                                 -- the hold route does not catch it again
    held_by        TEXT NOT NULL DEFAULT '',     -- when held: route | admin | body (missing)
    PRIMARY KEY (message_id, idx)
);
-- The scheduler's only query: due recipients in due order. Held and badmail rows are in
-- other status partitions of the index, so a million held messages cost the scan nothing.
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(status, next_attempt);
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients(domain, status);
CREATE TABLE IF NOT EXISTS bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB NOT NULL
);
""" + journal.SCHEMA
#: Schema changes from older versions, applied in order at open.
MIGRATIONS = {
    1: "ALTER TABLE messages ADD COLUMN body_file INTEGER NOT NULL DEFAULT 0",
    # Rows held before version 3 keep held_by '' (unknown): ETRN, which starts only what a
    # hold route holds, leaves them to the admin (`queue flush --domain`, `queue release`).
    2: "ALTER TABLE recipients ADD COLUMN held_by TEXT NOT NULL DEFAULT ''",
    # The journal the history is fed from (relaywarden.queue.journal).
    3: journal.SCHEMA.strip(),
}

#: A claim of due messages brings their bodies along, up to this many bytes in all.
CLAIM_BODIES_BYTES = 4 << 20
#: Group commit: at most this many messages (or bytes) share one transaction.
BATCH_MAX_MESSAGES = 512
BATCH_MAX_BYTES = 64 << 20
#: Hand-off (queue/log.py): at most this many messages (or bytes) wait in memory for their
#: first attempt; past that, new messages go into the index as without hand-off.
HANDOFF_MAX_MESSAGES = 5000
HANDOFF_MAX_BYTES = 256 << 20
#: With hand-off, the index is scanned for due recipients at most this often (a claim is
#: served from memory meanwhile): retries, releases and ETRN wait at most this long more.
INDEX_SCAN_SECONDS = 0.05
#: Two processes: the receiving process hands off while the delivery process has read all
#: but this many bytes of the log (about 640 messages of 50 KB, 32,000 of 1 KB), looked at
#: this often; past it, only while the delivery process is seen reading on (its position
#: moved since the last look) and the log is less than HANDOFF_MAX_BYTES behind, the bound
#: of one process's memory. What it guards is the mail that waits on the log while delivery
#: is stuck (not running, or hung): that goes into the index, where every admin action
#: reaches it. A delivery process that runs moves what waits a second into the index itself
#: (Engine._index_lingering), so a burst that runs ahead of it must not send mail to the
#: index here, which costs each message several times as much: with the bound alone, 23-32%
#: of a burst of 10,000 messages of 50 KB went there, and the relay delivered the burst
#: 14-17% slower, with 13-15% more CPU per message (docs/benchmarks.md, 2026-12-07, an
#: eighth session).
HANDOFF_MAX_BACKLOG = 32 << 20
BACKLOG_CHECK_SECONDS = 0.5
#: A handed message whose first attempt has lasted this long (a slow next hop), or that has
#: waited this long for one (delivery is busy), goes into the index (Store.index_handed):
#: from then on the admin sees and steers it as any other (hold, delete, retry, leases),
#: and the memory it held is free. Most first attempts end well before: they never touch
#: the index.
HANDOFF_GRACE_SECONDS = 1.0
#: Back-pressure (delivery.in_flow_delay, as Postfix's in_flow_delay): while the oldest
#: handed message that delivery has not taken yet has waited this long (half the grace
#: above, after which delivery moves it into the index, at several times the cost), the
#: 250 after the final dot waits until delivery catches up, at most in_flow_delay. The
#: message is on disk already; what waits is the client's next one. Without it, a burst
#: that ran ahead of delivery for more than a second put every message that waited a second
#: into the index: 20,000 messages of 50 KB over reused connections were delivered at 2,656
#: msgs/s, with it at 3,014, with 11% less CPU per message (docs/benchmarks.md, 2026-12-07,
#: an eighth session).
FLOW_SECONDS = HANDOFF_GRACE_SECONDS / 2
#: How often the sessions that wait look whether delivery has caught up.
FLOW_POLL_SECONDS = 0.01


class RecipientStatus(enum.Enum):
    QUEUED = "queued"        # waiting for its next attempt
    HELD = "held"            # on a hold route, or held by the admin: no attempts until released
    BADMAIL = "badmail"      # quarantined: kept until released or deleted
    DELIVERED = "delivered"
    BOUNCED = "bounced"


#: Recipients in these states are finished; a message whose recipients all are is removed.
_FINAL_STATUS = (RecipientStatus.DELIVERED, RecipientStatus.BOUNCED)
FINAL = tuple(s.value for s in _FINAL_STATUS)      # as the SQL compares them


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientRecord:
    address: str
    status: RecipientStatus
    rule: str
    reason: str = ""
    orcpt: str | None = None
    notify: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    queue_id: str
    received_at: float
    listener: str
    client_ip: str
    client_name: str | None
    helo: str
    auth_user: str | None
    sender: str
    recipients: tuple[RecipientRecord, ...]
    ret: str | None = None
    envid: str | None = None
    body_type: str | None = None
    smtputf8: bool = False
    client_group: str | None = None
    tls: str | None = None          # "TLSv1.3 TLS_AES_256_GCM_SHA384" when received over TLS


class StoreError(Exception):
    """The queue could not make a message durable; the client gets a 451 4.3.0, or a
    452 4.3.1 when ``full`` (the disk or a quota was full)."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


def disk_full(exc: BaseException | None) -> bool:
    """Did ``exc`` (or what caused it) come from a full disk: ENOSPC, EDQUOT, SQLITE_FULL?"""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, StoreError) and exc.full:
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if (isinstance(exc, sqlite3.Error)
                and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class BodyMissing(StoreError):
    """A queued message whose body file is not there (removed by hand, a disk fault)."""


_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"


# The random part of queue IDs only keeps processes apart, it guards nothing: a generator
# seeded from the OS once per process (and again in a forked child) instead of a getrandom
# system call per message (secrets.randbits).
_ids = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))


# Base-30 digits two at a time (900 = 30 ** 2): half the divisions of one at a time.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]          # most significant first
_PAIRS_LOW_FIRST = [b + a for a in _ALPHABET for b in _ALPHABET]


def new_queue_id() -> str:
    """A sortable, unique queue ID: microseconds since the epoch, then 40 random bits.

    Sortable so that `queue list` shows arrival order; random so that several processes
    (SO_REUSEPORT workers, several nodes) never collide without coordinating.
    The stamp is base 30 without leading zeros; the tail is the random number's 8 lowest
    base-30 digits, least significant first.
    """
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, 900)
        out.append(_PAIRS[r])
    stamp = "".join(reversed(out)).lstrip("0")
    rand = _ids.getrandbits(40)
    a, r0 = divmod(rand, 900)
    a, r1 = divmod(a, 900)
    a, r2 = divmod(a, 900)
    r3 = a % 900
    return (stamp + _PAIRS_LOW_FIRST[r0] + _PAIRS_LOW_FIRST[r1] + _PAIRS_LOW_FIRST[r2]
            + _PAIRS_LOW_FIRST[r3])


@dataclass(slots=True)
class _Job:
    """One unit of work for the writer thread, done inside a shared transaction: ``rows``
    adds the job's parameters to the batch's statements (called before the lock is taken),
    ``apply`` runs anything else inside the transaction. ``done`` belongs to ``loop`` and is
    only touched on that loop's thread."""
    apply: Callable[[sqlite3.Connection], Any] | None
    size: int
    done: asyncio.Future
    loop: asyncio.AbstractEventLoop
    # Body files this job stored: if its transaction finally fails (the client gets 451),
    # they are removed again.
    files: tuple[Path, ...] = ()
    rows: Callable[["_Rows"], None] | None = None
    # False for the delivery side's bookkeeping (leases, attempt outcomes): see _transaction.
    durable: bool = True
    # A message whose durable record is a log entry (hand-off): (entry, its envelope as a
    # record (envelope_record), the Envelope, body).
    logged: tuple[bytes, dict[str, Any], "Envelope", bytes] | None = None
    # Log markers (kind, queue id) appended once this job's transaction committed.
    markers: tuple[tuple[bytes, str], ...] = ()
    # Markers only (a handed message its first attempt finished, one process): no
    # transaction.
    markers_only: bool = False


def received_row(record: dict[str, Any], size: int, head: bytes) -> tuple:
    """The journal's ``received`` entry of a message, from its envelope as the log keeps it
    (envelope_record): the delivery process has that, not an Envelope (issue 15)."""
    return journal.row(record["received_at"], record["queue_id"], "received", {
        "listener": record["listener"], "client_ip": record["client_ip"],
        "client_name": record["client_name"], "helo": record["helo"], "tls": record["tls"],
        "auth_user": record["auth_user"], "sender": record["sender"], "size": size,
        "envid": record["envid"], "ret": record["ret"], "group": record["client_group"],
        **journal.header_fields(head),
        "recipients": [r[:4] for r in record["recipients"]]})


class _Rows:
    """The parameters of one transaction's batched statements. Built before the queue lock
    is taken, so the lock is held for SQLite's work only: a handful of executemany calls for
    the whole batch, not three statements per message (each statement hands the GIL back
    and forth with the busy event loop thread, and the other process waits for the lock
    meanwhile: measured, the two writers spent 40% of their time waiting for each other)."""

    __slots__ = ("messages", "recipients", "bodies", "outcomes", "finished", "journal")

    def __init__(self) -> None:
        self.messages: list[tuple] = []
        self.recipients: list[tuple] = []
        self.bodies: list[tuple] = []
        self.outcomes: list[tuple] = []
        self.finished: list[str] = []
        self.journal: list[tuple] = []

    def add_message(self, env: Envelope, spool: BodySpool) -> None:
        """A new message. A body in a file must already be persist()ed under its queue ID."""
        in_file = not spool.in_memory
        if in_file and spool.stored_as is None:
            raise StoreError(f"{env.queue_id}: body file not stored")
        qid = env.queue_id
        self.messages.append((
            qid, env.received_at, env.listener, env.client_ip, env.client_name,
            env.client_group, env.helo, env.auth_user, env.sender, env.ret, env.envid,
            env.body_type, int(env.smtputf8), spool.size, int(in_file)))
        self.recipients.extend(
            (qid, i, r.address, domain_of(r.address), r.orcpt, _notify_text(r.notify),
             r.status.value, r.rule, r.reason, env.received_at)
            for i, r in enumerate(env.recipients))
        if not in_file:
            (data,) = spool.chunks()
            self.bodies.append((qid, data))
            head = data[:16384]
        else:
            head = spool.head()
        self.add_received(env, spool.size, head)

    def add_received(self, env: Envelope, size: int, head: bytes) -> None:
        self.journal.append(received_row(envelope_record(env), size, head))

    def add_outcomes(self, queue_id: str, updates: list[RecipientUpdate]) -> None:
        """Attempt outcomes; the message leaves the queue if they finish it."""
        self.outcomes.extend(
            (u.status.value, u.next_attempt, u.attempts, u.last_error, u.remote_mta,
             int(u.delay_notified), u.held_by, queue_id, u.idx) for u in updates)
        self.finished.append(queue_id)

    def write(self, db: sqlite3.Connection) -> list[str]:
        """Inside the transaction: one multi-row statement per table (a statement per row
        would cost a GIL round trip each). Returns the IDs of removed messages that had a
        body file."""
        if self.journal:
            _rows_at_once(db, journal.INSERT, self.journal)
        if self.messages:
            _rows_at_once(db, _INSERT_MESSAGE, self.messages)
            _rows_at_once(db, _INSERT_RECIPIENT, self.recipients)
            if self.bodies:
                _rows_at_once(db, _INSERT_BODY, self.bodies)
        if not self.finished:
            return []
        if self.outcomes:
            # The last outcome of a recipient wins (UPDATE ... FROM would pick any one).
            latest = {(o[7], o[8]): o for o in self.outcomes}
            _rows_at_once(db, _UPDATE_OUTCOMES, list(latest.values()))
        removed = db.execute(_REMOVE_FINISHED, (json.dumps(self.finished),) + FINAL).fetchall()
        return [qid for qid, body_file in removed if body_file]


# Multi-row statements: "{values}" becomes "(?,...),(?,...)" for as many rows as are written.
_INSERT_MESSAGE = (
    "INSERT INTO messages (id, received_at, listener, client_ip, client_name, client_group,"
    " helo, auth_user, sender, ret, envid, body_type, smtputf8, size, body_file)"
    " VALUES {values}")
_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, status, rule,"
    " reason, next_attempt) VALUES {values}")
_INSERT_BODY = "INSERT INTO bodies (message_id, data) VALUES {values}"
_UPDATE_OUTCOMES = (
    "WITH u(status, next_attempt, attempts, last_error, remote_mta, delay_notified, held_by,"
    " mid, idx) AS (VALUES {values})"
    # An admin hold that came while the attempt was under way wins over an outcome that
    # would have it wait on (deferred, held by its route): the recipient stays held by the
    # admin. A final outcome (delivered, bounced, badmail) is what happened: it stands.
    " UPDATE recipients SET status = CASE WHEN recipients.status = 'held' AND"
    " recipients.held_by = 'admin' AND u.status IN ('queued', 'held') THEN 'held'"
    " ELSE u.status END, next_attempt = u.next_attempt,"
    " attempts = u.attempts, last_error = u.last_error, remote_mta = u.remote_mta,"
    " delay_notified = u.delay_notified, held_by = CASE WHEN recipients.status = 'held' AND"
    " recipients.held_by = 'admin' AND u.status IN ('queued', 'held') THEN 'admin'"
    " ELSE u.held_by END, lease_until = 0"
    " FROM u WHERE recipients.message_id = u.mid AND recipients.idx = u.idx")
_MAX_VARIABLES = 30000   # SQLite's limit is 32,766 bound parameters per statement


@functools.lru_cache(maxsize=256)
def _multi_row(template: str, width: int, count: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return template.format(values=",".join([row] * count))


def _rows_at_once(db: sqlite3.Connection, template: str, rows: list[tuple]) -> None:
    width = len(rows[0])
    step = max(1, _MAX_VARIABLES // width)
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        db.execute(_multi_row(template, width, len(part)), [v for row in part for v in row])
# A message whose every recipient is delivered or bounced leaves the queue (the mail log
# keeps its story); the IDs come as one JSON array.
_REMOVE_FINISHED = (
    "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND NOT EXISTS"
    " (SELECT 1 FROM recipients WHERE message_id = messages.id AND status NOT IN (?, ?))"
    " RETURNING id, body_file")


def _settle(outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """On the event loop: hand a committed batch's results to their waiters. A waiter that
    was cancelled meanwhile (its session ended, shutdown) is skipped; its write stands."""
    for fut, result, error in outcomes:
        if fut.cancelled():
            continue
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


@dataclass(frozen=True, slots=True, kw_only=True)
class DueRecipient:
    idx: int
    address: str
    domain: str
    orcpt: str | None
    notify: tuple[str, ...] | None
    attempts: int
    delay_notified: bool
    released: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DueMessage:
    """A message with the recipients the scheduler claimed for one round of attempts."""
    queue_id: str
    received_at: float
    sender: str
    client_group: str | None
    auth_user: str | None
    ret: str | None
    envid: str | None
    body_type: str | None
    smtputf8: bool
    size: int
    recipients: tuple[DueRecipient, ...]
    # A small body comes with the claim (read in the same transaction): no second trip to
    # the queue per message. None: read it with Store.read_body().
    body: bytes | None = None
    # Hand-off: its durable record is the log, not the index (first attempt, from memory).
    handed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientUpdate:
    """The outcome of an attempt for one recipient (status and when to try next)."""
    idx: int
    status: RecipientStatus
    next_attempt: float = 0.0
    attempts: int = 0
    last_error: str = ""
    remote_mta: str = ""
    delay_notified: bool = False
    held_by: str = ""        # with status HELD: "route" or "body" (see the schema)


def _connect(path: Path) -> sqlite3.Connection:
    # Multi-row statements come in one text per row count: keep them all prepared.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30,
                         cached_statements=1024)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every COMMIT, so a committed message survives power loss.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _notify_text(notify: tuple[str, ...] | None) -> str | None:
    return ",".join(notify) if notify is not None else None


def _notify_tuple(text: str | None) -> tuple[str, ...] | None:
    return tuple(text.split(",")) if text is not None else None


def envelope_record(env: Envelope) -> dict[str, Any]:
    """An envelope as the log keeps it (JSON)."""
    return {"queue_id": env.queue_id, "received_at": env.received_at,
            "listener": env.listener, "client_ip": env.client_ip,
            "client_name": env.client_name, "helo": env.helo, "auth_user": env.auth_user,
            "sender": env.sender, "ret": env.ret, "envid": env.envid,
            "body_type": env.body_type, "smtputf8": env.smtputf8,
            "client_group": env.client_group, "tls": env.tls,
            # _value_: the member's value without Enum's property (two calls each).
            "recipients": [[r.address, r.status._value_, r.rule, r.reason, r.orcpt,
                            None if r.notify is None else list(r.notify)]
                           for r in env.recipients]}


def envelope_from_record(data: dict[str, Any]) -> Envelope:
    return Envelope(
        queue_id=data["queue_id"], received_at=data["received_at"], listener=data["listener"],
        client_ip=data["client_ip"], client_name=data["client_name"], helo=data["helo"],
        auth_user=data["auth_user"], sender=data["sender"], ret=data["ret"],
        envid=data["envid"], body_type=data["body_type"], smtputf8=data["smtputf8"],
        client_group=data["client_group"], tls=data["tls"],
        recipients=tuple([
            RecipientRecord(address=a, status=_STATUS[st], rule=rule, reason=reason,
                            orcpt=orcpt, notify=None if notify is None else tuple(notify))
            for a, st, rule, reason, orcpt, notify in data["recipients"]]))


# A status by its value: a dict look-up, where RecipientStatus(value) is three Python calls
# (the delivery process reads every handed message's recipients, issue 15).
_STATUS = {s.value: s for s in RecipientStatus}


def _handed_message(record: dict[str, Any], body: bytes) -> "DueMessage":
    """A message handed to delivery from memory, as a claim of it would read it, from its
    envelope as the log keeps it (envelope_record)."""
    return DueMessage(
        queue_id=record["queue_id"], received_at=record["received_at"],
        sender=record["sender"], client_group=record["client_group"],
        auth_user=record["auth_user"], ret=record["ret"], envid=record["envid"],
        body_type=record["body_type"], smtputf8=record["smtputf8"], size=len(body),
        recipients=tuple([
            DueRecipient(idx=i, address=address, domain=domain_of(address), orcpt=orcpt,
                         notify=None if notify is None else tuple(notify), attempts=0,
                         delay_notified=False)
            for i, (address, _, _, _, orcpt, notify) in enumerate(record["recipients"])]),
        body=body, handed=True)


@dataclass(slots=True)
class _Handed:
    """A message whose durable record is in the log and that is not in the index."""
    record: dict[str, Any]      # its envelope as the log keeps it (envelope_record)
    body: bytes
    segment: Any        # the Log's Segment (one process), or its number (qlog.Follower)
    made: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        """Made from the record when first asked for (going into the index, sender_of)."""
        env = self.made
        if env is None:
            env = self.made = envelope_from_record(self.record)
        return env


class Store:
    """The SQLite queue. Every write goes through one writer thread in shared transactions.

    ``files``: the file operations of its body spools and its COMMIT (queue/fileops.py);
    the real ones unless a test hands in failing ones."""

    def __init__(self, data_dir: Path, files: FileOps = REAL) -> None:
        self.data_dir = data_dir
        self.files = files
        self.path = data_dir / "queue.sqlite3"
        self.tmp_dir = data_dir / "tmp"
        self.bodies_dir = data_dir / "bodies"
        self._jobs: thread_queue.SimpleQueue[_Job | None] = thread_queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Body files of messages the running transaction removes: unlinked after COMMIT.
        self._unlink_after_commit: list[Path] = []
        self._synchronous = "FULL"   # the write connection's current PRAGMA synchronous
        self.commits = 0   # transactions committed: group commit makes this < messages
        self._tasks: set[asyncio.Task] = set()
        # Hand-off (queue/log.py; start_handoff()): None while messages go to the index.
        self._log: qlog.Log | None = None
        self._log_next = 1                   # the number of the next segment (recover_log)
        self._deliver_here = True            # hand-off to this process's own engine
        self._by_child = False               # appends on the loop, fdatasync by a child
        self._syncer: syncer.Syncer | None = None
        self._here_pending: list[_Job] = []
        self._here_scheduled = False
        self._here_flight: tuple[list[_Job], qlog.Segment, int, int] | None = None
        self._follower: qlog.Follower | None = None   # the delivery process's, two processes
        self._backlog_checked = 0.0
        self._backlog_ok = True
        self._followed: tuple[int, int] | None = None   # the delivery's position, last look
        # Back-pressure (FLOW_SECONDS): delivery.in_flow_delay, set by the app (0: off);
        # the durable ends of the batches appended with two processes, (segment, offset,
        # time.monotonic()), until the delivery process has read past them (the loop's
        # appends, _synced; a store with injected file faults appends on its writer thread
        # and never looks behind); the sessions that wait, with their deadlines; the poll's
        # timer.
        self.in_flow_delay = 0.0
        self._appended: collections.deque[tuple[int, int, float]] = collections.deque(
            maxlen=1 << 16)
        self._flow_checked = -float("inf")
        self._behind = False
        self._flow_waiters: collections.deque[tuple[float, asyncio.Future]] = (
            collections.deque())
        self._flow_timer: asyncio.TimerHandle | None = None
        self._in_log: dict[str, _Handed] = {}        # written by the writer thread only
        self._in_log_bytes = 0                       # their bodies (writer thread only)
        self._handed: collections.deque[DueMessage] = collections.deque()  # not yet claimed
        self._scan_at = 0.0                  # time.monotonic() of the next index scan
        self.log_syncs = 0                   # log fdatasyncs: group commit makes this < messages
        # With hand-off: called when a claim that was told to wait for its index scan may
        # look now (the delivery engine's wake-up; set by the app).
        self.on_index_scan: Callable[[], None] | None = None
        self._scan_timer = False
        self._appender: journal.Appender | None = None   # the loop thread's, made at first use

    @classmethod
    def open(cls, data_dir: Path, *, files: FileOps = REAL) -> "Store":
        data_dir.mkdir(parents=True, exist_ok=True)
        store = cls(data_dir, files)
        store.tmp_dir.mkdir(exist_ok=True)
        store.bodies_dir.mkdir(exist_ok=True)
        store._db = _connect(store.path)
        (version,) = store._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"{store.path}: queue schema version {version}, expected {SCHEMA_VERSION}")
        if version == 0:
            store._db.executescript(SCHEMA)
        else:
            for step in range(version, SCHEMA_VERSION):
                store._db.execute(MIGRATIONS[step])
        if version != SCHEMA_VERSION:
            # Only when it changes: opening an up-to-date queue writes nothing (the delivery
            # process starting on a full disk died here).
            store._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        store._reader = _connect(store.path)
        store._lock_fd = os.open(data_dir / "queue.lock", os.O_RDWR | os.O_CREAT, 0o600)
        store._writer = threading.Thread(target=store._write_loop, name="queue-writer", daemon=True)
        store._writer.start()
        return store

    def new_spool(self) -> BodySpool:
        return BodySpool(self.tmp_dir, self.files)

    def recover_files(self) -> tuple[int, int]:
        """At start-up, before anything receives or delivers: remove spool files of
        transactions that never finished and body files whose row never committed.
        Returns (spool files, body files) removed. Only the process that owns the data
        directory calls this (not the delivery process: the receiving one is running)."""
        spools = 0
        for stale in self.tmp_dir.glob("spool-*"):
            stale.unlink(missing_ok=True)
            spools += 1
        with self._read_lock:
            kept = {mid for (mid,) in self._reading().execute(
                "SELECT id FROM messages WHERE body_file = 1")}
        orphans = 0
        for path in self.bodies_dir.iterdir():
            # Only plain files are ours; anything else someone put there is left alone.
            if path.name not in kept and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                orphans += 1
        return spools, orphans

    async def recover_log(self) -> int:
        """At start-up, before anything receives or delivers: the messages a crash left in
        the log without a marker (answered 250, never finished) go into the index, due now,
        with fsync; then the log's segments go. Returns how many were recovered."""
        await asyncio.to_thread(qlog.adopt_legacy, self.data_dir)
        log_dir = qlog.directory(self.data_dir)
        if not log_dir.is_dir():
            return 0
        messages, _, paths, self._log_next = await asyncio.to_thread(qlog.scan, log_dir)
        pending = []
        for queue_id, payload in messages.items():
            if not self._indexed(queue_id):
                data, body = qlog.split_message(payload)
                spool = self.new_spool()
                spool.write(body)
                pending.append(self.commit(envelope_from_record(data), spool))
        if pending:
            await asyncio.gather(*pending)
        for path in paths:
            path.unlink(missing_ok=True)
        return len(pending)

    def start_handoff(self, *, deliver_here: bool = True) -> None:
        """From now on a received message's durable record is a log entry and it goes to
        delivery from memory (delivery.handoff). ``deliver_here``: this process's engine
        takes it (delivery.process = "inline"); otherwise the delivery process follows the
        log (start_following()). After recover_log()."""
        log_dir = qlog.directory(self.data_dir)
        log_dir.mkdir(exist_ok=True)
        self._deliver_here = deliver_here
        self._log = qlog.Log(log_dir, self.files, self._log_next, removes=deliver_here)
        # Two processes: the receiving one appends on its loop and a child fdatasyncs
        # (queue/syncer.py); nothing else appends to its log (markers are the delivery
        # process's). A store with injected file faults keeps the writer thread, whose
        # FileOps the fault tests drive.
        self._by_child = not deliver_here and self.files is REAL

    @property
    def hands_off(self) -> bool:
        """Messages reach this process's delivery from the log (hand-off)."""
        return (self._log is not None and self._deliver_here) or self._follower is not None

    def start_following(self) -> None:
        """The delivery process of a relay with hand-off: claims take the receiving
        process's new messages from its log (queue/log.py, Follower)."""
        log_dir = qlog.directory(self.data_dir)
        log_dir.mkdir(exist_ok=True)
        self._follower = qlog.Follower(log_dir)
        self._follower.start()

    # -- writes ----------------------------------------------------------------------------

    def _write(self, apply: Callable[[sqlite3.Connection], Any] | None, size: int = 0, *,
               files: tuple[Path, ...] = (), rows: Callable[[_Rows], None] | None = None,
               durable: bool = True) -> asyncio.Future:
        """Queue a job for the writer thread; the future resolves after its commit."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._jobs.put(_Job(apply, size, done, loop, files, rows, durable))
        return done

    async def commit(self, envelope: Envelope, spool: BodySpool) -> None:
        """Make the message durable. Raises StoreError if it could not be."""
        await self.start_commit(envelope, spool)

    def start_commit(self, envelope: Envelope, spool: BodySpool, *,
                     handoff: bool = True) -> asyncio.Future:
        """As commit(), for callers that want a future rather than a coroutine (the SMTP
        session answers from a done-callback: no task per message). The spool must stay
        open until the future is done. ``handoff=False``: into the index even with
        hand-off (mail a hold route will keep: ETRN and ATRN look for it there)."""
        if (handoff and self._log is not None and spool.in_memory
                and self._can_hand(envelope, spool)):
            (body,) = spool.chunks()
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            record = envelope_record(envelope)
            job = _Job(None, spool.size, done, loop, logged=(
                qlog.message_entry(record, body), record, envelope, body))
            if self._by_child:
                self._append_here(job)
            else:
                self._jobs.put(job)
            return done
        if spool.in_memory:
            return self._write(None, spool.size,
                               rows=lambda rows: rows.add_message(envelope, spool))
        # A body in a file is fsynced and put in place by a pool thread first, so that its
        # fsync runs beside the group commits of other messages, not inside one.
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        target = self.bodies_dir / envelope.queue_id

        def stored(persisting: asyncio.Future) -> None:
            error = None if persisting.cancelled() else persisting.exception()
            if persisting.cancelled() or error is not None or done.cancelled():
                if spool.stored_as is not None:
                    _unlink(target)   # no 250 was given: the body goes
                if not done.cancelled():
                    done.set_exception(StoreError(f"queue write failed: {error or 'cancelled'}",
                                                  full=disk_full(error)))
                return
            inner = self._write(None, 0, files=(target,),
                                rows=lambda rows: rows.add_message(envelope, spool))
            inner.add_done_callback(functools.partial(_pass_on, done))

        loop.run_in_executor(None, spool.persist, target).add_done_callback(stored)
        return done

    # -- the hand-off's appends on the loop, synced by a child (two processes) ----------

    def _append_here(self, job: _Job) -> None:
        """Group commit on the loop: the messages of one loop turn are one append and one
        fdatasync; those that come while it is in flight are the next batch."""
        self._here_pending.append(job)
        if self._syncer is None:
            self._syncer = syncer.Syncer(job.loop, self._synced)
        if not self._here_scheduled and self._here_flight is None:
            self._here_scheduled = True
            job.loop.call_soon(self._append_batch)

    def _append_batch(self) -> None:
        self._here_scheduled = False
        if self._here_flight is not None or not self._here_pending:
            return
        batch, self._here_pending = self._here_pending, []
        log = self._log
        assert log is not None and self._syncer is not None
        records = [job.logged for job in batch if job.logged is not None]
        current = log.current
        start = current.used if current is not None else 0
        try:
            segment = log.append(b"".join([entry for entry, _, _, _ in records]), len(batch),
                                 sync=False)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the caller
            error = StoreError(f"queue write failed: {exc}", full=disk_full(exc))
            _settle([(job.done, None, error) for job in batch])
            return
        if segment is not current:
            start = 0        # a new segment: the batch is its first append
        self._here_flight = (batch, segment, start, segment.used)
        self._syncer.ask(segment.path)

    def _synced(self, error: OSError | None) -> None:
        """The child's answer for the batch in flight."""
        flight, self._here_flight = self._here_flight, None
        assert flight is not None and self._log is not None
        batch, segment, start, end = flight
        if error is not None:
            # As QueueLog.append after a failed fdatasync: nothing more goes into this
            # segment, and its batch is refused (451, or 452 when the disk is full).
            self._log.unsynced(segment, start, len(batch))
            failed = StoreError(f"queue write failed: {error}", full=disk_full(error))
            _settle([(job.done, None, failed) for job in batch])
        else:
            self.log_syncs += 1
            self._log.synced(segment, end)
            if self.in_flow_delay > 0:
                self._appended.append((segment.number, end, time.monotonic()))
            _settle([(job.done, None, None) for job in batch])
        if self._here_pending:
            self._append_batch()

    # -- back-pressure ---------------------------------------------------------------------

    def inflow(self) -> asyncio.Future | None:
        """None: delivery keeps up, answer now. Otherwise (FLOW_SECONDS) a future, resolved
        once delivery has caught up or after delivery.in_flow_delay seconds, whichever
        comes first: the answer waits for it. With hand-off only (without it there is no
        first attempt from memory to fall behind)."""
        delay = self.in_flow_delay
        if delay <= 0 or self._log is None:
            return None
        now = time.monotonic()
        if now - self._flow_checked >= FLOW_POLL_SECONDS:
            self._flow_checked = now
            self._behind = self._is_behind()
        if not self._behind:
            return None
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._flow_waiters.append((now + delay, waiter))
        if self._flow_timer is None:
            self._flow_timer = loop.call_later(FLOW_POLL_SECONDS, self._flow_poll)
        return waiter

    def _is_behind(self) -> bool:
        return self._longest_wait() > FLOW_SECONDS

    def _longest_wait(self) -> float:
        """Seconds the oldest handed message that delivery has not taken yet has waited (0:
        none waits). One process: the first no claim has taken (by its arrival time); two:
        the first batch the delivery process has not read past (its ``followed`` position),
        by the monotonic clock."""
        if self._deliver_here:
            return time.time() - self._handed[0].received_at if self._handed else 0.0
        appended = self._appended
        if not appended or self._log is None:
            return 0.0
        followed = self._log.followed()
        if followed is not None:
            while appended and (appended[0][0], appended[0][1]) <= followed:
                appended.popleft()
        return time.monotonic() - appended[0][2] if appended else 0.0

    def _flow_poll(self) -> None:
        self._flow_timer = None
        now = time.monotonic()
        self._flow_checked = now
        self._behind = self._is_behind()
        waiters = self._flow_waiters
        while waiters and (not self._behind or waiters[0][0] <= now):
            _, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if waiters:
            self._flow_timer = asyncio.get_running_loop().call_later(
                FLOW_POLL_SECONDS, self._flow_poll)

    async def claim_due(self, now: float, limit: int, lease: float) -> list[DueMessage]:
        """Due recipients, earliest first, leased until ``now + lease``.

        The lease is the crash guard: a recipient whose attempt never reports back (the
        process died) becomes due again when it runs out, so it is retried, not lost.

        With hand-off, messages received since the last claim come first, from memory (no
        lease: their crash guard is the log); the index is scanned at most every
        INDEX_SCAN_SECONDS for the rest (retries, released mail).
        """
        if self._log is None and self._follower is None:
            return await self._write(lambda db: _claim(db, now, limit, lease), durable=False)
        handed = self._take_handed(limit)
        if self._follower is not None and len(handed) < limit:
            handed += self._follow(limit - len(handed))
        if len(handed) >= limit:
            return handed
        wait = self._scan_at - time.monotonic()
        if wait > 0:
            # Looked a moment ago. A wake-up that found nothing handed is mostly one for a
            # message an earlier claim took already; if it was for the index (a release,
            # ETRN), the look it asked for comes when the wait is over.
            if not handed and self.on_index_scan is not None and not self._scan_timer:
                self._scan_timer = True
                asyncio.get_running_loop().call_later(wait, self._scan_due)
            return handed
        want = limit - len(handed)
        try:
            rows = await self._write(lambda db: _claim(db, now, want, lease), durable=False)
        except Exception:
            if not handed:
                raise
            # The index cannot be written now (a full disk: a claim writes leases). The
            # handed messages were taken already and have no other way to a claim: they go
            # on; the scan is tried again later, and its failure told then.
            self._scan_at = time.monotonic() + INDEX_SCAN_SECONDS
            return handed
        # Fewer than asked: nothing else is due; the next look at the index can wait.
        self._scan_at = time.monotonic() + INDEX_SCAN_SECONDS if len(rows) < want else 0.0
        return handed + rows

    def _scan_due(self) -> None:
        self._scan_timer = False
        if self.on_index_scan is not None:
            self.on_index_scan()

    def _follow(self, want: int) -> list[DueMessage]:
        assert self._follower is not None
        out = []
        for number, record, body in self._follower.read(want):
            queue_id = record["queue_id"]
            if number <= self._follower.inherited and self._indexed(queue_id):
                self._follower.mark(number, qlog.INDEXED, queue_id)
                continue
            # No Envelope: the record has what delivery needs (made when it goes into the
            # index, which most messages never do).
            self._in_log[queue_id] = _Handed(record, body, number)
            out.append(_handed_message(record, body))
        return out

    def _indexed(self, queue_id: str) -> bool:
        with self._read_lock:
            return has_message(self._reading(), queue_id)

    def _take_handed(self, limit: int) -> list[DueMessage]:
        out: list[DueMessage] = []
        while self._handed and len(out) < limit:
            out.append(self._handed.popleft())
        return out

    def _can_hand(self, envelope: Envelope, spool: BodySpool) -> bool:
        """Hand-off takes a message every recipient of which waits for its first attempt,
        while the memory it may use is not used up."""
        for r in envelope.recipients:            # a loop: no generator per message
            if r.status is not RecipientStatus.QUEUED:
                return False
        if self._deliver_here:
            return (len(self._in_log) < HANDOFF_MAX_MESSAGES
                    and self._in_log_bytes + spool.size <= HANDOFF_MAX_BYTES)
        # Two processes: while the delivery process is far behind and does not read on
        # (it is not running, or hung), or is very far behind, new mail goes into the
        # index, where every admin action reaches it (HANDOFF_MAX_BACKLOG).
        now = time.monotonic()
        if now - self._backlog_checked > BACKLOG_CHECK_SECONDS:
            self._backlog_checked = now
            backlog, followed = (self._log.progress() if self._log is not None
                                 else (None, None))
            reading = followed is not None and followed != self._followed
            self._followed = followed
            self._backlog_ok = (backlog is None or backlog <= HANDOFF_MAX_BACKLOG
                                or (reading and backlog <= HANDOFF_MAX_BYTES))
        return self._backlog_ok

    async def record(self, queue_id: str, updates: list[RecipientUpdate], *,
                     new_messages: Sequence[tuple[Envelope, BodySpool]] = (),
                     events: Sequence[dict] = ()) -> None:
        """Apply attempt outcomes and enqueue the messages they produce (DSNs, notices) in
        one transaction: a bounce and the recipient it reports on change state together.
        ``events`` are the attempts' journal entries (``attempt``, see queue.journal)."""
        handed = self._in_log.get(queue_id)
        if handed is not None:
            await self._record_handed(handed, updates, new_messages, events)
            return

        def add(rows: _Rows) -> None:
            for env, spool in new_messages:
                if not spool.in_memory:   # a large DSN (RET=FULL of a large message)
                    spool.persist(self.bodies_dir / env.queue_id)
                rows.add_message(env, spool)
            rows.add_outcomes(queue_id, updates)
            rows.journal.extend(journal.row(e.get("at", 0.0), queue_id, "attempt", e)
                                for e in events)
        files = tuple(self.bodies_dir / env.queue_id for env, sp in new_messages
                      if not sp.in_memory)
        # Not durable on its own (see _transaction); the DSNs it may add go with it.
        await self._write(None, sum(sp.size for _, sp in new_messages), files=files,
                          rows=add, durable=False)

    async def _record_handed(self, handed: _Handed, updates: list[RecipientUpdate],
                             new_messages: Sequence[tuple[Envelope, BodySpool]],
                             events: Sequence[dict]) -> None:
        """The outcome of a handed message's first attempt. Finished (every recipient
        delivered or bounced, no DSN): its journal entries go to the journal's files
        (queue.journal.Appender; no SQLite transaction) and it gets a ``D`` marker, nothing
        fsynced (lost in a power loss: the delivery is made again). Otherwise it goes into
        the index with its outcomes and any DSN, committed with fsync, then an ``I``
        marker: from then on the index is where it lives."""
        record = handed.record
        queue_id = record["queue_id"]
        finished = (not new_messages and len(updates) == len(record["recipients"])
                    and all([u.status in _FINAL_STATUS for u in updates]))
        attempts = [journal.row(e.get("at", 0.0), queue_id, "attempt", e) for e in events]
        kind = qlog.DONE if finished else qlog.INDEXED
        follower = self._follower
        markers = () if follower is not None else ((kind, queue_id),)
        if finished:
            # On this thread, now: one small write() to the page cache (as the follower's
            # marker below), where a hop to the writer thread and back cost more than the
            # write (issue 15). Before the marker: a marker without its journal entries
            # would leave the history without the message.
            self._append_journal([received_row(record, len(handed.body), handed.body[:16384]),
                                  *attempts])
        if not finished or follower is None:
            # The writer thread: the index's transaction, or (one process, finished) the
            # marker, which goes into the log the writer thread appends to.
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            if finished:
                self._jobs.put(_Job(None, 0, done, loop, markers=markers, markers_only=True))
            else:
                def add(rows: _Rows) -> None:
                    for new_env, spool in new_messages:
                        if not spool.in_memory:
                            spool.persist(self.bodies_dir / new_env.queue_id)
                        rows.add_message(new_env, spool)
                    spool = BodySpool(self.tmp_dir, self.files)
                    spool.write(handed.body)
                    rows.add_message(handed.envelope, spool)
                    rows.add_outcomes(queue_id, updates)
                    rows.journal.extend(attempts)
                files = tuple(self.bodies_dir / e.queue_id for e, sp in new_messages
                              if not sp.in_memory)
                self._jobs.put(_Job(None, 0, done, loop, files, add, markers=markers))
            await done
        if follower is not None:    # the log is the receiving process's: markers go beside it
            del self._in_log[queue_id]
            follower.mark(handed.segment, kind, queue_id)

    def _append_journal(self, rows: list[tuple]) -> None:
        """Journal rows of a handed message its first attempt finished, to the journal's
        files (queue.journal.Appender; the event loop's thread only)."""
        if self._appender is None:
            self._appender = journal.Appender(journal.files_directory(self.data_dir),
                                              self.files)
        try:
            self._appender.append(rows)
        except Exception as exc:  # noqa: BLE001 - the engine keeps the outcome, tries again
            raise StoreError(f"queue write failed: {exc}", full=disk_full(exc)) from exc

    async def index_handed(self, queue_ids: Sequence[str], lease_until: float = 0.0) -> list[str]:
        """Handed messages (those of ``queue_ids`` still in the log's books) go into the
        index, committed with fsync, then get an ``I`` marker: from then on they are queued
        messages like any other. ``lease_until``: their first attempt is under way and
        holds them (delivery.engine renews the lease while it lasts; its outcome is
        recorded in the index); 0: they are due now. Returns the queue ids indexed. The
        caller makes sure no outcome of theirs is recorded meanwhile (the engine waits)."""
        found = [h for q in queue_ids if (h := self._in_log.get(q)) is not None]
        if not found:
            return []
        ids = [h.record["queue_id"] for h in found]

        def add(rows: _Rows) -> None:
            for handed in found:
                spool = BodySpool(self.tmp_dir, self.files)
                spool.write(handed.body)
                rows.add_message(handed.envelope, spool)

        def lease(db: sqlite3.Connection) -> None:
            if lease_until:
                db.execute("UPDATE recipients SET lease_until = ? WHERE message_id IN"
                           " (SELECT value FROM json_each(?))", (lease_until, json.dumps(ids)))
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        follower = self._follower
        self._jobs.put(_Job(lease, 0, done, loop, (), add, durable=True,
                            markers=() if follower is not None
                            else tuple((qlog.INDEXED, q) for q in ids)))
        await done
        if follower is not None:
            for handed in found:
                queue_id = handed.record["queue_id"]
                del self._in_log[queue_id]
                follower.mark(handed.segment, qlog.INDEXED, queue_id)
        return ids

    async def index_waiting(self, before: float) -> list[str]:
        """Handed messages received before ``before`` (epoch seconds) that no attempt has
        taken yet (delivery is busy) go into the index, due now (index_handed). Two
        processes: what the delivery process has not read of the log yet is read for it.
        If the index cannot take them (a full disk), they wait for a claim as before."""
        stale: list[DueMessage] = []
        while self._handed and self._handed[0].received_at < before:
            stale.append(self._handed.popleft())
        if self._follower is not None and not self._handed:
            while True:
                got = self._follow(256)
                for message in got:
                    if message.received_at < before and not self._handed:
                        stale.append(message)
                    else:
                        self._handed.append(message)      # the next claim takes it
                if len(got) < 256 or self._handed:
                    break
        if not stale:
            return []
        try:
            return await self.index_handed([m.queue_id for m in stale])
        except BaseException:
            # Taken from the queue of handed messages: back to its front, in order, or no
            # claim would ever hand them out (they would wait for a restart's recovery).
            self._handed.extendleft(reversed(stale))
            raise

    async def enqueue(self, envelope: Envelope, spool: BodySpool) -> None:
        await self.commit(envelope, spool)

    def start_etrn(self, domain: str, *, subdomains: bool,
                   allowed: Callable[[str], bool]) -> asyncio.Future:
        """ETRN (RFC 1985): the queued mail of `domain` (and of its subdomains when asked)
        is due now, and what a hold route holds for it is let out, for every such domain
        that `allowed` (the route's ETRN settings) admits. Resolves to (messages started,
        domains started). Mail held by the admin (`queue hold`) or for a missing body file
        stays held."""
        task = asyncio.get_running_loop().create_task(self._etrn(domain, subdomains, allowed))
        self._tasks.add(task)            # asyncio keeps only a weak reference to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    def _domains_below(self, domain: str) -> list[str]:
        """The domain and its subdomains that have mail waiting (queued or held). A scan of
        every waiting recipient (a suffix cannot use the index): done on the read
        connection in a pool thread, so that it never holds up the writer's commits."""
        suffix = "." + domain       # not LIKE: "_" in a domain would be a wildcard
        with self._read_lock:
            return [d for (d,) in self._reading().execute(
                "SELECT DISTINCT domain FROM recipients WHERE status IN ('queued', 'held')"
                " AND (domain = ? OR substr(domain, -?) = ?)", (domain, len(suffix), suffix))]

    async def _etrn(self, domain: str, subdomains: bool,
                    allowed: Callable[[str], bool]) -> tuple[int, list[str]]:
        if subdomains:
            found = await asyncio.get_running_loop().run_in_executor(
                None, self._domains_below, domain)
        else:
            found = [domain]
        started = [d for d in found if allowed(d)]
        now = time.time()

        def apply(db: sqlite3.Connection) -> tuple[int, list[str]]:
            messages: set[str] = set()
            for d in started:
                messages.update(start_domain(db, d, now, held_by="route", by="ETRN"))
            return len(messages), started
        return await self._write(apply, durable=False)

    def start_atrn(self, domains: Sequence[str], lease: float) -> asyncio.Future:
        """ATRN (RFC 2645): claim, for the session that turns its connection around, every
        recipient of these domains that a hold route holds or that waits in the queue (not
        one under way elsewhere), leased until ``now + lease`` like a scheduler claim.
        Resolves to the DueMessages (their recipients in these domains only). Mail held by
        the admin or for a missing body file stays held."""
        now = time.time()

        def apply(db: sqlite3.Connection) -> list[DueMessage]:
            rows = []
            for domain in domains:
                rows += db.execute(
                    "UPDATE recipients SET status = 'queued', released = 1, lease_until = ?"
                    " WHERE domain = ? AND lease_until <= ? AND (status = 'queued' OR"
                    " (status = 'held' AND held_by = 'route'))"
                    " RETURNING message_id, idx, address, domain, orcpt, notify, attempts,"
                    " delay_notified, released", (now + lease, domain, now)).fetchall()
            rows.sort(key=lambda row: (row[0], row[1]))
            return _due_messages(db, rows)
        return self._write(apply, durable=False)

    async def renew_leases(self, keys: Sequence[tuple[str, int]], until: float) -> None:
        """The scheduler's attempts (queue id, idx) are still under way: leased until
        ``until`` (delivery.engine.LEASE_SECONDS)."""
        await self._write(lambda db: db.executemany(
            "UPDATE recipients SET lease_until = ? WHERE message_id = ? AND idx = ?"
            " AND lease_until > 0", [(until, mid, idx) for mid, idx in keys]), durable=False)

    async def release_leases(self) -> int:
        """At start-up of a single relay process: attempts that were under way when the last
        process died are due again now (they are retried, at least once, never lost)."""
        return await self._write(lambda db: db.execute(
            "UPDATE recipients SET lease_until = 0 WHERE lease_until > 0").rowcount,
            durable=False)

    async def next_due(self) -> float | None:
        """When the earliest queued recipient falls due (for the scheduler's sleep)."""
        return await self._write(lambda db: db.execute(
            "SELECT MIN(next_attempt) FROM recipients WHERE status = 'queued'").fetchone()[0])

    async def unfiled_badmail(self, limit: int = 100) -> list[tuple[str, int, str, str, str]]:
        """Badmail recipients not yet written to the badmail folder:
        (queue_id, idx, address, rule, reason)."""
        return await self._write(lambda db: db.execute(
            "SELECT message_id, idx, address, rule, reason FROM recipients"
            " WHERE status = 'badmail' AND filed = 0 LIMIT ?", (limit,)).fetchall())

    async def mark_filed(self, keys: list[tuple[str, int]]) -> None:
        await self._write(lambda db: db.executemany(
            "UPDATE recipients SET filed = 1 WHERE message_id = ? AND idx = ?", keys),
            durable=False)

    async def sender_of(self, queue_id: str) -> str | None:
        handed = self._in_log.get(queue_id)
        if handed is not None:
            return handed.record["sender"]
        row = await self._write(lambda db: db.execute(
            "SELECT sender FROM messages WHERE id = ?", (queue_id,)).fetchone())
        return None if row is None else row[0]

    async def read_body(self, queue_id: str) -> bytes | None:
        return await asyncio.to_thread(self._read_body, queue_id)

    async def locate_body(self, queue_id: str) -> bytes | Path | None:
        """For delivery: a small body as bytes, a large one as the path of its file (sent
        from disk in chunks, never whole in memory); None if the message is gone.
        BodyMissing: the message is queued but its body file is not there."""
        return await asyncio.to_thread(self._locate_body, queue_id)

    def _locate_body(self, queue_id: str) -> bytes | Path | None:
        with self._read_lock:
            return _body(self._reading(), self.bodies_dir, queue_id, as_path=True)

    def _read_body(self, queue_id: str) -> bytes | None:
        with self._read_lock:
            return _body_bytes(self._reading(), self.bodies_dir, queue_id)

    def _reading(self) -> sqlite3.Connection:
        """The read connection (open from Store.open() until close())."""
        assert self._reader is not None, "the store is not open"
        return self._reader

    def close(self) -> None:
        if self._flow_timer is not None:
            self._flow_timer.cancel()
            self._flow_timer = None
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        if self._log is not None:
            self._log.close()   # what is still handed stays in its segment: recover_log()
        if self._follower is not None:
            self._follower.close()
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the writer thread -------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            size = first.size
            stop = False
            while len(batch) < BATCH_MAX_MESSAGES and size < BATCH_MAX_BYTES:
                try:
                    job = self._jobs.get_nowait()
                except thread_queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
                size += job.size
            self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        indexed = [job for job in batch if job.logged is None and not job.markers_only]
        logged = [job for job in batch if job.logged is not None]
        outcomes.extend((job, None, None) for job in batch if job.markers_only)
        if indexed:
            self._run_batch(indexed, outcomes)
        markers = [m for job, _, error in outcomes if error is None for m in job.markers]
        if logged or markers:
            self._log_batch(logged, markers, outcomes)
        # One wake-up per loop for the whole batch, not one per message.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, result, error in outcomes:
            by_loop.setdefault(job.loop, []).append((job.done, result, error))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:
                pass   # that loop is closed: nobody waits any more (the writes stand)

    def _log_batch(self, logged: list[_Job], markers: list[tuple[bytes, str]],
                   outcomes: list) -> None:
        """Append the batch's new messages and markers to the log; one fdatasync when it
        holds new messages (their 250 waits for it), none for markers alone."""
        log = self._log
        assert log is not None
        records = [job.logged for job in logged if job.logged is not None]
        data = b"".join([entry for entry, _, _, _ in records]
                        + [qlog.marker(kind, qid) for kind, qid in markers])
        try:
            segment = log.append(data, len(logged), sync=bool(logged))
        except Exception as exc:  # noqa: BLE001 - every failure must reach the caller
            error = StoreError(f"queue write failed: {exc}", full=disk_full(exc))
            outcomes.extend((job, None, error) for job in logged)
            segment = None
        if logged and segment is not None:
            self.log_syncs += 1
        # A finished message leaves the log's books even if its marker was not written:
        # its outcome is in the index (committed above); a crash before its segment goes
        # makes recover() look at it, and the index has it or it is delivered again.
        for _, queue_id in markers:
            handed = self._in_log.pop(queue_id, None)
            if handed is not None:
                self._in_log_bytes -= len(handed.body)
                log.finished(handed.segment)
        if segment is None:
            return
        for job, (_, record, env, body) in zip(logged, records):
            if self._deliver_here:   # else the delivery process reads it from the log
                self._in_log[env.queue_id] = _Handed(record, body, segment, env)
                self._in_log_bytes += len(body)
                self._handed.append(_handed_message(record, body))
            outcomes.append((job, None, None))

    def _run_batch(self, batch: list[_Job], outcomes: list) -> None:
        results, error = self._transaction(batch)
        if error is None:
            outcomes.extend((job, result, None) for job, result in zip(batch, results))
        elif len(batch) == 1:
            for path in batch[0].files:   # refused: its stored body goes too
                _unlink(path)
            outcomes.append((batch[0], None, error))
        else:
            # One bad job must not cost the others their 250: retry them one by one.
            for job in batch:
                self._run_batch([job], outcomes)

    def _transaction(self, batch: list[_Job]) -> tuple[list[Any], StoreError | None]:
        db = self._db
        assert db is not None
        # The receiving and the delivering process both write here. SQLite's own busy
        # handler polls with sleeps of 1 to 100 ms, which under load cost more than the
        # writes; a lock file hands the turn over in the kernel at once. SQLite's locking
        # still guards correctness (the admin CLI does not take this lock).
        rows = _Rows()
        try:
            for job in batch:
                if job.rows is not None:
                    job.rows(rows)
        except Exception as exc:  # noqa: BLE001 - e.g. a body file that could not be stored
            return [], StoreError(f"queue write failed: {exc}", full=disk_full(exc))
        # A batch that holds a new message from a client commits with synchronous=FULL: the
        # WAL is fsynced, the message survives power loss. A batch of delivery bookkeeping
        # only (leases, attempt outcomes and the DSNs they produce) commits with NORMAL: no
        # fsync of its own; it reaches the disk with the next FULL commit of either process
        # (the WAL is one file, synced whole) or the next checkpoint. A power loss can only
        # take back a tail of such commits, in order: a delivery is then made again (a
        # duplicate, never a loss), a bounce and its DSN vanish together and the attempt is
        # repeated. A crash of the process loses nothing (the kernel has the pages).
        # Postfix's queue manager has the same window: it does not fsync the removal of a
        # delivered message either.
        mode = "FULL" if any(job.durable for job in batch) else "NORMAL"
        if mode != self._synchronous:
            db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            db.execute("BEGIN IMMEDIATE")
            for qid in rows.write(db):
                self._unlink_after_commit.append(self.bodies_dir / qid)
            results = [None if job.apply is None else job.apply(db) for job in batch]
            self.files.commit(db)   # where a failing WAL write or fsync surfaces
        except Exception as exc:  # noqa: BLE001 - every failure must reach the caller
            self._unlink_after_commit.clear()
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return [], StoreError(f"queue write failed: {exc}", full=disk_full(exc))
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self.commits += 1
        for path in self._unlink_after_commit:
            _unlink(path)
        self._unlink_after_commit.clear()
        return results, None


def _pass_on(target: asyncio.Future, source: asyncio.Future) -> None:
    if target.cancelled():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _body(db: sqlite3.Connection, bodies_dir: Path, queue_id: str, *,
          as_path: bool = False) -> bytes | Path | None:
    """A queued message's body from the table or its file (or, ``as_path``, the file's
    path); None if the message is gone."""
    row = db.execute("SELECT data FROM bodies WHERE message_id = ?", (queue_id,)).fetchone()
    if row is not None:
        return bytes(row[0])
    row = db.execute("SELECT body_file FROM messages WHERE id = ?", (queue_id,)).fetchone()
    if row is None or not row[0]:
        return None
    path = bodies_dir / queue_id
    try:
        return path if as_path and path.exists() else path.read_bytes()
    except FileNotFoundError:
        pass
    if as_path and has_message(db, queue_id):
        raise BodyMissing(f"the body file {path} of a queued message is missing")
    return None   # removed between the looks (delivered, deleted)


def has_message(db: sqlite3.Connection, queue_id: str) -> bool:
    """Whether the index holds the message (hand-off: whether it left the log for it)."""
    return db.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is not None


def _body_bytes(db: sqlite3.Connection, bodies_dir: Path, queue_id: str) -> bytes | None:
    """_body() as bytes (never a path)."""
    found = _body(db, bodies_dir, queue_id)
    assert not isinstance(found, Path)
    return found


def _claim(db: sqlite3.Connection, now: float, limit: int, lease: float) -> list[DueMessage]:
    rows = db.execute(
        "SELECT r.message_id, r.idx, r.address, r.domain, r.orcpt, r.notify, r.attempts,"
        " r.delay_notified, r.released FROM recipients r WHERE r.status = 'queued' AND r.next_attempt <= ?"
        " AND r.lease_until <= ? ORDER BY r.next_attempt LIMIT ?",
        (now, now, limit),
    ).fetchall()
    if not rows:
        return []
    db.executemany(
        "UPDATE recipients SET lease_until = ? WHERE message_id = ? AND idx = ?",
        [(now + lease, mid, idx) for mid, idx, *_ in rows],
    )
    return _due_messages(db, rows)


def _due_messages(db: sqlite3.Connection, rows: list[tuple]) -> list[DueMessage]:
    """Claimed recipient rows (message_id, idx, address, domain, orcpt, notify, attempts,
    delay_notified, released) -> their messages, with bodies up to CLAIM_BODIES_BYTES."""
    by_message: dict[str, list[DueRecipient]] = {}
    for mid, idx, address, domain, orcpt, notify, attempts, notified, released in rows:
        by_message.setdefault(mid, []).append(DueRecipient(
            idx=idx, address=address, domain=domain, orcpt=orcpt, notify=_notify_tuple(notify),
            attempts=attempts, delay_notified=bool(notified), released=bool(released)))
    out = []
    budget = CLAIM_BODIES_BYTES
    for mid, recipients in by_message.items():
        m = db.execute(
            "SELECT received_at, sender, client_group, auth_user, ret, envid, body_type,"
            " smtputf8, size, body_file FROM messages WHERE id = ?", (mid,)).fetchone()
        body = None
        if m[8] <= budget and not m[9]:
            row = db.execute("SELECT data FROM bodies WHERE message_id = ?", (mid,)).fetchone()
            if row is not None:
                body = bytes(row[0])
                budget -= len(body)
        out.append(DueMessage(
            queue_id=mid, received_at=m[0], sender=m[1], client_group=m[2], auth_user=m[3],
            ret=m[4], envid=m[5], body_type=m[6], smtputf8=bool(m[7]), size=m[8],
            recipients=tuple(recipients), body=body))
    return out


def start_domain(db: sqlite3.Connection, domain: str, now: float, *,
                 held_by: str | None = None, by: str = "") -> list[str]:
    """A domain's queued mail is due now and its held mail is let out (only what
    ``held_by`` held, when given) through the hold route's next hops: ETRN and
    `queue flush --domain`. Returns the message ID of each recipient changed. The
    release of held mail is journaled with ``by`` (who asked)."""
    changed = [mid for (mid,) in db.execute(
        "UPDATE recipients SET next_attempt = ? WHERE domain = ? AND status = 'queued'"
        " RETURNING message_id", (now, domain))]
    only = "" if held_by is None else " AND held_by = ?"
    released = db.execute(
        "UPDATE recipients SET status = 'queued', released = 1, next_attempt = ?"
        f" WHERE domain = ? AND status = 'held'{only} RETURNING message_id, address",
        (now, domain) + (() if held_by is None else (held_by,))).fetchall()
    by_message: dict[str, list[str]] = {}
    for mid, address in released:
        by_message.setdefault(mid, []).append(address)
    journal.add(db, [journal.row(now, mid, "admin", {"action": "release", "by": by,
                                                     "recipients": addresses})
                     for mid, addresses in by_message.items()])
    return changed + [mid for mid, _ in released]


def _remove_if_finished(db: sqlite3.Connection, queue_id: str) -> bool:
    """Remove the message if every recipient is delivered or bounced (for the admin
    commands; the writer batches the same statement). True if it had a body file: the
    caller removes that after COMMIT."""
    removed = db.execute(_REMOVE_FINISHED, (json.dumps([queue_id]),) + FINAL).fetchall()
    return bool(removed and removed[0][1])


def queue_summary(db: sqlite3.Connection, log_dir: Path | None = None
                  ) -> tuple[dict[str, int], float | None]:
    """Recipients by state, and the arrival time of the oldest message with a recipient
    still waiting for delivery (None: nothing waits). Driven from the status index: the
    CROSS JOIN keeps SQLite from scanning the queued recipients once per message (it did,
    without statistics: minutes with 100,000 messages). ``log_dir``: the hand-off log's
    messages on (or waiting for) their first attempt count too, their recipients queued."""
    # The log first (see QueueReader.list), then the index in ONE read transaction (one WAL
    # snapshot): a message that moved into the index since the log was read is counted
    # there and only there, one that moves later from the log only. Each query in a
    # snapshot of its own counted a message on its way into the index twice.
    scanned = (qlog.scan(log_dir)[0] if log_dir is not None and log_dir.is_dir() else {})
    began = not db.in_transaction
    if began:
        db.execute("BEGIN")
    try:
        logged = {qid: qlog.split_message(payload) for qid, payload in scanned.items()
                  if not has_message(db, qid)}
        by_state = dict(db.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status"))
        (oldest,) = db.execute(
            "SELECT MIN(m.received_at) FROM recipients r CROSS JOIN messages m"
            " ON m.id = r.message_id WHERE r.status = 'queued'").fetchone()
    finally:
        if began:
            db.execute("COMMIT")
    if logged:
        for env, _ in logged.values():
            by_state["queued"] = by_state.get("queued", 0) + len(env["recipients"])
            oldest = env["received_at"] if oldest is None else min(oldest, env["received_at"])
    return by_state, oldest


def logged_messages(log_dir: Path, db: sqlite3.Connection
                    ) -> dict[str, tuple[dict[str, Any], bytes]]:
    """Hand-off: the messages in the log without a marker that the index ``db`` does not
    hold (on their first attempt, or waiting for it): queue id -> (envelope record, body).
    For the admin's views; reads the segments (page cache) each time."""
    found: dict[str, tuple[dict[str, Any], bytes]] = {}
    if log_dir.is_dir():
        for qid, payload in qlog.scan(log_dir)[0].items():
            if not has_message(db, qid):
                found[qid] = qlog.split_message(payload)
    return found


def logged_summary(queue_id: str, env: dict[str, Any], body: bytes) -> dict[str, Any]:
    """A hand-off message from the log as the admin's views list one (QueueReader, API)."""
    return {"id": queue_id, "received_at": env["received_at"], "listener": env["listener"],
            "client_ip": env["client_ip"], "sender": env["sender"], "size": len(body),
            "handoff": True,
            "recipients": [{"address": a, "status": "queued", "rule": rule, "reason": reason,
                            "attempts": 0, "next_attempt": env["received_at"],
                            "last_error": "", "remote_mta": "", "held_by": ""}
                           for a, _, rule, reason, _, _ in env["recipients"]]}


class QueueReader:
    """Read-only access for the CLI and the tests; safe while the relay runs (WAL).

    With hand-off (queue/log.py) a message on its first attempt is in the log, not in the
    index: it is listed, shown and counted from there (``"handoff": True``), its
    recipients ``queued``."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "queue.sqlite3"
        if not path.exists():
            raise FileNotFoundError(f"no queue at {path}")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self._bodies_dir = data_dir / "bodies"
        self._log_dir = qlog.directory(data_dir)
        self._logged: dict[str, tuple[dict[str, Any], bytes]] | None = None

    def close(self) -> None:
        self._db.close()

    def _in_log(self) -> dict[str, tuple[dict[str, Any], bytes]]:
        """The messages of the log without a marker that the index does not hold (read
        once per reader)."""
        if self._logged is None:
            self._logged = logged_messages(self._log_dir, self._db)
        return self._logged

    def _listed_from_log(self, status: str | None) -> list[dict]:
        if status not in (None, "queued"):
            return []
        out = []
        for qid, (env, body) in self._in_log().items():
            item = logged_summary(qid, env, body)
            # As the index's rows are listed here: address, status, rule, reason.
            item["recipients"] = [{k: r[k] for k in ("address", "status", "rule", "reason")}
                                  for r in item["recipients"]]
            out.append(item)
        return out

    def list(self, *, status: str | None = None, limit: int = 1000) -> list[dict]:
        """Up to ``limit`` messages (not recipients), oldest first, each with its recipients.

        The log first, then the index: a message only ever moves from the log into the
        index, so read in this order it is seen at least once (read the other way round,
        one that moved in between was in neither); seen in both, the index's row wins."""
        logged = self._listed_from_log(status)
        indexed = self._list_index(status=status, limit=limit)
        if not logged:
            return indexed
        ids = {m["id"] for m in indexed}
        both = sorted(indexed + [m for m in logged if m["id"] not in ids],
                      key=lambda m: (m["received_at"], m["id"]))
        return both[:limit]

    def _list_index(self, *, status: str | None, limit: int) -> builtins.list[dict]:
        where = ""
        args: tuple = ()
        if status is not None:
            where = " WHERE id IN (SELECT message_id FROM recipients WHERE status = ?)"
            args = (status,)
        sql = (
            "SELECT m.id, m.received_at, m.listener, m.client_ip, m.sender, m.size,"
            " r.address, r.status, r.rule, r.reason"
            f" FROM (SELECT * FROM messages{where} ORDER BY received_at, id LIMIT ?) m"
            " JOIN recipients r ON r.message_id = m.id"
            " ORDER BY m.received_at, m.id, r.idx"
        )
        rows: dict[str, dict] = {}
        for mid, at, listener, ip, sender, size, rcpt, st, rule, reason in self._db.execute(
            sql, args + (limit,)
        ):
            row = rows.setdefault(mid, {
                "id": mid, "received_at": at, "listener": listener, "client_ip": ip,
                "sender": sender, "size": size, "recipients": [],
            })
            row["recipients"].append({"address": rcpt, "status": st, "rule": rule, "reason": reason})
        return list(rows.values())

    def show(self, queue_id: str) -> dict | None:
        cur = self._db.execute(
            "SELECT id, received_at, listener, client_ip, client_name, helo, auth_user, sender,"
            " ret, envid, body_type, smtputf8, size FROM messages WHERE id = ?",
            (queue_id,),
        )
        row = cur.fetchone()
        if row is None:
            # Not in the index: in the log, or moved from there into the index since the
            # look above (then it is the index's; see list()).
            return self._show_from_log(queue_id) or (
                self.show(queue_id) if self._indexed(queue_id) else None)
        cols = [c[0] for c in cur.description]
        msg = dict(zip(cols, row))
        msg["smtputf8"] = bool(msg["smtputf8"])
        fields = ("address", "orcpt", "notify", "status", "rule", "reason", "attempts",
                  "next_attempt", "last_error", "remote_mta", "held_by")
        msg["recipients"] = [
            dict(zip(fields, r))
            for r in self._db.execute(
                f"SELECT {', '.join(fields)} FROM recipients WHERE message_id = ? ORDER BY idx",
                (queue_id,),
            )
        ]
        return msg

    def _show_from_log(self, queue_id: str) -> dict | None:
        found = self._in_log().get(queue_id)
        if found is None:
            return None
        env, body = found
        msg = {k: env[k] for k in ("received_at", "listener", "client_ip", "client_name",
                                   "helo", "auth_user", "sender", "ret", "envid",
                                   "body_type", "smtputf8")}
        msg = {"id": queue_id, **msg, "size": len(body), "handoff": True}
        msg["recipients"] = [
            {"address": a, "orcpt": orcpt, "notify": None if notify is None else ",".join(notify),
             "status": "queued", "rule": rule, "reason": reason, "attempts": 0,
             "next_attempt": env["received_at"], "last_error": "", "remote_mta": "",
             "held_by": ""}
            for a, _, rule, reason, orcpt, notify in env["recipients"]]
        return msg

    def _indexed(self, queue_id: str) -> bool:
        return has_message(self._db, queue_id)

    def body(self, queue_id: str) -> bytes | None:
        found = _body_bytes(self._db, self._bodies_dir, queue_id)
        if found is None and queue_id in self._in_log():
            return self._in_log()[queue_id][1]
        if found is None and self._indexed(queue_id):     # moved in since (see list())
            return _body_bytes(self._db, self._bodies_dir, queue_id)
        return found

    def count(self) -> int:
        """Messages in the queue. The log first (see list()); one that moved into the index
        since counts once."""
        logged = list(self._in_log())
        (n,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        if logged:
            (moved,) = self._db.execute("SELECT COUNT(*) FROM messages WHERE id IN"
                                        " (SELECT value FROM json_each(?))",
                                        (json.dumps(logged),)).fetchone()
            n += len(logged) - moved
        return n
