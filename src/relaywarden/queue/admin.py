"""Queue and badmail commands, run by `relaywarden queue ...` / `relaywarden badmail ...`
against the data directory of a running (or stopped) relay.

They write to the same SQLite file as the relay (WAL allows it; writers wait for each
other); the relay's scheduler sees the change at its next look, within a second.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relaywarden.queue import journal
from relaywarden.queue import log as qlog
from relaywarden.queue.store import (
    HANDOFF_GRACE_SECONDS,
    Envelope,
    RecipientRecord,
    RecipientStatus,
    _body,
    _remove_if_finished,
    _Rows,
    _unlink,
    has_message,
    logged_messages,
    new_queue_id,
    start_domain,
)
from relaywarden.queue.spool import BodySpool

#: Recipient states an admin action can still change (delivered/bounced ones are history).
_OPEN = ("queued", "held", "badmail")
#: How long an action on a message on its first attempt from the hand-off log waits for the
#: delivery process to put it into the index (it does after HANDOFF_GRACE_SECONDS).
HANDOFF_WAIT_SECONDS = HANDOFF_GRACE_SECONDS + 4.0


class OnFirstAttempt(Exception):
    """The message is on its first attempt from the hand-off log and the delivery process
    did not put it into the index in time (it is not running, or cannot write)."""


def _journal(db: sqlite3.Connection, queue_id: str, action: str, by: str,
             addresses: list[str], **extra: object) -> None:
    """Every admin action is journaled with who did it, in its own transaction."""
    if addresses:
        journal.add(db, [journal.row(time.time(), queue_id, "admin",
                                     {"action": action, "by": by, "recipients": addresses,
                                      **extra})])


class QueueAdmin:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "queue.sqlite3"
        if not path.exists():
            raise FileNotFoundError(f"no queue at {path}")
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._bodies_dir = data_dir / "bodies"
        self._tmp_dir = data_dir / "tmp"
        self._log_dir = qlog.directory(data_dir)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._db)
        except BaseException:
            if self._db.in_transaction:   # SQLite ends a failed write's transaction itself
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def exists(self, queue_id: str, *, wait: float = HANDOFF_WAIT_SECONDS) -> bool:
        """Whether the queue holds the message, so that an action can change it.

        With hand-off (queue/log.py) a message on its first attempt is in the log, not in
        the index, and only its delivery process knows how that attempt goes. Once the
        attempt has lasted HANDOFF_GRACE_SECONDS that process puts the message into the
        index, leased by the attempt; this waits for that, or for the attempt to end (False
        if it finished the message: delivered or bounced). OnFirstAttempt: neither within
        ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            if has_message(self._db, queue_id):
                return True
            if queue_id not in logged_messages(self._log_dir, self._db):
                # Finished, unless the index took it between the two looks.
                return has_message(self._db, queue_id)
            if time.monotonic() >= deadline:
                raise OnFirstAttempt(
                    f"{queue_id} is on its first attempt (hand-off) and the delivery process"
                    f" has not put it into the queue's index within {wait:.0f} s; try again")
            time.sleep(0.05)

    def flush(self, *, domain: str | None = None, by: str = "") -> int:
        """Every queued recipient (of one domain) is due now; with a domain, held ones too
        (like ETRN: the admin asks for that domain's mail to go out now). Returns how many
        are due now: not those an attempt under way holds (see `leased`), whose next
        attempt that attempt's outcome decides."""
        now = time.time()
        def apply(db):
            if domain is None:
                return db.execute(
                    "UPDATE recipients SET next_attempt = ? WHERE status = 'queued'"
                    " AND lease_until <= ?", (now, now)).rowcount
            name = domain.lower().rstrip(".")
            (busy,) = db.execute(
                "SELECT COUNT(*) FROM recipients WHERE domain = ? AND status = 'queued'"
                " AND lease_until > ?", (name, now)).fetchone()
            return len(start_domain(db, name, now, by=by)) - busy
        return self._tx(apply)

    def leased(self, *, queue_id: str | None = None, domain: str | None = None,
               limit: int = 100) -> list[tuple[str, str, float]]:
        """Queued recipients that an attempt under way holds, (queue id, address, lease
        end), soonest end first: a flush or retry cannot make them due before that attempt
        ends (its outcome sets the next attempt). The scheduler renews the lease while the
        attempt lasts (delivery.engine.LEASE_SECONDS); it is free when the attempt ends."""
        where, args = "", tuple[str, ...]()
        if queue_id is not None:
            where, args = " AND message_id = ?", (queue_id,)
        elif domain is not None:
            where, args = " AND domain = ?", (domain.lower().rstrip("."),)
        return self._db.execute(
            "SELECT message_id, address, lease_until FROM recipients WHERE status = 'queued'"
            f" AND lease_until > ?{where} ORDER BY lease_until, message_id, idx LIMIT ?",
            (time.time(),) + args + (limit,)).fetchall()

    def _change(self, queue_id: str, action: str, by: str, sql: str, args: tuple) -> int:
        def apply(db):
            changed = [a for (a,) in db.execute(sql + " RETURNING address", args)]
            _journal(db, queue_id, action, by, changed)
            return len(changed)
        return self._tx(apply)

    def retry(self, queue_id: str, *, by: str = "") -> int:
        """Its queued recipients are due now, but not those an attempt under way holds
        (`leased`)."""
        now = time.time()
        return self._change(queue_id, "retry", by,
                            "UPDATE recipients SET next_attempt = ? WHERE message_id = ?"
                            " AND status = 'queued' AND lease_until <= ?", (now, queue_id, now))

    def hold(self, queue_id: str, *, by: str = "") -> int:
        return self._change(queue_id, "hold", by,
                            "UPDATE recipients SET status = 'held', held_by = 'admin'"
                            " WHERE message_id = ? AND status = 'queued'", (queue_id,))

    def release(self, queue_id: str, *, by: str = "") -> int:
        return self._change(queue_id, "release", by,
                            "UPDATE recipients SET status = 'queued', released = 1,"
                            " next_attempt = ? WHERE message_id = ? AND status = 'held'",
                            (time.time(), queue_id))

    def delete(self, queue_id: str, *, by: str = "") -> int:
        def apply(db):
            addresses = [a for (a,) in db.execute(
                "SELECT address FROM recipients WHERE message_id = ? AND status IN"
                " (?, ?, ?) ORDER BY idx", (queue_id,) + _OPEN)]
            rows = db.execute("DELETE FROM messages WHERE id = ? RETURNING body_file",
                              (queue_id,)).fetchall()
            if rows:
                _journal(db, queue_id, "delete", by, addresses or ["-"])
            return rows
        rows = self._tx(apply)
        if rows and rows[0][0]:
            self._remove_body_file(queue_id)
        return len(rows)

    def delete_with_dsn(self, queue_id: str, *, by: str, reporting_mta: str) -> tuple[int, str | None]:
        """Delete a message and tell its sender with a DSN (RFC 3464, Action: failed,
        status 5.3.0 "deleted by the administrator") for each recipient still waiting.
        Returns (recipients deleted, the DSN's queue id or None: a null sender gets none,
        RFC 5321 4.5.5)."""
        from relaywarden.delivery.dsn import DsnAction, DsnRecipient, build_dsn

        def apply(db):
            msg = db.execute("SELECT sender, ret, envid, received_at FROM messages WHERE id = ?",
                             (queue_id,)).fetchone()
            if msg is None:
                return 0, None, False
            sender, ret, envid, arrival = msg
            waiting = db.execute(
                "SELECT address, orcpt FROM recipients WHERE message_id = ? AND status IN"
                " (?, ?, ?) ORDER BY idx", (queue_id,) + _OPEN).fetchall()
            dsn_id = None
            if sender and waiting:
                now = time.time()
                original = _body(db, self._bodies_dir, queue_id) or b""
                data = build_dsn(
                    reporting_mta=reporting_mta, sender=sender, original=original, ret=ret,
                    envid=envid, arrival=arrival, now=now,
                    recipients=[DsnRecipient(final=a, original=o, action=DsnAction.FAILED,
                                             status="5.3.0",
                                             diagnostic=f"X-relaywarden; deleted by the "
                                             f"administrator ({by or 'unknown'})",
                                             last_attempt=now) for a, o in waiting])
                dsn_id = new_queue_id()
                spool = BodySpool(self._tmp_dir)
                spool.write(data)
                if not spool.in_memory:
                    spool.persist(self._bodies_dir / dsn_id)
                rows = _Rows()
                rows.add_message(Envelope(
                    queue_id=dsn_id, received_at=now, listener="-", client_ip="127.0.0.1",
                    client_name=None, helo=reporting_mta, auth_user=None, sender="",
                    recipients=(RecipientRecord(address=sender, status=RecipientStatus.QUEUED,
                                                rule="dsn", reason=f"DSN for {queue_id}"),),
                ), spool)
                rows.write(db)
                spool.discard()
            gone = db.execute("DELETE FROM messages WHERE id = ? RETURNING body_file",
                              (queue_id,)).fetchall()
            _journal(db, queue_id, "delete-dsn", by, [a for a, _ in waiting] or ["-"],
                     dsn_id=dsn_id)
            return len(waiting), dsn_id, bool(gone and gone[0][0])
        n, dsn_id, had_file = self._tx(apply)
        if had_file:
            self._remove_body_file(queue_id)
        return n, dsn_id

    def _remove_body_file(self, queue_id: str) -> None:
        """After the COMMIT that removed its message (a crash in between leaves a file
        the relay's start-up removes)."""
        _unlink(self._bodies_dir / queue_id)

    # -- badmail ---------------------------------------------------------------------------

    def badmail_release(self, queue_id: str, *, by: str) -> list[str]:
        """Send the quarantined recipients on as if the policy had allowed them."""
        def apply(db):
            rows = db.execute("SELECT idx, address FROM recipients WHERE message_id = ?"
                              " AND status = 'badmail'", (queue_id,)).fetchall()
            db.executemany(
                "UPDATE recipients SET status = 'queued', next_attempt = ?, attempts = 0,"
                " rule = ?, reason = ? WHERE message_id = ? AND idx = ?",
                [(time.time(), "badmail.release", f"released by {by}", queue_id, idx)
                 for idx, _ in rows])
            released = [address for _, address in rows]
            _journal(db, queue_id, "badmail-release", by, released)
            return released
        return self._tx(apply)

    def badmail_delete(self, queue_id: str, *, by: str = "") -> list[str]:
        def apply(db):
            rows = db.execute("SELECT idx, address FROM recipients WHERE message_id = ?"
                              " AND status = 'badmail'", (queue_id,)).fetchall()
            # Deleted badmail recipients count as finished ("bounced" by the admin, no DSN).
            db.execute("UPDATE recipients SET status = 'bounced', reason = 'deleted from badmail'"
                       " WHERE message_id = ? AND status = 'badmail'", (queue_id,))
            deleted = [address for _, address in rows]
            _journal(db, queue_id, "badmail-delete", by, deleted)
            gone_file = _remove_if_finished(db, queue_id)
            return deleted, gone_file
        deleted, gone_file = self._tx(apply)
        if gone_file:
            self._remove_body_file(queue_id)
        return deleted
