"""The queue's two sides with hand-off on, as the relay's processes open them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relaywarden.queue import journal
from relaywarden.queue.store import Store


def stores(data: Path, layout: str, files=None) -> tuple[Store, Store]:
    """The receiving store (hand-off) and the one that delivers: the same store
    (``inline``), or a delivery process's that follows the log (``separate``). ``files``:
    the delivering side's file operations (inline: used for SQLite only, not the log)."""
    receiving = Store.open(data)
    receiving.start_handoff(deliver_here=layout == "inline")
    if layout == "inline":
        if files is not None:
            receiving.files = files
        return receiving, receiving
    delivering = Store.open(data, **({} if files is None else {"files": files}))
    delivering.start_following()
    return receiving, delivering


def journal_kinds(data: Path, queue_id: str) -> list[str]:
    """A message's journal entries, by kind: in the queue's table, or in the journal's files
    (a message its first attempt finished never was in the queue's tables)."""
    db = sqlite3.connect(f"file:{data / 'queue.sqlite3'}?mode=ro", uri=True)
    try:
        kinds = [kind for (kind,) in db.execute(
            "SELECT kind FROM journal WHERE queue_id = ? ORDER BY seq", (queue_id,))]
    finally:
        db.close()
    return kinds + [e.kind for e in journal.read_files(
        journal.files_directory(data), journal.START, 100000)[0] if e.queue_id == queue_id]
