"""The queue store on its own: durability, group commit, large bodies, failure isolation."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import subprocess
import sqlite3
import sys
import textwrap

import pytest

from faultfs import FaultyFiles
from relaywarden.queue import journal
from relaywarden.queue.store import (
    SCHEMA,
    SCHEMA_VERSION,
    SPOOL_MEMORY_LIMIT,
    BodySpool,
    Envelope,
    QueueReader,
    RecipientRecord,
    RecipientStatus,
    RecipientUpdate,
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


async def hold_writer(store: Store, files: FaultyFiles) -> asyncio.Future:
    """Park the writer thread inside a transaction of its own (a query, no message) until
    ``files.release()``, so that whatever is queued meanwhile goes into its next batch."""
    files.hold()
    parked = asyncio.ensure_future(store.next_due())
    while not files.held.is_set():
        await asyncio.sleep(0.005)
    return parked


async def queued_jobs(store: Store, count: int) -> None:
    """Until ``count`` jobs wait for the (parked) writer."""
    for _ in range(1000):
        if store._jobs.qsize() >= count:
            break
        await asyncio.sleep(0.005)
    assert store._jobs.qsize() == count


def test_queue_ids_are_unique_and_sortable():
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == len(ids[0]) for i in ids)
    assert ids[0][:10] <= ids[-1][:10]


def test_queue_id_is_the_stamp_then_the_random_tail_in_base_30(monkeypatch):
    # The definition, one digit at a time; new_queue_id() computes it two digits at a time.
    from relaywarden.queue import store as store_module
    alphabet = store_module._ALPHABET

    def reference(micros: int, rand: int) -> str:
        stamp = ""
        while micros:
            micros, r = divmod(micros, 30)
            stamp = alphabet[r] + stamp
        tail = ""
        for _ in range(8):                    # least significant digit first
            rand, r = divmod(rand, 30)
            tail += alphabet[r]
        return stamp + tail

    cases = [(1, 0), (29, 2**40 - 1), (30, 1), (899, 899), (900, 900), (30**11 - 1, 30**8),
             (1_796_000_000_000_000, 123_456_789_012)]
    for micros, rand in cases:
        monkeypatch.setattr(store_module.time, "time_ns", lambda m=micros: m * 1000)
        monkeypatch.setattr(store_module._ids, "getrandbits", lambda bits, r=rand: r)
        assert new_queue_id() == reference(micros, rand), (micros, rand)


def test_concurrent_commits_share_transactions_and_all_survive(tmp_path):
    files = FaultyFiles()

    async def go():
        store = Store.open(tmp_path, files=files)
        # Hold the writer busy so that the others pile up behind it, as under load.
        parked = await hold_writer(store, files)
        before = store.commits
        spools = []
        jobs = []
        for i in range(200):
            spool = store.new_spool()
            spool.write(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
            spools.append(spool)
            jobs.append(asyncio.ensure_future(store.commit(envelope(f"ID{i:05d}"), spool)))
        await queued_jobs(store, 200)
        files.release()
        await asyncio.gather(parked, *jobs)
        store.close()
        return store.commits - before
    commits = asyncio.run(go())
    # Group commit: the held transaction, then all 200 messages in one more (one fsync).
    assert commits == 2
    assert files.messages_at_commit[-2:] == [0, 200]
    reader = QueueReader(tmp_path)
    assert reader.count() == 200
    assert reader.body("ID00123") == b"Subject: 123\r\n\r\nbody 123\r\n"
    reader.close()


def big_spool(store: Store, *, times: int = 3) -> BodySpool:
    spool = store.new_spool()
    chunk = bytes(range(256)) * 1024
    for _ in range(SPOOL_MEMORY_LIMIT // len(chunk) * times):
        spool.write(chunk)
    assert not spool.in_memory
    return spool


def test_large_body_spills_to_disk_and_is_stored_whole(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        spool = big_spool(store)
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
    # The spool file itself became the queued body: a file, not a blob in SQLite, and
    # nothing is left in tmp/.
    assert (tmp_path / "bodies" / "BIG").read_bytes() == expected
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM bodies").fetchone()[0] == 0
    assert db.execute("SELECT body_file FROM messages WHERE id = 'BIG'").fetchone()[0] == 1
    db.close()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_finished_large_message_takes_its_body_file_along(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        spool = big_spool(store, times=2)
        await store.commit(envelope("BIGDONE", recipients=("a@x.test", "b@x.test")), spool)
        spool.discard()
        path = tmp_path / "bodies" / "BIGDONE"
        [due] = await store.claim_due(now=10.0, limit=10, lease=60)
        assert due.body is None                       # read on demand, not with the claim
        assert await store.read_body("BIGDONE") == path.read_bytes()
        assert await store.locate_body("BIGDONE") == path   # delivery streams it from disk
        await store.record("BIGDONE", [RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED)])
        assert path.exists()                          # b@ is still queued
        await store.record("BIGDONE", [RecipientUpdate(idx=1, status=RecipientStatus.BOUNCED)])
        assert not path.exists()
        assert await store.read_body("BIGDONE") is None
        assert await store.locate_body("BIGDONE") is None
        store.close()
    asyncio.run(go())


def test_a_refused_large_message_leaves_no_file(tmp_path):
    """The queue ID clashes (the row cannot be inserted): the client gets 451, and neither
    its body nor the other message's body file is touched."""
    async def go():
        store = Store.open(tmp_path)
        first = big_spool(store, times=2)
        await store.commit(envelope("CLASH"), first)
        kept = (tmp_path / "bodies" / "CLASH").read_bytes()
        second = store.new_spool()
        for _ in range(3):
            second.write(b"y" * SPOOL_MEMORY_LIMIT)
        with pytest.raises(StoreError):
            await store.commit(envelope("CLASH"), second)
        second.discard()
        small = store.new_spool()
        small.write(b"x\r\n")
        with pytest.raises(StoreError):
            await store.commit(envelope("CLASH"), small)
        store.close()
        return kept
    kept = asyncio.run(go())
    assert (tmp_path / "bodies" / "CLASH").read_bytes() == kept
    assert [p.name for p in (tmp_path / "bodies").iterdir()] == ["CLASH"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_start_up_removes_files_a_crash_left_and_keeps_queued_bodies(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        spool = big_spool(store, times=2)
        await store.commit(envelope("KEEP"), spool)
        spool.discard()
        # What a crash leaves: a spool mid-DATA, and a body stored whose row never committed.
        unfinished = big_spool(store, times=2)
        unfinished._path = None                       # the process is gone: nobody discards
        (tmp_path / "bodies" / "NEVERCOMMITTED").write_bytes(b"x" * 100)
        (tmp_path / "bodies" / "somebodys-dir").mkdir()   # not ours: left alone
        store.close()
    asyncio.run(go())
    store = Store.open(tmp_path)
    assert store.recover_files() == (1, 1)
    assert sorted(p.name for p in (tmp_path / "bodies").iterdir()) == ["KEEP", "somebodys-dir"]
    assert list((tmp_path / "tmp").iterdir()) == []
    store.close()


# The columns each schema version added, as the current SCHEMA spells them.
_ADDED_IN = {
    2: ",\n    body_file    INTEGER NOT NULL DEFAULT 0   -- 1: the body is the file bodies/<id>",
    3: "\n    held_by        TEXT NOT NULL DEFAULT '',     -- when held: route | admin | body (missing)",
}


def _old_schema(version: int) -> str:
    text = SCHEMA
    if version < 4:     # version 4 added the journal table
        assert journal.SCHEMA in text
        text = text.replace(journal.SCHEMA, "")
    for added_in, column in _ADDED_IN.items():
        if added_in > version:
            assert column in text
            text = text.replace(column, "")
    return text


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_queue_is_migrated_and_keeps_its_mail(tmp_path, version):
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    db.executescript(_old_schema(version))
    db.execute(f"PRAGMA user_version={version}")
    db.execute("INSERT INTO messages (id, received_at, listener, client_ip, helo, sender,"
               " smtputf8, size) VALUES ('OLD', 1, 'main', '127.0.0.1', 'x', 'a@x.test', 0, 3)")
    db.execute("INSERT INTO recipients (message_id, idx, address, domain, status, rule, reason,"
               " next_attempt) VALUES ('OLD', 0, 'b@y.test', 'y.test', 'queued', 'r', '', 1)")
    db.execute("INSERT INTO recipients (message_id, idx, address, domain, status, rule, reason,"
               " next_attempt) VALUES ('OLD', 1, 'c@y.test', 'y.test', 'held', 'r', '', 1)")
    db.execute("INSERT INTO bodies VALUES ('OLD', x'782e0d0a')")
    db.commit()
    db.close()
    store = Store.open(tmp_path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert store._db.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)
    # Who held a recipient before version 3 is not known: '' (ETRN leaves it alone).
    assert store._db.execute(
        "SELECT idx, status, held_by, body_file FROM recipients JOIN messages ON id = message_id"
        " ORDER BY idx").fetchall() == [(0, "queued", "", 0), (1, "held", "", 0)]
    store.close()
    reader = QueueReader(tmp_path)
    assert reader.body("OLD") == b"x.\r\n"
    reader.close()


def test_a_newer_queue_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path)


def test_a_failing_message_does_not_fail_its_batch_neighbours(tmp_path):
    files = FaultyFiles()

    async def go():
        store = Store.open(tmp_path, files=files)
        spool = store.new_spool()
        spool.write(b"x\r\n")
        await store.commit(envelope("DUP"), spool)
        # The three are queued behind a parked writer: they are one batch.
        parked = await hold_writer(store, files)
        jobs = [asyncio.ensure_future(store.commit(envelope(qid), spool))
                for qid in ("OK1", "DUP", "OK2")]   # DUP: primary key clash, must fail alone
        await queued_jobs(store, 3)
        before = store.commits
        files.release()
        results = await asyncio.gather(parked, *jobs, return_exceptions=True)
        commits = store.commits - before
        store.close()
        return results[1:], commits
    (ok1, dup, ok2), commits = asyncio.run(go())
    assert ok1 is None and ok2 is None
    assert isinstance(dup, StoreError)
    # The parked transaction; the batch of three failed as a whole (nothing committed),
    # then OK1 and OK2 each committed alone and DUP failed alone.
    assert commits == 3
    assert files.messages_at_commit[-3:] == [1, 2, 3]
    reader = QueueReader(tmp_path)
    assert reader.count() == 3
    reader.close()


# A process that commits a message through the store, says with which PRAGMA synchronous
# the COMMIT ran, and dies by SIGKILL right after the 250 would go out: no close(), no
# checkpoint, nothing flushed at exit.
_COMMIT_THEN_DIE = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from relaywarden.queue.fileops import FileOps
    from relaywarden.queue.store import Envelope, RecipientRecord, RecipientStatus, Store

    class Watched(FileOps):
        def commit(self, db):
            mode = db.execute("PRAGMA synchronous").fetchone()[0]
            super().commit(db)
            print("committed with synchronous", mode, flush=True)

    async def main():
        store = Store.open(Path(sys.argv[1]), files=Watched())
        spool = store.new_spool()
        spool.write(b"Subject: durable\\r\\n\\r\\nkept\\r\\n")
        await store.commit(Envelope(
            queue_id="DURABLE", received_at=1.0, listener="main", client_ip="127.0.0.1",
            client_name=None, helo="x.test", auth_user=None, sender="a@example.com",
            recipients=(RecipientRecord(address="b@example.com",
                                        status=RecipientStatus.QUEUED, rule="default"),)),
            spool)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def test_committed_rows_are_in_the_database_file_with_full_sync(tmp_path):
    done = subprocess.run([sys.executable, "-c", _COMMIT_THEN_DIE, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert done.stdout.split() == ["committed", "with", "synchronous", "2"]   # 2: FULL
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT sender, size FROM messages WHERE id = 'DURABLE'").fetchone() == (
        "a@example.com", len(b"Subject: durable\r\n\r\nkept\r\n"))
    assert db.execute("SELECT data FROM bodies").fetchall() == [(b"Subject: durable\r\n\r\nkept\r\n",)]
    db.close()


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


def test_outcomes_batched_together_each_land_and_the_last_one_for_a_recipient_wins(tmp_path):
    files = FaultyFiles()

    async def together(store: Store, records: list) -> None:
        """The records' jobs queued behind a parked writer: one shared transaction."""
        parked = await hold_writer(store, files)
        jobs = [asyncio.ensure_future(r) for r in records]
        await queued_jobs(store, len(jobs))
        before = store.commits
        files.release()
        await asyncio.gather(parked, *jobs)
        assert store.commits - before == 2     # the parked one, then all of them at once

    async def go():
        store = Store.open(tmp_path, files=files)
        for i in range(30):
            spool = store.new_spool()
            spool.write(b"x\r\n")
            await store.commit(envelope(f"M{i:03d}", recipients=("a@x.test", "b@x.test")), spool)
        await store.claim_due(now=10.0, limit=100, lease=60)
        await together(store, [
            store.record(f"M{i:03d}", [
                RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED),
                RecipientUpdate(idx=1, status=RecipientStatus.QUEUED if i % 2 else
                                RecipientStatus.DELIVERED, next_attempt=99.0, attempts=1,
                                last_error="451 later"),
            ]) for i in range(30)])
        # Two outcomes for one recipient in one batch: the later one stands.
        await together(store, [
            store.record("M001", [RecipientUpdate(idx=1, status=RecipientStatus.QUEUED,
                                                  next_attempt=50.0, attempts=2)]),
            store.record("M001", [RecipientUpdate(idx=1, status=RecipientStatus.BOUNCED,
                                                  attempts=3, last_error="550 no")])])
        store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    left = {m["id"]: m for m in reader.list()}
    reader.close()
    # Even ones were finished and left the queue; odd ones wait for b@ (M001 is done too).
    assert sorted(left) == [f"M{i:03d}" for i in range(3, 30, 2)]
    for m in left.values():
        assert [r["status"] for r in m["recipients"]] == ["delivered", "queued"]
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    assert db.execute("SELECT attempts, last_error, next_attempt, lease_until FROM recipients"
                      " WHERE message_id = 'M003' AND idx = 1").fetchone() == (1, "451 later", 99.0, 0)
    assert db.execute("SELECT COUNT(*) FROM bodies").fetchone()[0] == len(left)
    db.close()


def test_a_message_with_more_recipients_than_one_statement_binds(tmp_path):
    many = tuple(f"user{i}@example.test" for i in range(4000))   # 40,000 values
    async def go():
        store = Store.open(tmp_path)
        spool = store.new_spool()
        spool.write(b"x\r\n")
        await store.commit(envelope("WIDE", recipients=many), spool)
        store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    assert [r["address"] for r in reader.show("WIDE")["recipients"]] == list(many)
    reader.close()


def test_client_mail_commits_fsynced_delivery_bookkeeping_does_not_wait_for_it(tmp_path):
    """A transaction holding a client's message commits with synchronous=FULL, even when
    it shares the batch with delivery bookkeeping; bookkeeping alone commits with NORMAL."""
    seen = []   # (names of the jobs' kinds in the batch, PRAGMA synchronous it committed with)

    class Watched(Store):
        def _transaction(self, batch):
            out = super()._transaction(batch)
            kinds = tuple(sorted("mail" if job.durable else "bookkeeping" for job in batch))
            seen.append((kinds, self._db.execute("PRAGMA synchronous").fetchone()[0]))
            return out

    async def go():
        store = Watched.open(tmp_path)
        spool = store.new_spool()
        spool.write(b"x\r\n")
        await store.commit(envelope("S1"), spool)
        await store.claim_due(now=10.0, limit=10, lease=60)
        await store.record("S1", [RecipientUpdate(idx=0, status=RecipientStatus.QUEUED,
                                                  next_attempt=20.0, attempts=1)])
        others = []
        for i in range(20):
            other = store.new_spool()
            other.write(b"y\r\n")
            others.append(store.commit(envelope(f"S2-{i}"), other))
        await asyncio.gather(*others, *(
            store.record("S1", [RecipientUpdate(idx=0, status=RecipientStatus.QUEUED,
                                                next_attempt=30.0 + i, attempts=2)])
            for i in range(20)))
        store.close()
    asyncio.run(go())
    FULL, NORMAL = 2, 1
    assert seen[:3] == [(("mail",), FULL), (("bookkeeping",), NORMAL),
                        (("bookkeeping",), NORMAL)]
    for kinds, mode in seen:
        assert mode == (FULL if "mail" in kinds else NORMAL), (kinds, mode)
    # Mixed batches happened, and they were fsynced.
    assert any(set(kinds) == {"mail", "bookkeeping"} for kinds, _ in seen[3:])


def test_start_etrn_releases_route_holds_of_allowed_domains_only(tmp_path):
    store = Store.open(tmp_path)
    db = store._db
    rows = [  # (message, domain, status, held_by)
        ("M1", "b.test", "held", "route"),
        ("M2", "x.b.test", "held", "route"),
        ("M3", "xb.test", "held", "route"),         # not below b.test
        ("M4", "deny.b.test", "held", "route"),     # `allowed` says no
        ("M5", "b.test", "held", "admin"),          # the admin's hold stays
        ("M6", "b.test", "held", "body"),           # so does a hold for a missing body
        ("M7", "y.b.test", "queued", ""),           # waiting for a retry: due now
    ]
    for mid, domain, status, held_by in rows:
        db.execute("INSERT INTO messages (id, received_at, listener, client_ip, helo, sender,"
                   " smtputf8, size) VALUES (?, 1, 'main', '127.0.0.1', 'x', 'a@x.test', 0, 3)",
                   (mid,))
        db.execute("INSERT INTO recipients (message_id, idx, address, domain, status, rule,"
                   " reason, next_attempt, held_by) VALUES (?, 0, ?, ?, ?, 'r', '', 1e12, ?)",
                   (mid, "u@" + domain, domain, status, held_by))

    async def go(domain, subdomains):
        return await store.start_etrn(domain, subdomains=subdomains,
                                      allowed=lambda d: not d.startswith("deny."))

    messages, domains = asyncio.run(go("b.test", True))
    assert (messages, sorted(domains)) == (3, ["b.test", "x.b.test", "y.b.test"])
    state = dict(db.execute("SELECT message_id, status || '/' || released ||"
                            " CASE WHEN next_attempt < 1e12 THEN '/due' ELSE '' END"
                            " FROM recipients"))
    assert state == {"M1": "queued/1/due", "M2": "queued/1/due", "M3": "held/0",
                     "M4": "held/0", "M5": "held/0", "M6": "held/0", "M7": "queued/0/due"}
    # Without "@": only the domain itself, even when nothing waits for it.
    assert asyncio.run(go("xb.test", False)) == (1, ["xb.test"])
    assert asyncio.run(go("none.test", False)) == (0, ["none.test"])
    store.close()


# --- a full disk (issue 14 item 1): the client is told 452 4.3.1 (StoreError.full).


def test_a_body_the_disk_cannot_take_is_refused_as_full_and_leaves_no_file(tmp_path):
    files = FaultyFiles()
    files.fail_write = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def go():
        store = Store.open(tmp_path, files=files)
        spool = store.new_spool()
        for _ in range(3):                   # past the memory limit: into a file, which fails
            spool.write(b"y" * SPOOL_MEMORY_LIMIT)
        with pytest.raises(StoreError) as refused:
            await store.commit(envelope("FULL"), spool)
        spool.discard()
        eio = store.new_spool()              # another fault is not "full"
        files.fail_write = OSError(errno.EIO, os.strerror(errno.EIO))
        for _ in range(2):
            eio.write(b"y" * SPOOL_MEMORY_LIMIT)
        with pytest.raises(StoreError) as other:
            await store.commit(envelope("EIO"), eio)
        eio.discard()
        store.close()
        return refused.value, other.value
    full, other = asyncio.run(go())
    assert full.full and "No space left on device" in str(full)
    assert not other.full
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "bodies").iterdir()) == []


def test_a_full_database_is_a_full_store_error(tmp_path):
    """SQLite says SQLITE_FULL when it cannot grow its files (here: its page limit)."""
    async def go():
        store = Store.open(tmp_path)
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages + 2}")
        spool = store.new_spool()
        spool.write(b"x" * 200_000)                     # in memory: a row in bodies
        with pytest.raises(StoreError) as refused:
            await store.commit(envelope("BIG"), spool)
        small = store.new_spool()
        small.write(b"x\r\n")
        await store.commit(envelope("SMALL"), small)    # what fits still goes in
        again = store.new_spool()
        again.write(b"x\r\n")
        with pytest.raises(StoreError) as other:
            await store.commit(envelope("SMALL"), again)  # another fault: not "full"
        store.close()
        return refused.value, other.value
    full, other = asyncio.run(go())
    assert full.full and "database or disk is full" in str(full)
    assert not other.full


def test_a_claim_hands_out_due_order_bodies_within_budget_and_leases(tmp_path, monkeypatch):
    """A claim hands out due recipients earliest due first (ties in arrival order), each
    message once with its claimed recipients, brings bodies along in that order only while
    CLAIM_BODIES_BYTES lasts, and leases what it hands out. What the queue's claim promises
    the scheduler, pinned before its storage changes (issue 15)."""
    from relaywarden.queue import store as store_module

    async def go():
        store = Store.open(tmp_path)
        # Due times out of arrival order, with ties; each message has two recipients.
        due_at = [5.0, 3.0, 3.0, 9.0, 1.0, 3.0, 7.0, 2.0]
        for i, at in enumerate(due_at):
            spool = store.new_spool()
            spool.write(b"Subject: %d\r\n\r\n" % i + b"x" * 100 + b"\r\n")
            env = envelope(f"M{i}", recipients=(f"a{i}@x.test", f"b{i}@x.test"))
            await store.commit(dataclasses.replace(env, received_at=at), spool)
        size = len(b"Subject: 0\r\n\r\n" + b"x" * 100 + b"\r\n")
        monkeypatch.setattr(store_module, "CLAIM_BODIES_BYTES", 3 * size)
        due = await store.claim_due(now=8.0, limit=100, lease=60)
        order = sorted((at, i) for i, at in enumerate(due_at) if at <= 8.0)
        assert [m.queue_id for m in due] == [f"M{i}" for _, i in order]
        assert [[r.idx for r in m.recipients] for m in due] == [[0, 1]] * len(order)
        assert [m.body is not None for m in due] == [True, True, True] + [False] * (len(order) - 3)
        for m in due:
            assert m.size == size and m.recipients[0].address == f"a{m.queue_id[1:]}@x.test"
            if m.body is not None:
                assert m.body == await store.read_body(m.queue_id)
        # Leased: a second claim gets nothing until the lease runs out, then all again.
        assert await store.claim_due(now=8.0, limit=100, lease=60) == []
        again = await store.claim_due(now=70.0, limit=100, lease=60)
        assert [m.queue_id for m in again] == [f"M{i}" for _, i in sorted(
            (at, i) for i, at in enumerate(due_at))]
        store.close()
    asyncio.run(go())
