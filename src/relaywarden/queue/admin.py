"""Queue and badmail commands, run by `relaywarden queue ...` / `relaywarden badmail ...`
against the data directory of a running (or stopped) relay.

They write to the same SQLite file as the relay (WAL allows it; writers wait for each
other); the relay's scheduler sees the change at its next look, within a second.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relaywarden.queue.store import _remove_if_finished, _unlink, start_domain


class QueueAdmin:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "queue.sqlite3"
        if not path.exists():
            raise FileNotFoundError(f"no queue at {path}")
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._bodies_dir = data_dir / "bodies"
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def exists(self, queue_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is not None

    def flush(self, *, domain: str | None = None) -> int:
        """Every queued recipient (of one domain) is due now; with a domain, held ones too
        (like ETRN: the admin asks for that domain's mail to go out now)."""
        now = time.time()
        def apply(db):
            if domain is None:
                return db.execute(
                    "UPDATE recipients SET next_attempt = ? WHERE status = 'queued'", (now,)).rowcount
            return len(start_domain(db, domain.lower().rstrip("."), now))
        return self._tx(apply)

    def retry(self, queue_id: str) -> int:
        return self._tx(lambda db: db.execute(
            "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND status = 'queued'",
            (time.time(), queue_id)).rowcount)

    def hold(self, queue_id: str) -> int:
        return self._tx(lambda db: db.execute(
            "UPDATE recipients SET status = 'held', held_by = 'admin' WHERE message_id = ?"
            " AND status = 'queued'",
            (queue_id,)).rowcount)

    def release(self, queue_id: str) -> int:
        return self._tx(lambda db: db.execute(
            "UPDATE recipients SET status = 'queued', released = 1, next_attempt = ?"
            " WHERE message_id = ? AND status = 'held'", (time.time(), queue_id)).rowcount)

    def delete(self, queue_id: str) -> int:
        rows = self._tx(lambda db: db.execute(
            "DELETE FROM messages WHERE id = ? RETURNING body_file", (queue_id,)).fetchall())
        if rows and rows[0][0]:
            self._remove_body_file(queue_id)
        return len(rows)

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
            return [address for _, address in rows]
        return self._tx(apply)

    def badmail_delete(self, queue_id: str) -> list[str]:
        def apply(db):
            rows = db.execute("SELECT idx, address FROM recipients WHERE message_id = ?"
                              " AND status = 'badmail'", (queue_id,)).fetchall()
            # Deleted badmail recipients count as finished ("bounced" by the admin, no DSN).
            db.execute("UPDATE recipients SET status = 'bounced', reason = 'deleted from badmail'"
                       " WHERE message_id = ? AND status = 'badmail'", (queue_id,))
            gone_file = _remove_if_finished(db, queue_id)
            return [address for _, address in rows], gone_file
        deleted, gone_file = self._tx(apply)
        if gone_file:
            self._remove_body_file(queue_id)
        return deleted
