"""The queue store on its own: durability, group commit, large bodies, failure isolation."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from relaywarden.queue.store import (
    SPOOL_MEMORY_LIMIT,
    Envelope,
    QueueReader,
    RecipientRecord,
    RecipientStatus,
    Store,
    StoreError,
    new_queue_id,
)


def envelope(qid: str, *, recipients=("b@example.com",)) -> Envelope:
    return Envelope(
        queue_id=qid, received_at=1.0, listener="main", client_ip="127.0.0.1",
        client_name=None, helo="x.test", auth_user=None, sender="a@example.com",
        recipients=tuple(
            RecipientRecord(address=r, status=RecipientStatus.QUEUED, rule="default")
            for r in recipients
        ),
    )


def test_queue_ids_are_unique_and_sortable():
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == len(ids[0]) for i in ids)
    assert ids[0][:10] <= ids[-1][:10]


def test_concurrent_commits_share_transactions_and_all_survive(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        # Hold the writer busy so that the others pile up behind it, as under load.
        spools = []
        jobs = []
        for i in range(200):
            spool = store.new_spool()
            spool.write(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
            spools.append(spool)
            jobs.append(store.commit(envelope(f"ID{i:05d}"), spool))
        await asyncio.gather(*jobs)
        store.close()
        return store.commits
    commits = asyncio.run(go())
    assert commits < 200  # group commit: fewer transactions (fsyncs) than messages
    reader = QueueReader(tmp_path)
    assert reader.count() == 200
    assert reader.body("ID00123") == b"Subject: 123\r\n\r\nbody 123\r\n"
    reader.close()


def test_large_body_spills_to_disk_and_is_stored_whole(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        spool = store.new_spool()
        chunk = bytes(range(256)) * 1024
        for _ in range(SPOOL_MEMORY_LIMIT // len(chunk) * 3):
            spool.write(chunk)
        assert not spool.in_memory
        expected = b"".join(spool.chunks())
        await store.commit(envelope("BIG"), spool)
        spool.discard()
        store.close()
        return expected
    expected = asyncio.run(go())
    reader = QueueReader(tmp_path)
    assert reader.body("BIG") == expected
    assert reader.show("BIG")["size"] == len(expected)
    reader.close()


def test_a_failing_message_does_not_fail_its_batch_neighbours(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        spool = store.new_spool()
        spool.write(b"x\r\n")
        await store.commit(envelope("DUP"), spool)
        results = await asyncio.gather(
            store.commit(envelope("OK1"), spool),
            store.commit(envelope("DUP"), spool),   # primary key clash: must fail alone
            store.commit(envelope("OK2"), spool),
            return_exceptions=True,
        )
        store.close()
        return results
    ok1, dup, ok2 = asyncio.run(go())
    assert ok1 is None and ok2 is None
    assert isinstance(dup, StoreError)
    reader = QueueReader(tmp_path)
    assert reader.count() == 3
    reader.close()


def test_committed_rows_are_in_the_database_file_with_full_sync(tmp_path):
    store = Store.open(tmp_path)
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()
    store.close()


def test_badmail_recipient_state_and_rule_are_recorded(tmp_path):
    env = Envelope(
        queue_id="Q1", received_at=1.0, listener="main", client_ip="10.0.5.7",
        client_name=None, helo="scanner", auth_user=None, sender="scan@example.com",
        recipients=(
            RecipientRecord(address="boss@example.com", status=RecipientStatus.QUEUED,
                            rule="relay.hosted_domains"),
            RecipientRecord(address="me@gmail.test", status=RecipientStatus.BADMAIL,
                            rule="groups.scanners.recipient_domains",
                            reason="gmail.test is not allowed", notify=("NEVER",)),
        ),
    )

    async def go():
        store = Store.open(tmp_path)
        spool = store.new_spool()
        spool.write(b"x\r\n")
        await store.commit(env, spool)
        store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    [r1, r2] = reader.show("Q1")["recipients"]
    assert (r1["status"], r2["status"]) == ("queued", "badmail")
    assert r2["rule"] == "groups.scanners.recipient_domains" and r2["notify"] == "NEVER"
    assert [m["id"] for m in reader.list(status="badmail")] == ["Q1"]
    reader.close()


def test_a_cancelled_waiter_does_not_stop_the_writer(tmp_path):
    """A session that goes away while its commit is in flight cancels nothing on disk, and
    the writer thread carries on for everyone else (it once died on the cancelled future)."""
    async def go():
        store = Store.open(tmp_path)
        first = store.new_spool()
        first.write(b"Subject: gone\r\n\r\nx\r\n")
        waiter = asyncio.ensure_future(store.commit(envelope("GONE0001"), first))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        later = []
        for i in range(5):
            spool = store.new_spool()
            spool.write(f"Subject: {i}\r\n\r\nx\r\n".encode())
            later.append(store.commit(envelope(f"LATE{i:04d}"), spool))
        await asyncio.wait_for(asyncio.gather(*later), 10)
        assert store._writer.is_alive()
        store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    assert reader.count() == 6          # the cancelled waiter's message was still committed
    reader.close()
