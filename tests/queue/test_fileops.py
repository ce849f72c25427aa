"""The queue's file layer (relaywarden.queue.fileops) on its own, and the body spool and the
store on a failing one (tests/faultfs.py): a failure is raised to the caller, never half
kept; the end-to-end cases (a real SMTP session gets 451) are in tests/test_disk_faults.py."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3

import pytest

from faultfs import FaultyFiles, eio
from relaywarden.queue.fileops import REAL, FileOps
from relaywarden.queue.spool import SPOOL_MEMORY_LIMIT, BodySpool
from relaywarden.queue.store import Envelope, QueueReader, RecipientRecord, RecipientStatus, Store, StoreError


def envelope(qid: str) -> Envelope:
    return Envelope(
        queue_id=qid, received_at=1.0, listener="main", client_ip="127.0.0.1",
        client_name=None, helo="x.test", auth_user=None, sender="a@example.com",
        recipients=(RecipientRecord(address="b@example.com", status=RecipientStatus.QUEUED,
                                    rule="default"),))


def spill(spool: BodySpool, chunks: int = 3) -> bytes:
    data = b"".join(bytes([65 + i]) * SPOOL_MEMORY_LIMIT for i in range(chunks))
    for i in range(chunks):
        spool.write(data[i * SPOOL_MEMORY_LIMIT:(i + 1) * SPOOL_MEMORY_LIMIT])
    return data


# -- the real layer -------------------------------------------------------------------------

def test_the_real_layer_writes_fsyncs_links_and_unlinks(tmp_path):
    fd, path = REAL.create_temp(tmp_path, "spool-")
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith("spool-")
    REAL.write(fd, b"x" * 100_000)
    REAL.write(fd, memoryview(b"tail"))
    REAL.fsync(fd)
    REAL.link(path, tmp_path / "named")
    with pytest.raises(FileExistsError):            # never over another file
        REAL.link(path, tmp_path / "named")
    REAL.unlink(path)
    REAL.fsync_dir(tmp_path)
    REAL.close(fd)
    assert (tmp_path / "named").read_bytes() == b"x" * 100_000 + b"tail"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named"]


def test_a_short_write_is_continued(tmp_path):
    # A pipe takes at most its buffer per write when the reader is slow: the layer loops.
    read_fd, write_fd = os.pipe()
    data = os.urandom(1 << 20)
    got = bytearray()
    import threading

    def reader():
        while chunk := os.read(read_fd, 7000):
            got.extend(chunk)
    t = threading.Thread(target=reader)
    t.start()
    REAL.write(write_fd, data)
    os.close(write_fd)
    t.join(10)
    os.close(read_fd)
    assert bytes(got) == data


def test_the_real_commit_ends_the_transaction(tmp_path):
    db = sqlite3.connect(tmp_path / "q.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (1)")
    REAL.commit(db)
    assert not db.in_transaction
    other = sqlite3.connect(tmp_path / "q.sqlite3")
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]
    other.close()
    db.close()


def test_the_store_and_its_spools_use_the_layer_they_are_given(tmp_path):
    files = FaultyFiles()
    store = Store.open(tmp_path, files=files)
    try:
        assert store.files is files and store.new_spool()._files is files
    finally:
        store.close()
    plain = Store.open(tmp_path)
    try:
        assert plain.files is REAL and isinstance(REAL, FileOps)
    finally:
        plain.close()


# -- the spool on a failing layer ----------------------------------------------------------

def test_a_failed_write_is_kept_and_raised_later_not_in_the_middle_of_data(tmp_path):
    files = FaultyFiles()
    spool = BodySpool(tmp_path, files)
    spool.write(b"a" * SPOOL_MEMORY_LIMIT)           # still in memory
    files.fail_write = eio("write")
    spool.write(b"b" * 10)                          # spills: the file write fails
    assert isinstance(spool.error, OSError) and spool.error.errno == errno.EIO
    files.fail_write = None
    spool.write(b"c" * 10)                          # the rest is counted, not stored
    assert spool.size == SPOOL_MEMORY_LIMIT + 20
    assert list(tmp_path.iterdir()) == []           # the spill file went at once
    assert not spool.in_memory                      # nothing is kept in memory either
    with pytest.raises(OSError, match="injected: write"):
        list(spool.chunks())
    with pytest.raises(OSError, match="injected: write"):
        spool.persist(tmp_path / "Q1")
    assert not (tmp_path / "Q1").exists()
    spool.discard()
    assert spool.error is None and spool.size == 0


def test_a_failed_create_of_the_spill_file_is_kept_too(tmp_path):
    spool = BodySpool(tmp_path / "missing-dir", FaultyFiles())
    spool.write(b"a" * (SPOOL_MEMORY_LIMIT + 1))
    assert isinstance(spool.error, FileNotFoundError)


def test_a_failed_fsync_never_names_the_body(tmp_path):
    files = FaultyFiles()
    spool = BodySpool(tmp_path, files)
    spill(spool)
    files.fail_fsync = eio("fsync")
    with pytest.raises(OSError, match="injected: fsync"):
        spool.persist(tmp_path / "Q1")
    assert files.calls.get("link", 0) == 0 and not (tmp_path / "Q1").exists()
    assert spool.stored_as is None
    spool.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_directory_fsync_takes_the_name_back(tmp_path):
    files = FaultyFiles()
    spool = BodySpool(tmp_path, files)
    spill(spool)
    files.fail_fsync_dir = eio("fsync dir")
    with pytest.raises(OSError, match="injected: fsync dir"):
        spool.persist(tmp_path / "Q1")
    assert not (tmp_path / "Q1").exists() and spool.stored_as is None
    spool.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_taken_name_is_left_alone(tmp_path):
    (tmp_path / "Q1").write_bytes(b"another message's body")
    spool = BodySpool(tmp_path, FaultyFiles())
    spill(spool)
    with pytest.raises(FileExistsError):
        spool.persist(tmp_path / "Q1")
    assert (tmp_path / "Q1").read_bytes() == b"another message's body"
    spool.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["Q1"]


# -- the store on a failing layer ----------------------------------------------------------

def test_a_failed_commit_stores_nothing_and_the_next_one_works(tmp_path):
    files = FaultyFiles()

    async def go():
        store = Store.open(tmp_path, files=files)
        try:
            big = store.new_spool()
            spill(big, 2)
            small = store.new_spool()
            small.write(b"x\r\n")
            files.fail_commit = sqlite3.OperationalError("disk I/O error")
            with pytest.raises(StoreError, match="disk I/O error"):
                await store.commit(envelope("BIG"), big)
            with pytest.raises(StoreError, match="disk I/O error"):
                await store.commit(envelope("SMALL"), small)
            # The large body had been stored under its name: it went with the refusal.
            assert list((tmp_path / "bodies").iterdir()) == []
            files.fail_commit = None
            await store.commit(envelope("SMALL"), small)
        finally:
            store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    assert [m["id"] for m in reader.list()] == ["SMALL"]
    reader.close()


def test_a_failed_spool_stores_nothing(tmp_path):
    files = FaultyFiles()

    async def go():
        store = Store.open(tmp_path, files=files)
        try:
            spool = store.new_spool()
            files.fail_write = eio("write")
            spill(spool)
            with pytest.raises(StoreError, match="injected: write"):
                await store.commit(envelope("Q1"), spool)
            spool.discard()
        finally:
            store.close()
        assert files.calls.get("commit", 0) == 0     # never reached a transaction
    asyncio.run(go())
    assert list((tmp_path / "bodies").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    reader = QueueReader(tmp_path)
    assert reader.count() == 0
    reader.close()
