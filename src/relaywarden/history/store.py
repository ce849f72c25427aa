"""The message history: a searchable record of every message that outlives the queue.

It is an index of the queue's journal (relaywarden.queue.journal), kept in its own SQLite
file (``history.sqlite3`` in the data directory) by the admin process. It may lag the queue
by a moment; after a crash it catches up from the journal, which the queue trims only
behind the history's durable cursors (``meta.cursor`` for the journal's SQLite table,
``meta.files`` for its files, each committed in the same transaction as the entries it
covers).

Each message has one row (what arrived, and a status summed up from its recipients), each
recipient one row (its latest state), and each journal entry one event (the timeline).
Searches are keyset-paginated, newest first, and each filter has an index that leads with
it and ends with the arrival time, so a page costs the same over a million records as
over a hundred.
"""

from __future__ import annotations

import email.errors
import email.header
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relaywarden.queue import compact
from relaywarden.queue.journal import START, JournalEntry, Position

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    queue_id      TEXT PRIMARY KEY,
    received_at   REAL NOT NULL,
    listener      TEXT NOT NULL DEFAULT '',
    client_ip     TEXT NOT NULL DEFAULT '',
    client_name   TEXT,
    helo          TEXT NOT NULL DEFAULT '',
    tls           TEXT,
    auth_user     TEXT,
    sender        TEXT NOT NULL DEFAULT '',
    sender_lc     TEXT NOT NULL DEFAULT '',     -- lower-case, for search
    sender_domain TEXT NOT NULL DEFAULT '',
    size          INTEGER NOT NULL DEFAULT 0,
    message_id    TEXT,                          -- without <>
    subject       TEXT,                          -- RFC 2047 decoded
    status        TEXT NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS m_received ON messages(received_at, queue_id);
CREATE INDEX IF NOT EXISTS m_sender ON messages(sender_lc, received_at);
CREATE INDEX IF NOT EXISTS m_sender_domain ON messages(sender_domain, received_at);
CREATE INDEX IF NOT EXISTS m_client ON messages(client_ip, received_at);
CREATE INDEX IF NOT EXISTS m_message_id ON messages(message_id);
CREATE INDEX IF NOT EXISTS m_status ON messages(status, received_at);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id    TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    address     TEXT NOT NULL,
    address_lc  TEXT NOT NULL,
    domain      TEXT NOT NULL,
    received_at REAL NOT NULL,                   -- the message's, for ordered search
    status      TEXT NOT NULL,   -- queued | deferred | held | delivered | bounced | badmail | deleted
    rule        TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    last_reply  TEXT NOT NULL DEFAULT '',
    remote      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (queue_id, idx)
);
CREATE INDEX IF NOT EXISTS r_address ON recipients(address_lc, received_at);
CREATE INDEX IF NOT EXISTS r_domain ON recipients(domain, received_at);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,               -- the order the history indexed them in
    queue_id  TEXT NOT NULL,
    at        REAL NOT NULL,
    kind      TEXT NOT NULL,                     -- received | attempt | admin
    recipient TEXT NOT NULL DEFAULT '',
    data      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS e_message ON events(queue_id, seq);
"""

STATUSES = ("queued", "held", "delivered", "deferred", "bounced", "badmail", "deleted")

#: What an admin action makes of the recipients it names.
_ADMIN_STATUS = {"hold": "held", "release": "queued", "badmail-release": "queued",
                 "delete": "deleted", "delete-dsn": "deleted", "badmail-delete": "deleted"}
_OPEN = ("queued", "deferred", "held", "badmail")


# A message's status from its recipients' (message_status, in one statement for a batch):
# the highest-ranked state wins; no recipient at all: queued.
_RANK = ("badmail", "held", "deferred", "queued", "bounced", "deleted", "delivered")
_UPDATE_STATUS = (
    "UPDATE messages SET updated_at = ?, status = (SELECT CASE MAX(CASE r.status "
    + " ".join(f"WHEN '{s}' THEN {len(_RANK) - i}" for i, s in enumerate(_RANK[:-1]))
    + " ELSE 1 END) "
    + " ".join(f"WHEN {len(_RANK) - i} THEN '{s}'" for i, s in enumerate(_RANK))
    + " ELSE 'queued' END FROM recipients r WHERE r.queue_id = messages.queue_id)"
    " WHERE queue_id IN (SELECT value FROM json_each(?))")



_MESSAGE_COLUMNS = ("queue_id, received_at, listener, client_ip, client_name, helo, tls,"
                    " auth_user, sender, sender_lc, sender_domain, size, message_id, subject,"
                    " status, updated_at")
#: The outcomes that leave a held recipient held (queue/store.py _UPDATE_OUTCOMES; here for
#: _whole and History._apply_attempt): an admin hold wins over an outcome that would have
#: it wait on.
_STAYS_HELD = ("deferred", "held", "queued")


def _whole(entries: list[JournalEntry]) -> dict[str, list[list[str]]]:
    """The messages whose entries in ``entries`` are their arrival and then attempts only,
    each attempt naming one of its recipients: queue id -> each recipient's [status,
    last reply, remote] once those attempts are applied in order (as _apply_attempt
    would). Anything else (an admin action, a malformed entry, attempts of a message
    that arrived in an earlier batch) goes entry by entry."""
    by_id: dict[str, list[JournalEntry]] = {}
    for e in entries:
        by_id.setdefault(e.queue_id, []).append(e)
    whole: dict[str, list[list[str]]] = {}
    for qid, mine in by_id.items():
        first = mine[0]
        if len(mine) < 2 or first.kind != "received":
            continue
        listed = first.data.get("recipients")
        if not isinstance(listed, list) or not all(
                isinstance(r, list) and len(r) == 4 and isinstance(r[0], str)
                and isinstance(r[1], str) for r in listed):
            continue
        final = [[r[1], "", ""] for r in listed]
        for a in mine[1:]:
            idx = a.data.get("idx")
            if a.kind != "attempt" or type(idx) is not int or not 0 <= idx < len(final):
                break
            state = final[idx]
            outcome = a.data.get("outcome") or "deferred"
            state[0] = "held" if state[0] == "held" and outcome in _STAYS_HELD else outcome
            state[1] = a.data.get("reply") or ""
            state[2] = a.data.get("remote") or ""
        else:
            whole[qid] = final
    return whole


def _addresses(recipients: list) -> str:
    """A ``received`` entry's recipients as its event names them."""
    return ",".join(r[0] for r in recipients)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite ends some transactions itself when
    a write fails (SQLITE_FULL, SQLITE_IOERR: "the transaction is rolled back
    automatically", sqlite.org/lang_transaction.html), and a ROLLBACK then fails with "no
    transaction is active", an error that would hide the real one."""
    if db.in_transaction:
        db.execute("ROLLBACK")

class HistoryError(ValueError):
    """A search filter that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def message_status(statuses: Iterable[str]) -> str:
    """One word for a message from its recipients' states: what still needs someone's
    attention first, then how it ended."""
    found = set(statuses)
    for status in ("badmail", "held", "deferred", "queued", "bounced", "deleted"):
        if status in found:
            return status
    return "delivered" if found else "queued"


def _decode(value: str | None) -> str | None:
    """RFC 2047 encoded words of a Subject, decoded for display and search."""
    if not value or "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def _msgid(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip() or None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def parse_since(text: str, now: float | None = None) -> float:
    """"2h", "30m", "7d", "90s", or an epoch number, or an ISO date/time (UTC)."""
    now = time.time() if now is None else now
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (2h, 30m, 7d), an epoch time or an "
                         "ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _cursor(received_at: float, queue_id: str) -> str:
    return f"{received_at!r}_{queue_id}"


def _parse_cursor(text: str) -> tuple[float, str]:
    at, sep, qid = text.partition("_")
    try:
        if not sep or not qid:
            raise ValueError
        return float(at), qid
    except ValueError:
        raise HistoryError("before", "not a cursor from a previous page's 'next'") from None


_SUMMARY = ("queue_id", "received_at", "sender", "size", "subject", "message_id", "client_ip",
            "listener", "status")


class History:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise FileNotFoundError(f"no history at {path}")
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                       check_same_thread=False)
        else:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the journal is trimmed behind the cursor committed here, so the
            # history's commit must be on disk first (it runs in the admin process, in
            # batches, never on the SMTP path).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def open(cls, data_dir: Path, *, readonly: bool = False) -> "History":
        return cls(data_dir / "history.sqlite3", readonly=readonly)

    def close(self) -> None:
        self._db.close()

    # -- the indexer's side ----------------------------------------------------------------

    def cursor(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return int(row[0]) if row else 0

    def apply(self, entries: list[JournalEntry]) -> int:
        """Index entries of the journal's table (in seq order) and move the cursor past
        them, in one transaction. Returns the new cursor."""
        if not entries:
            return self.cursor()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._cursor_in_tx()    # another indexer may have gone ahead
            self._index(db, [e for e in entries if e.seq > cursor])
            last = entries[-1].seq
            db.execute("INSERT INTO meta (key, value) VALUES ('cursor', ?) ON CONFLICT(key)"
                       " DO UPDATE SET value = excluded.value WHERE CAST(value AS INTEGER) < ?",
                       (str(last), last))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return self.cursor()

    def files_position(self) -> Position:
        """Where the indexer stands in the journal's files (queue.journal.read_files)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'files'").fetchone()
        if row is None:
            return START
        name, _, offset = row[0].partition("\t")
        return name, int(offset)

    def apply_files(self, entries: list[JournalEntry], after: Position, to: Position) -> bool:
        """Index entries read from the journal's files at ``after`` and move the position
        to ``to``, in one transaction. False (nothing done) if the history is no longer at
        ``after``: another indexer took them."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.files_position() != after:
                db.execute("ROLLBACK")
                return False
            self._index(db, entries)
            db.execute("INSERT INTO meta (key, value) VALUES ('files', ?) ON CONFLICT(key)"
                       " DO UPDATE SET value = excluded.value", (f"{to[0]}\t{to[1]}",))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return True

    def _index(self, db: sqlite3.Connection, entries: list[JournalEntry]) -> None:
        """Inside the caller's transaction: the entries' effects on messages and
        recipients, their events, and the touched messages' status.

        A message whose arrival and attempts are all in this batch (a message finished on
        its first attempt: the delivering process writes them together) is inserted as it
        ended, its rows built here (``_whole``), in one multi-row insert for the batch: no
        insert, update and status statement per entry. The same rows as entry by entry
        (tests/history/test_history_store.py compares them); the history indexer's CPU
        per message was ~10% of the relay's (issue 15)."""
        now = time.time()
        whole = _whole(entries)
        touched: set[str] = set()
        events: list[tuple] = []
        rows = self._whole_rows(entries, whole, now) if whole else None
        if rows is not None and not self._insert_whole(db, *rows):
            whole = {}                  # rows already there: entry by entry, as any other
        for e in entries:
            if e.queue_id in whole:
                recipient = (_addresses(e.data["recipients"]) if e.kind == "received"
                             else e.data.get("to") or "")
            else:
                recipient = getattr(self, f"_apply_{e.kind}", self._apply_other)(db, e)
                touched.add(e.queue_id)
            events.append((e.queue_id, e.at, e.kind, recipient,
                           e.text if e.text is not None else compact.dumps(e.data)))
        # seq: the history's own order. The journal's seq cannot be it: the entries from its
        # files have none, and the cursors (not the key) keep an entry from being indexed twice.
        db.executemany("INSERT INTO events (queue_id, at, kind, recipient, data)"
                       " VALUES (?, ?, ?, ?, ?)", events)
        if touched:
            db.execute(_UPDATE_STATUS, (now, json.dumps(list(touched))))

    def _whole_rows(self, entries: list[JournalEntry], whole: dict[str, list[list[str]]],
                    now: float) -> tuple[list[tuple], list[tuple]]:
        """The messages and recipients rows of the batch's whole messages (see _index)."""
        messages: list[tuple] = []
        recipients: list[tuple] = []
        for e in entries:
            final = whole.get(e.queue_id)
            if final is None or e.kind != "received":
                continue
            qid, at, d = e.queue_id, e.at, e.data
            messages.append(self._message_row(e, message_status(f[0] for f in final), now))
            recipients.extend(
                (qid, idx, address, address.lower(), _domain(address), at, status, rule,
                 reason, last_reply, remote)
                for idx, ((address, _, rule, reason), (status, last_reply, remote))
                in enumerate(zip(d["recipients"], final)))
        return messages, recipients

    @staticmethod
    def _message_row(e: JournalEntry, status: str, updated_at: float) -> tuple:
        d = e.data
        sender = d.get("sender") or ""
        return (e.queue_id, e.at, d.get("listener") or "", d.get("client_ip") or "",
                d.get("client_name"), d.get("helo") or "", d.get("tls"), d.get("auth_user"),
                sender, sender.lower(), _domain(sender) if sender else "", d.get("size") or 0,
                _msgid(d.get("message_id")), _decode(d.get("subject")), status, updated_at)

    @staticmethod
    def _insert_whole(db: sqlite3.Connection, messages: list[tuple],
                      recipients: list[tuple]) -> bool:
        """Insert the whole messages' rows; False (nothing inserted) if one of them is in
        the history already (never expected: the cursors index an entry once)."""
        db.execute("SAVEPOINT whole")
        try:
            db.executemany(f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES"
                           " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", messages)
            db.executemany("INSERT INTO recipients (queue_id, idx, address, address_lc,"
                           " domain, received_at, status, rule, reason, last_reply, remote)"
                           " VALUES (?,?,?,?,?,?,?,?,?,?,?)", recipients)
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO whole")
            db.execute("RELEASE whole")
            return False
        db.execute("RELEASE whole")
        return True

    def _cursor_in_tx(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return int(row[0]) if row else 0

    def _apply_received(self, db: sqlite3.Connection, e: JournalEntry) -> str:
        recipients = e.data.get("recipients") or []
        db.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(queue_id) DO UPDATE SET received_at = excluded.received_at,"
            " listener = excluded.listener, client_ip = excluded.client_ip,"
            " client_name = excluded.client_name, helo = excluded.helo, tls = excluded.tls,"
            " auth_user = excluded.auth_user, sender = excluded.sender,"
            " sender_lc = excluded.sender_lc, sender_domain = excluded.sender_domain,"
            " size = excluded.size, message_id = excluded.message_id,"
            " subject = excluded.subject", self._message_row(e, "queued", e.at))
        db.executemany(
            "INSERT INTO recipients (queue_id, idx, address, address_lc, domain,"
            " received_at, status, rule, reason) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(queue_id, idx) DO UPDATE SET received_at = excluded.received_at,"
            " rule = excluded.rule, reason = excluded.reason",
            [(e.queue_id, idx, address, address.lower(), _domain(address), e.at, status,
              rule, reason) for idx, (address, status, rule, reason) in enumerate(recipients)])
        return _addresses(recipients)

    def _stub(self, db: sqlite3.Connection, e: JournalEntry) -> float:
        """A message the history never saw arrive (its journal entry was trimmed before a
        history file was made): a row with what is known, so its timeline still shows."""
        row = db.execute("SELECT received_at FROM messages WHERE queue_id = ?",
                         (e.queue_id,)).fetchone()
        if row is not None:
            return row[0]
        db.execute("INSERT INTO messages (queue_id, received_at, status, updated_at)"
                   " VALUES (?, ?, 'queued', ?)", (e.queue_id, e.at, e.at))
        return e.at

    def _apply_attempt(self, db: sqlite3.Connection, e: JournalEntry) -> str:
        d = e.data
        address = d.get("to") or ""
        idx = d.get("idx")
        outcome, reply, remote = d.get("outcome") or "deferred", d.get("reply") or "", d.get("remote") or ""
        # The queue's rule (queue/store.py _UPDATE_OUTCOMES): an admin hold that came while
        # the attempt was under way wins over an outcome that would have it wait on. Only
        # an admin hold can be there: a held recipient is never attempted, and the hold's
        # entry is before the attempt's in the journal (it committed first).
        if db.execute("UPDATE recipients SET status = CASE WHEN status = 'held' AND ?"
                      " THEN 'held' ELSE ? END,"
                      " last_reply = ?, remote = ? WHERE queue_id = ? AND idx = ?",
                      (outcome in _STAYS_HELD, outcome, reply, remote, e.queue_id,
                       idx)).rowcount:
            return address      # the common case: its arrival was indexed
        received_at = self._stub(db, e)
        db.execute(
            "INSERT INTO recipients (queue_id, idx, address, address_lc, domain, received_at,"
            " status, last_reply, remote) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(queue_id, idx) DO UPDATE SET status = excluded.status,"
            " last_reply = excluded.last_reply, remote = excluded.remote",
            (e.queue_id, idx, address, address.lower(), _domain(address), received_at,
             outcome, reply, remote))
        return address

    def _apply_admin(self, db: sqlite3.Connection, e: JournalEntry) -> str:
        d = e.data
        self._stub(db, e)
        status = _ADMIN_STATUS.get(d.get("action") or "")
        # The recipients the action changed (all of them still waiting: "-"); an action
        # only ever changes waiting ones.
        named = [a for a in d.get("recipients") or [] if a != "-"]
        if status is not None:
            only = f" AND address IN ({','.join('?' * len(named))})" if named else ""
            db.execute(f"UPDATE recipients SET status = ? WHERE queue_id = ? AND status IN"
                       f" ({','.join('?' * len(_OPEN))}){only}",
                       (status, e.queue_id, *_OPEN, *named))
        return ",".join(named)

    def _apply_other(self, db: sqlite3.Connection, e: JournalEntry) -> str:
        self._stub(db, e)
        return ""

    def seed(self, messages: list[tuple], recipients: list[tuple]) -> int:
        """Record queued messages from the queue's own rows (see indexer.seed_from_queue):
        messages (id, received_at, listener, client_ip, client_name, helo, auth_user, sender,
        size); recipients (message_id, idx, address, status, rule, reason, last_error,
        remote_mta, attempts). Rows already known are left as they are."""
        db = self._db
        at: dict[str, float] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for qid, received, listener, ip, name, helo, user, sender, size in messages:
                at[qid] = received
                db.execute(
                    "INSERT OR IGNORE INTO messages (queue_id, received_at, listener, client_ip,"
                    " client_name, helo, auth_user, sender, sender_lc, sender_domain, size,"
                    " status, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,'queued',?)",
                    (qid, received, listener, ip, name, helo, user, sender, sender.lower(),
                     _domain(sender) if sender else "", size, received))
            for qid, idx, address, status, rule, reason, error, remote, attempts in recipients:
                if status == "queued" and attempts:
                    status = "deferred"
                db.execute(
                    "INSERT OR IGNORE INTO recipients (queue_id, idx, address, address_lc,"
                    " domain, received_at, status, rule, reason, last_reply, remote)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (qid, idx, address, address.lower(), _domain(address), at.get(qid, 0.0),
                     status, rule, reason, error, remote))
            for qid in at:
                status = message_status(s for (s,) in db.execute(
                    "SELECT status FROM recipients WHERE queue_id = ?", (qid,)))
                db.execute("UPDATE messages SET status = ? WHERE queue_id = ?", (status, qid))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return len(messages)

    def prune(self, older_than: float, batch: int = 5000) -> int:
        """Remove messages that arrived before ``older_than`` and are finished (nothing of
        them waits in the queue any more), in batches (each a short transaction)."""
        total = 0
        db = self._db
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [q for (q,) in db.execute(
                    "SELECT queue_id FROM messages WHERE received_at < ? AND status IN"
                    " ('delivered', 'bounced', 'deleted') ORDER BY received_at LIMIT ?",
                    (older_than, batch))]
                if ids:
                    marks = ",".join("?" * len(ids))
                    for table in ("events", "recipients", "messages"):
                        db.execute(f"DELETE FROM {table} WHERE queue_id IN ({marks})", ids)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            total += len(ids)
            if len(ids) < batch:
                return total

    # -- readers ---------------------------------------------------------------------------

    def search(self, *, queue_id: str | None = None, message_id: str | None = None,
               sender: str | None = None, recipient: str | None = None,
               client: str | None = None, status: str | None = None,
               since: float | None = None, until: float | None = None,
               limit: int = 50, before: str | None = None) -> tuple[list[dict], str | None]:
        """Messages matching every filter given, newest first; and the cursor of the next
        page (pass it as ``before``), or None on the last page."""
        if not 1 <= limit <= 1000:
            raise HistoryError("limit", "must be between 1 and 1000")
        if status is not None and status not in STATUSES:
            raise HistoryError("status", f"one of {', '.join(STATUSES)}")
        where: list[str] = []
        args: list[Any] = []
        source = "messages m"
        order = "m.received_at DESC, m.queue_id DESC"
        at = "m.received_at"
        if recipient:
            text = recipient.strip().lower()
            # A recipient search drives from the recipients index (a common domain may
            # have most of the history): joined back to the message, deduplicated below.
            source = "recipients r JOIN messages m ON m.queue_id = r.queue_id"
            order = "r.received_at DESC, r.queue_id DESC"
            at = "r.received_at"
            if "@" in text.lstrip("@"):
                where.append("r.address_lc = ?")
            else:
                where.append("r.domain = ?")
                text = text.lstrip("@")
            args.append(text)
        if queue_id:
            where.append("m.queue_id = ?")
            args.append(queue_id.strip())
        if message_id:
            where.append("m.message_id = ?")
            args.append(_msgid(message_id))
        if sender is not None and sender != "":
            text = sender.strip().lower()
            if text in ("<>", "null"):
                where.append("m.sender = ''")
            elif "@" in text.lstrip("@"):
                where.append("m.sender_lc = ?")
                args.append(text.strip("<>"))
            else:
                where.append("m.sender_domain = ?")
                args.append(text.lstrip("@"))
        if client:
            where.append("m.client_ip = ?")
            args.append(client.strip())
        if status:
            where.append("m.status = ?")
            args.append(status)
        if since is not None:
            where.append(f"{at} >= ?")
            args.append(since)
        if until is not None:
            where.append(f"{at} < ?")
            args.append(until)
        if before:
            b_at, b_qid = _parse_cursor(before)
            qcol = "r.queue_id" if recipient else "m.queue_id"
            where.append(f"({at}, {qcol}) < (?, ?)")
            args += [b_at, b_qid]
        sql = (f"SELECT {', '.join('m.' + c for c in _SUMMARY)} FROM {source}"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY {order} LIMIT ?")
        items: list[dict] = []
        seen: set[str] = set()
        cur = self._db.execute(sql, args + [limit * 4 + 1 if recipient else limit + 1])
        more = False
        for row in cur:
            item = dict(zip(_SUMMARY, row))
            if item["queue_id"] in seen:
                continue
            if len(items) == limit:
                more = True
                break
            seen.add(item["queue_id"])
            items.append(item)
        if recipient and not more and len(items) == limit:
            more = True   # maybe: a further page will say
        self._add_recipients(items)
        nxt = _cursor(items[-1]["received_at"], items[-1]["queue_id"]) if more and items else None
        return items, nxt

    def _add_recipients(self, items: list[dict]) -> None:
        if not items:
            return
        ids = [i["queue_id"] for i in items]
        by_id: dict[str, list[dict]] = {q: [] for q in ids}
        for qid, address, status in self._db.execute(
                f"SELECT queue_id, address, status FROM recipients WHERE queue_id IN"
                f" ({','.join('?' * len(ids))}) ORDER BY queue_id, idx", ids):
            by_id[qid].append({"address": address, "status": status})
        for item in items:
            item["recipients"] = by_id[item["queue_id"]]

    def timeline(self, queue_id: str) -> dict | None:
        cols = ("queue_id", "received_at", "listener", "client_ip", "client_name", "helo", "tls",
                "auth_user", "sender", "size", "message_id", "subject", "status", "updated_at")
        row = self._db.execute(f"SELECT {', '.join(cols)} FROM messages WHERE queue_id = ?",
                               (queue_id,)).fetchone()
        if row is None:
            return None
        out = dict(zip(cols, row))
        rcols = ("idx", "address", "status", "rule", "reason", "last_reply", "remote")
        out["recipients"] = [dict(zip(rcols, r)) for r in self._db.execute(
            f"SELECT {', '.join(rcols)} FROM recipients WHERE queue_id = ? ORDER BY idx",
            (queue_id,))]
        out["events"] = [
            {"seq": seq, "at": at, "kind": kind, "recipient": recipient, "data": json.loads(data)}
            for seq, at, kind, recipient, data in self._db.execute(
                "SELECT seq, at, kind, recipient, data FROM events WHERE queue_id = ?"
                " ORDER BY seq", (queue_id,))]
        return out

    def events_after(self, seq: int, limit: int = 200) -> list[dict]:
        return [{"seq": s, "queue_id": q, "at": at, "kind": k, "recipient": r,
                 "data": json.loads(d)}
                for s, q, at, k, r, d in self._db.execute(
                    "SELECT seq, queue_id, at, kind, recipient, data FROM events WHERE seq > ?"
                    " ORDER BY seq LIMIT ?", (seq, limit))]

    def count(self) -> int:
        (n,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return n
