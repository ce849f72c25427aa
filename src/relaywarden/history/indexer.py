"""Moves the queue's journal into the history, in the admin process.

Reads entries after the history's cursor, indexes them in one transaction that also moves
the cursor (FULL sync: on disk before anything is trimmed), then trims the journal up to
the cursor; the same for the journal's files (queue.journal.read_files), whose position is
a second cursor and whose finished files are removed. A crash at any point loses nothing:
untrimmed entries at or below the cursor are skipped when read again. All SQLite work runs
in a worker thread so that the admin server on the same loop stays responsive.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

from relaywarden.history.store import History
from relaywarden.queue.journal import Journal

#: How often the journal is looked at when the last look found little. A second: the
#: larger the batch, the less each entry costs (statements are shared), and the history
#: may lag the queue by a moment anyway.
INTERVAL = 1.0
#: Entries indexed per transaction.
BATCH = 2000
#: How often old history is pruned.
PRUNE_EVERY = 3600.0


def seed_from_queue(history: History, data_dir: Path) -> int:
    """A new history file (first start, or the old one was lost): the messages waiting in
    the queue now are recorded from the queue itself, so that nothing queued is missing
    from the history even if its journal entries were trimmed long ago."""
    db = sqlite3.connect(f"file:{data_dir / 'queue.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        messages = db.execute(
            "SELECT id, received_at, listener, client_ip, client_name, helo, auth_user, sender,"
            " size FROM messages").fetchall()
        recipients = db.execute(
            "SELECT message_id, idx, address, status, rule, reason, last_error, remote_mta,"
            " attempts FROM recipients").fetchall()
    finally:
        db.close()
    return history.seed(messages, recipients)


def index_once(history: History, journal: Journal, batch: int = BATCH) -> int:
    """One step: index up to ``batch`` entries of the journal's table and up to ``batch``
    of its files, trim what is indexed. Returns how many entries were read (``batch`` or
    more: look again at once)."""
    cursor = history.cursor()
    entries = journal.read(cursor, batch)
    if entries:
        cursor = history.apply(entries)
    journal.trim(cursor)
    # The files: one at a time (queue.journal.read_files); a finished one goes once its
    # entries and the position past them are committed, so a crash in between finds it
    # again at its end and reads nothing twice.
    position = history.files_position()
    filed, to, finished = journal.read_files(position, batch)
    if (filed or to != position) and not history.apply_files(filed, position, to):
        return batch             # another indexer went ahead: it removes the file
    if finished is not None:
        journal.remove_file(finished)
        return max(batch, len(entries) + len(filed))   # the next file may be waiting
    return len(entries) + len(filed)


async def run_indexer(cfg, stop: asyncio.Event) -> None:
    data_dir = cfg.data_dir
    keep_days = getattr(getattr(cfg, "history", None), "keep_days", 30)
    queue_file = data_dir / "queue.sqlite3"
    while not queue_file.exists():          # the receiving process creates it at start
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
            return
        except asyncio.TimeoutError:
            pass
    # Opening, seeding and indexing are each retried until they work: on a full disk (or a
    # busy database) the journal waits in the queue and nothing is lost, so the indexer must
    # wait with it, not stop for good. Each new error is printed once.
    history: History | None = None
    journal: Journal | None = None
    seeded = False
    trouble = ""
    try:
        last_prune = 0.0
        while not stop.is_set():
            try:
                if history is None:
                    history = await asyncio.to_thread(History.open, data_dir)
                if journal is None:
                    journal = Journal(data_dir)
                if not seeded:
                    if history.cursor() == 0 and history.count() == 0:
                        await asyncio.to_thread(seed_from_queue, history, data_dir)
                    seeded = True
                read = await asyncio.to_thread(index_once, history, journal)
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    last_prune = time.monotonic()
                    await asyncio.to_thread(history.prune, time.time() - keep_days * 86400)
                if trouble:
                    print("relaywarden: history: indexing again", file=sys.stderr, flush=True)
                    trouble = ""
            except (sqlite3.Error, OSError) as exc:   # busy, disk full: the journal waits
                if str(exc) != trouble:
                    trouble = str(exc)
                    print(f"relaywarden: history: {exc} (trying again)", file=sys.stderr,
                          flush=True)
                read = 0
            if read < BATCH:
                try:
                    await asyncio.wait_for(stop.wait(), INTERVAL)
                except asyncio.TimeoutError:
                    pass
        # Last look on the way out, so a clean stop leaves the history complete.
        if history is not None and journal is not None and seeded:
            try:
                await asyncio.to_thread(index_once, history, journal)
            except (sqlite3.Error, OSError) as exc:
                print(f"relaywarden: history: {exc}", file=sys.stderr, flush=True)
    finally:
        if journal is not None:
            journal.close()
        if history is not None:
            history.close()


#: With the history off, how often the journal is emptied.
TRIM_EVERY = 10.0


async def run_trimmer(cfg, stop: asyncio.Event, *, interval: float = TRIM_EVERY) -> None:
    """``history.enabled = false``: the queue still journals (its transactions do not know
    who reads), so the entries are dropped here instead of indexed."""
    journal = None
    try:
        while not stop.is_set():
            try:
                if journal is None and (cfg.data_dir / "queue.sqlite3").exists():
                    journal = Journal(cfg.data_dir)
                if journal is not None:
                    await asyncio.to_thread(lambda: journal.trim(journal.last_seq()))  # noqa: B023
                    await asyncio.to_thread(journal.trim_files)
            except sqlite3.Error as exc:
                print(f"relaywarden: journal: {exc}", file=sys.stderr, flush=True)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
    finally:
        if journal is not None:
            journal.close()
