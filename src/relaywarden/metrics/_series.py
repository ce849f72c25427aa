"""Per-minute rates for the dashboard: the admin process's sampler reads the cumulative
counters of all processes every 10 s and adds what they grew by to the current minute's
row of <data_dir>/metrics-series.sqlite3 (kept 24 h).

A restart of the relay wipes the counters and writes a new epoch (metrics/epoch): the
sampler then counts from zero again instead of seeing a negative step. The last totals are
kept in the same file, so a restart of the admin process alone loses nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

from relaywarden.metrics._collect import counter_totals, read_epoch

SERIES_FILE = "metrics-series.sqlite3"
SAMPLE_SECONDS = 10.0
KEEP_SECONDS = 24 * 3600
WINDOWS = {"hour": 60, "day": 1440}
TOP_DEFERRED = 10

#: series key -> counter (name without _total), summed over all its labels
COUNTERS = {
    "received": "relaywarden_messages_received",
    "delivered": "relaywarden_recipients_delivered",
    "deferred": "relaywarden_recipients_deferred",
    "bounced": "relaywarden_recipients_bounced",
    "rejected": "relaywarden_commands_rejected",
    "quarantined": "relaywarden_messages_quarantined",
}
KEYS = tuple(COUNTERS)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS minutes (minute INTEGER PRIMARY KEY, "
    + ", ".join(f"{k} INTEGER NOT NULL DEFAULT 0" for k in KEYS) + ");"
    "CREATE TABLE IF NOT EXISTS last (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
)


def _open(data_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(Path(data_dir) / SERIES_FILE, timeout=5.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def sample_once(data_dir: Path | str, now: float | None = None) -> dict[str, int]:
    """Read the counters once and add their growth since the last sample to the current
    minute. Returns what was added."""
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    totals = counter_totals(data_dir, COUNTERS)
    epoch = read_epoch(data_dir) or ""
    db = _open(data_dir)
    try:
        db.execute("BEGIN IMMEDIATE")
        last = dict(db.execute("SELECT key, value FROM last"))
        same = last.get("epoch") == epoch
        added = {}
        for k in KEYS:
            before = float(last.get(k, 0)) if same else 0.0
            # A counter can only fall when its process's file went (never, short of a
            # wipe without a new epoch): then start over from its value.
            added[k] = int(max(totals[k] - before, 0))
        if any(added.values()):
            minute = int(now // 60) * 60
            cols = ", ".join(KEYS)
            db.execute(
                f"INSERT INTO minutes (minute, {cols}) VALUES (?{', ?' * len(KEYS)}) "
                "ON CONFLICT(minute) DO UPDATE SET "
                + ", ".join(f"{k} = {k} + excluded.{k}" for k in KEYS),
                (minute, *(added[k] for k in KEYS)))
        db.executemany("INSERT OR REPLACE INTO last (key, value) VALUES (?, ?)",
                       [("epoch", epoch)] + [(k, repr(totals[k])) for k in KEYS])
        db.execute("DELETE FROM minutes WHERE minute < ?", (int(now) - KEEP_SECONDS - 60,))
        db.execute("COMMIT")
        return added
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()


async def run_sampler(cfg, stop: asyncio.Event, *, interval: float = SAMPLE_SECONDS) -> None:
    """The admin process's sampler: every ``interval`` seconds until ``stop`` is set (and
    once more then). The database work runs in a thread, off the admin loop."""
    data_dir = Path(cfg.data_dir)
    while True:
        stopping = stop.is_set()     # the last sample must start after stop was set
        try:
            await asyncio.to_thread(sample_once, data_dir)
        except Exception as exc:  # noqa: BLE001 - a locked or full disk: try again later
            print(f"relaywarden: metrics sampler: {exc}", file=sys.stderr, flush=True)
        if stopping:
            return
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


def top_deferred(data_dir: Path | str, limit: int = TOP_DEFERRED) -> list[dict]:
    """Domains with the most recipients waiting after a failed attempt, with the last
    error of the one tried most recently."""
    path = Path(data_dir) / "queue.sqlite3"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return []
    try:
        # SQLite: with MAX(), the bare column last_error comes from the row of the maximum.
        rows = db.execute(
            "SELECT domain, COUNT(*), last_error, MAX(next_attempt) FROM recipients"
            " WHERE status = 'queued' AND attempts > 0 GROUP BY domain"
            " ORDER BY COUNT(*) DESC, domain LIMIT ?", (limit,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()
    return [{"destination": d, "count": n, "last_error": e} for d, n, e, _ in rows]


def series(data_dir: Path | str, window: str, *, now: float | None = None) -> dict:
    """The per-minute counts of the last hour or day (the current minute last, partial),
    zero where nothing happened, and the top deferred destinations."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    last = int(now // 60) * 60
    minutes = list(range(last - (WINDOWS[window] - 1) * 60, last + 60, 60))
    out: dict = {"minutes": minutes, **{k: [0] * len(minutes) for k in KEYS}}
    if (data_dir / SERIES_FILE).exists():
        # Not mode=ro: a read-only connection cannot open a WAL file whose writer is gone.
        db = sqlite3.connect(data_dir / SERIES_FILE, timeout=2.0)
        try:
            rows = db.execute(f"SELECT minute, {', '.join(KEYS)} FROM minutes"
                              " WHERE minute >= ? AND minute <= ?", (minutes[0], last))
            for minute, *values in rows:
                i = (minute - minutes[0]) // 60
                for k, v in zip(KEYS, values):
                    out[k][i] = v
        except sqlite3.Error:
            pass
        finally:
            db.close()
    out["top_deferred"] = top_deferred(data_dir)
    return out
