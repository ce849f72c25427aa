"""The history indexer on a full disk (found by the full-disk run of issue 14): the admin
process started while the disk was full, the indexer stopped for good ("history stopped:
database or disk is full", and "cannot rollback - no transaction is active" hid the real
error), so the journal was never trimmed and the history never caught up. It must wait and
index once there is space. Needs root (a small tmpfs); a failed mount fails the test."""

from __future__ import annotations

import asyncio
import errno
import subprocess
import types

import pytest

from relaywarden.history import History
from relaywarden.history.indexer import run_indexer
from relaywarden.queue.store import Store

from history.test_history_store import commit, envelope

pytestmark = pytest.mark.slow


def fill(path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_the_indexer_waits_out_a_full_disk_and_then_indexes_everything(tmp_path, capfd):
    disk = tmp_path / "tiny"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"this test needs a tmpfs (root): {done.stderr.strip()}"
    try:
        data = disk / "var"
        data.mkdir()

        async def scenario() -> None:
            store = Store.open(data)
            for i in range(3):
                await commit(store, envelope(f"Q{i}"))
            fill(disk / "filler")                     # the disk is full before the indexer starts
            cfg = types.SimpleNamespace(data_dir=data,
                                        history=types.SimpleNamespace(keep_days=30))
            stop = asyncio.Event()
            task = asyncio.create_task(run_indexer(cfg, stop))
            # Several of its retries (INTERVAL = 1 s) on the full disk: it goes on, and says
            # so once, not at each retry (the timer is what this test is about).
            await asyncio.sleep(3)
            assert not task.done(), f"the indexer stopped on a full disk: {task.exception()!r}"
            (disk / "filler").unlink()                # space again
            for _ in range(100):
                await asyncio.sleep(0.1)
                if (data / "history.sqlite3").exists():
                    h = History.open(data, readonly=True)
                    try:
                        if h.count() == 3:
                            break
                    finally:
                        h.close()
            else:
                pytest.fail("the history did not catch up once the disk had space")
            stop.set()
            await asyncio.wait_for(task, 10)
            store.close()

        asyncio.run(scenario())
        err = capfd.readouterr().err
        assert "disk is full" in err, err               # said, once ...
        assert err.count("disk is full") <= 2, err      # ... not every second
        assert "no transaction is active" not in err, err
        assert "indexing again" in err, err
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
