"""The dashboard's per-minute series: the sampler's deltas, epochs (restarts), the 24 h
window, and the top deferred destinations read from the queue."""

from __future__ import annotations

import asyncio
import sqlite3
import types

import pytest

from relaywarden import metrics
from relaywarden.logs.maillog import MailEvent as E
from relaywarden.metrics import _events, _series
from relaywarden.queue.store import SCHEMA

T0 = 1_790_000_000 // 60 * 60      # a minute start


@pytest.fixture
def mdir(tmp_path):
    metrics.setup(tmp_path, role="test", fresh=True)
    yield tmp_path
    _events.stop()


def receive(n: int, listener: str = "main") -> None:
    for i in range(n):
        metrics.observe(E.QUEUED, {"id": f"Q{i}", "listener": listener})


def test_sampler_adds_growth_per_minute(mdir):
    receive(3)
    metrics.observe(E.DELIVERED, {"to": "a@b", "route": "r", "tls": "none"})
    assert _series.sample_once(mdir, now=T0 + 5)["received"] == 3
    assert _series.sample_once(mdir, now=T0 + 15)["received"] == 0     # nothing new
    receive(2, "sub")
    metrics.observe(E.REJECT, {"stage": "rcpt", "listener": "main", "code": 550})
    _series.sample_once(mdir, now=T0 + 25)
    receive(4)
    _series.sample_once(mdir, now=T0 + 65)                            # the next minute
    s = metrics.series(mdir, "hour", now=T0 + 70)
    assert len(s["minutes"]) == 60
    assert s["minutes"][-1] == T0 + 60 and s["minutes"][-2] == T0
    assert s["minutes"][0] == T0 + 60 - 59 * 60
    assert s["received"][-2:] == [5, 4]
    assert s["delivered"][-2:] == [1, 0]
    assert s["rejected"][-2:] == [1, 0]
    assert sum(s["received"]) == 9
    assert sum(s["deferred"]) == sum(s["bounced"]) == sum(s["quarantined"]) == 0
    assert s["top_deferred"] == []
    day = metrics.series(mdir, "day", now=T0 + 70)
    assert len(day["minutes"]) == 1440 and sum(day["received"]) == 9


def test_a_new_epoch_counts_from_zero_and_old_rows_go(mdir):
    receive(5)
    _series.sample_once(mdir, now=T0)
    # The relay restarts: counters wiped, new epoch; 2 messages since.
    _events.stop()
    metrics.setup(mdir, role="test", fresh=True)
    receive(2)
    added = _series.sample_once(mdir, now=T0 + 120)
    assert added["received"] == 2                 # not 2 - 5, not 0
    s = metrics.series(mdir, "hour", now=T0 + 120)
    assert s["received"][-3:] == [5, 0, 2]
    # 24 h later the first minutes are gone from the file.
    receive(1)
    _series.sample_once(mdir, now=T0 + 120 + 24 * 3600 + 180)
    db = sqlite3.connect(mdir / _series.SERIES_FILE)
    minutes = [m for (m,) in db.execute("SELECT minute FROM minutes ORDER BY minute")]
    db.close()
    assert minutes == [T0 + 120 + 24 * 3600 + 180]


def test_admin_process_restart_loses_nothing(mdir):
    receive(3)
    _series.sample_once(mdir, now=T0)
    receive(4)
    # The admin process restarts (its state is in the file), the relay did not.
    assert _series.sample_once(mdir, now=T0 + 10)["received"] == 4


def test_series_without_data_and_a_bad_window(tmp_path):
    s = metrics.series(tmp_path, "hour", now=T0)
    assert len(s["minutes"]) == 60 and set(s["received"]) == {0}
    assert s["top_deferred"] == []
    with pytest.raises(ValueError):
        metrics.series(tmp_path, "week")


def test_run_sampler_samples_until_stopped_and_once_more(mdir):
    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(metrics.run_sampler(types.SimpleNamespace(data_dir=mdir),
                                                       stop, interval=0.05))
        receive(2)
        await asyncio.sleep(0.3)        # some samples at interval 0.05: the timer under test
        receive(3)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
    assert sum(metrics.series(mdir, "hour")["received"]) == 5


def test_top_deferred_from_the_queue(tmp_path):
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    db.executescript(SCHEMA)
    rows = [  # domain, status, attempts, next_attempt, last_error
        ("slow.test", "queued", 2, 100.0, "451 old error"),
        ("slow.test", "queued", 1, 300.0, "451 4.7.1 greylisted"),
        ("slow.test", "queued", 3, 200.0, "451 middle"),
        ("down.test", "queued", 1, 50.0, "connection refused"),
        ("new.test", "queued", 0, 10.0, ""),            # not tried yet: not deferred
        ("held.test", "held", 4, 10.0, "held"),
        ("gone.test", "bounced", 1, 10.0, "550"),
    ]
    for i, (domain, status, attempts, nxt, err) in enumerate(rows):
        db.execute("INSERT INTO messages (id, received_at, listener, client_ip, helo, sender,"
                   " smtputf8, size) VALUES (?, ?, 'main', '127.0.0.1', 'h', 's@x', 0, 1)",
                   (f"M{i}", 1000.0 + i))
        db.execute("INSERT INTO recipients (message_id, idx, address, domain, status, rule,"
                   " reason, next_attempt, attempts, last_error) VALUES (?, 0, ?, ?, ?, 'r',"
                   " 'r', ?, ?, ?)", (f"M{i}", f"u@{domain}", domain, status, nxt, attempts,
                                      err))
    db.commit()
    db.close()
    assert metrics.series(tmp_path, "hour")["top_deferred"] == [
        {"destination": "slow.test", "count": 3, "last_error": "451 4.7.1 greylisted"},
        {"destination": "down.test", "count": 1, "last_error": "connection refused"},
    ]
    # The scrape-time queue gauges from the same rows.
    from relaywarden.metrics._collect import queue_state
    q = queue_state(tmp_path, now=2000.0)
    assert q["by_state"] == {"queued": 5, "held": 1, "badmail": 0, "bounced": 1}
    assert q["oldest_age"] == 1000.0
