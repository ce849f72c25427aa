"""The sqlite3 adapters of queue/binds.py: the same values stored, without the module's
adapter protocol (PEP 246) for None and bool."""

from __future__ import annotations

import sqlite3

import relaywarden.queue.store  # noqa: F401 - registers them, as the relay does


def test_none_and_bool_bind_as_before():
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    assert (bool, sqlite3.PrepareProtocol) in sqlite3.adapters
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b, c)")
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, False, True)] * 3)
    rows = db.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t").fetchall()
    assert rows == [(None, "null", 1, "integer", 0, "integer")] + \
        [(None, "null", 0, "integer", 1, "integer")] * 3
    # IS NULL still finds them: the adapter's None is SQL NULL, not a text or a blob.
    assert db.execute("SELECT count(*) FROM t WHERE a IS NULL").fetchone() == (4,)
