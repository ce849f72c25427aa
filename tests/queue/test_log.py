"""The hand-off log (queue/log.py) and the store's hand-off path (delivery.handoff).

The store is driven through its interface (start_commit, claim_due, record, recover_log)
on a real data directory; what is on disk afterwards is read back with the log's reader
and the queue's own QueueReader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from faultfs import FaultyFiles, eio
from support.stores import journal_kinds, stores
from relaywarden.queue import log as qlog
from relaywarden.queue import store as store_module
from relaywarden.queue import syncer
from relaywarden.queue.store import (Envelope, QueueReader, RecipientRecord,
                                     RecipientStatus, RecipientUpdate, Store, StoreError,
                                     new_queue_id)

BODY = b"Subject: hand-off\r\nMessage-ID: <h@example.com>\r\n\r\nbody\r\n"


def envelope(*recipients: str, status=RecipientStatus.QUEUED) -> Envelope:
    return Envelope(
        queue_id=new_queue_id(), received_at=time.time(), listener="main",
        client_ip="127.0.0.1", client_name=None, helo="client.test", auth_user=None,
        sender="from@example.com", tls=None,
        recipients=tuple(RecipientRecord(address=r, status=status, rule="relay",
                                         notify=("FAILURE",), orcpt="rfc822;" + r)
                         for r in recipients or ("to@example.net",)))


async def commit(store: Store, env: Envelope, body: bytes = BODY) -> None:
    spool = store.new_spool()
    spool.write(body)
    await store.start_commit(env, spool)


def two_processes(data: Path) -> tuple[Store, Store]:
    """The receiving side of two processes (hand-off to the log) and the delivering side
    that follows it, on one data directory."""
    receiving = Store.open(data)
    receiving.start_handoff(deliver_here=False)
    delivering = Store.open(data)
    delivering.start_following()
    return receiving, delivering


def open_store(data: Path, files=None) -> Store:
    store = Store.open(data, **({} if files is None else {"files": files}))
    store.start_handoff()
    return store


def close(*opened: Store) -> None:
    for store in dict.fromkeys(opened):        # each once, in the order given
        store.close()


def killed(store: Store) -> None:
    """kill -9 of a process: its writer stops, nothing is closed."""
    store._jobs.put(None)
    store._writer.join()


async def committed(store: Store, count: int, prefix: str = "r", **changes) -> list[Envelope]:
    envs = [dataclasses.replace(envelope(f"{prefix}{i}@example.net"), **changes)
            for i in range(count)]
    for env in envs:
        await commit(store, env)
    return envs


def entries(data: Path) -> list[tuple[bytes, str]]:
    """The log's entries as recovery reads them (a sealed segment up to its end)."""
    out = []
    for path in qlog.segment_paths(qlog.directory(data)):
        raw = path.read_bytes()
        if qlog.end_path(path).exists():
            raw = raw[:int(qlog.end_path(path).read_text())]
        for kind, payload in qlog.read_entries(raw):
            qid = qlog.split_message(payload)[0]["queue_id"] if kind == qlog.MESSAGE \
                else payload.decode()
            out.append((kind, qid))
    return out


def queued_ids(data: Path) -> list[str]:
    """The messages in the SQLite index (not those only in the log)."""
    db = sqlite3.connect(data / "queue.sqlite3")
    try:
        return [mid for (mid,) in db.execute("SELECT id FROM messages ORDER BY id")]
    finally:
        db.close()


def listed(data: Path) -> list[tuple[str, bool]]:
    """What `queue list` shows: (queue id, from the log)."""
    reader = QueueReader(data)
    try:
        return [(m["id"], m.get("handoff", False)) for m in reader.list()]
    finally:
        reader.close()


# --- the log format -----------------------------------------------------------------------

def test_entries_read_back_and_a_torn_or_damaged_tail_ends_the_segment():
    one = qlog.message_entry({"queue_id": "A"}, b"x" * 100)
    two = qlog.marker(qlog.DONE, "A")
    data = one + two + b"\0" * 64
    assert [k for k, _ in qlog.read_entries(data)] == [qlog.MESSAGE, qlog.DONE]
    assert qlog.split_message(next(qlog.read_entries(data))[1]) == ({"queue_id": "A"}, b"x" * 100)
    # A crash in the middle of the second entry: only the first is read.
    assert [k for k, _ in qlog.read_entries(one + two[:-1])] == [qlog.MESSAGE]
    # A flipped byte in the body fails the CRC: nothing from there on.
    bad = bytearray(one + two)
    bad[20] ^= 0xFF
    assert list(qlog.read_entries(bytes(bad))) == []


# --- the store with hand-off ----------------------------------------------------------------

def test_a_handed_message_is_claimed_from_memory_and_leaves_only_its_journal(tmp_path):
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope("a@example.net", "b@example.org")
            await commit(store, env)
            assert store.log_syncs == 1 and store.commits == 0   # no SQLite transaction
            assert queued_ids(tmp_path) == []                   # not in the index
            assert listed(tmp_path) == [(env.queue_id, True)]   # but the admin sees it
            [due] = await store.claim_due(time.time(), 10, 60)
            assert due.queue_id == env.queue_id and due.body == BODY
            assert [r.address for r in due.recipients] == ["a@example.net", "b@example.org"]
            assert due.recipients[0].notify == ("FAILURE",)
            await store.record(env.queue_id, [
                RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1),
                RecipientUpdate(idx=1, status=RecipientStatus.BOUNCED, attempts=1)],
                events=[{"at": time.time(), "outcome": "delivered"}])
            assert journal_kinds(tmp_path, env.queue_id) == ["received", "attempt"]
            assert queued_ids(tmp_path) == [] and listed(tmp_path) == []
            assert entries(tmp_path) == [(qlog.MESSAGE, env.queue_id), (qlog.DONE, env.queue_id)]
        finally:
            store.close()
    asyncio.run(main())


def test_a_deferred_handed_message_goes_into_the_index_with_its_outcome(tmp_path):
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope("a@example.net", "b@example.org")
            await commit(store, env)
            [due] = await store.claim_due(time.time(), 10, 60)
            later = time.time() + 600
            await store.record(env.queue_id, [
                RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1),
                RecipientUpdate(idx=1, status=RecipientStatus.QUEUED, attempts=1,
                                next_attempt=later, last_error="451 4.4.1 try later")])
            reader = QueueReader(tmp_path)
            try:
                shown = reader.show(env.queue_id)
                assert reader.body(env.queue_id) == BODY
            finally:
                reader.close()
            assert [(r["address"], r["status"], r["attempts"], r["last_error"])
                    for r in shown["recipients"]] == [
                ("a@example.net", "delivered", 1, ""),
                ("b@example.org", "queued", 1, "451 4.4.1 try later")]
            assert shown["recipients"][1]["next_attempt"] == pytest.approx(later)
            assert entries(tmp_path)[-1] == (qlog.INDEXED, env.queue_id)
            # It is the index's now: a later claim reads it from there when it is due. The
            # index is looked at once per INDEX_SCAN_SECONDS; a claim in between finds
            # nothing and the store calls for another claim when the wait is over.
            scans = asyncio.Event()
            store.on_index_scan = scans.set
            assert await store.claim_due(later + 1, 10, 60) == []
            await asyncio.wait_for(scans.wait(), 5)
            [again] = await store.claim_due(later + 1, 10, 60)
            assert again.queue_id == env.queue_id and [r.idx for r in again.recipients] == [1]
        finally:
            store.close()
    asyncio.run(main())


def test_held_mail_is_not_handed_but_indexed(tmp_path):
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope("a@example.net", status=RecipientStatus.HELD)
            await commit(store, env)
            assert store.log_syncs == 0 and store.commits == 1
            assert queued_ids(tmp_path) == [env.queue_id]
        finally:
            store.close()
    asyncio.run(main())


def test_a_crash_leaves_unfinished_messages_that_recovery_queues_and_finished_ones_it_does_not(tmp_path):
    async def crash():
        store = open_store(tmp_path)
        envs = [envelope(f"r{i}@example.net") for i in range(3)]
        for env in envs:
            await commit(store, env)
        due = await store.claim_due(time.time(), 10, 60)
        assert [m.queue_id for m in due] == [e.queue_id for e in envs]
        await store.record(envs[0].queue_id,
                           [RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1)])
        await store.record(envs[1].queue_id, [RecipientUpdate(
            idx=0, status=RecipientStatus.QUEUED, attempts=1, next_attempt=time.time() + 900)])
        # kill -9 here: no close(); envs[2] was answered 250 and is under way.
        store._jobs.put(None)
        store._writer.join()
        return envs

    envs = asyncio.run(crash())
    assert {k for k, _ in entries(tmp_path)} == {qlog.MESSAGE, qlog.DONE, qlog.INDEXED}

    async def restart():
        store = Store.open(tmp_path)
        try:
            assert await store.recover_log() == 1
            assert list((qlog.directory(tmp_path)).iterdir()) == []
            store.start_handoff()
            [due] = await store.claim_due(time.time(), 10, 60)
            assert due.queue_id == envs[2].queue_id and due.body == BODY
            assert due.recipients[0].orcpt == "rfc822;r2@example.net"
        finally:
            store.close()
    asyncio.run(restart())
    assert sorted(queued_ids(tmp_path)) == sorted([envs[1].queue_id, envs[2].queue_id])


def test_a_failing_log_write_or_sync_refuses_the_message_and_hands_nothing(tmp_path):
    async def main():
        files = FaultyFiles()
        store = open_store(tmp_path, files)
        try:
            files.fail_datasync = eio("log fdatasync")
            with pytest.raises(StoreError):
                await commit(store, envelope())
            files.fail_datasync = None
            files.fail_write = eio("log write")
            with pytest.raises(StoreError):
                await commit(store, envelope())
            files.fail_write = None
            assert await store.claim_due(time.time(), 10, 60) == []
            # The disk is healthy again: the next message goes into a new segment.
            env = envelope()
            await commit(store, env)
            [due] = await store.claim_due(time.time(), 10, 60)
            assert due.queue_id == env.queue_id
            assert [k for k, _ in entries(tmp_path)] == [qlog.MESSAGE]
        finally:
            store.close()
    asyncio.run(main())


def test_segments_rotate_and_a_finished_one_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(qlog, "SEGMENT_BYTES", 4096)

    async def main():
        store = open_store(tmp_path)
        try:
            envs = [envelope() for _ in range(12)]          # ~300 bytes each: 3 segments
            for env in envs:
                await commit(store, env)
            assert len(qlog.segment_paths(qlog.directory(tmp_path))) >= 2
            due = await store.claim_due(time.time(), 100, 60)
            for message in due:
                await store.record(message.queue_id, [RecipientUpdate(
                    idx=0, status=RecipientStatus.DELIVERED, attempts=1)])
            # Only the segment still being written to is left.
            assert len(qlog.segment_paths(qlog.directory(tmp_path))) == 1
        finally:
            store.close()
        assert os.listdir(qlog.directory(tmp_path)) == []            # closed with nothing open
    asyncio.run(main())


def test_a_message_refused_by_a_failing_fdatasync_is_not_recovered_after_a_crash(tmp_path):
    """The refused message's entry may be whole in its segment; the segment, kept for the
    message before it that is still under way, is sealed where the last good append ended."""
    files = FaultyFiles()

    async def crash():
        store = open_store(tmp_path, files)
        kept = envelope("kept@example.net")
        await commit(store, kept)
        files.fail_datasync = eio("log fdatasync")
        refused = envelope("refused@example.net")
        with pytest.raises(StoreError):
            await commit(store, refused)
        files.fail_datasync = None
        store._jobs.put(None)          # kill -9: no close()
        store._writer.join()
        return kept, refused

    kept, refused = asyncio.run(crash())
    assert (qlog.MESSAGE, refused.queue_id) not in entries(tmp_path)   # read as recovery reads
    raw = b"".join(p.read_bytes() for p in qlog.segment_paths(qlog.directory(tmp_path)))
    assert refused.queue_id.encode() in raw                           # though it is there

    async def restart():
        store = Store.open(tmp_path)
        try:
            assert await store.recover_log() == 1
            assert os.listdir(qlog.directory(tmp_path)) == []
        finally:
            store.close()
    asyncio.run(restart())
    assert queued_ids(tmp_path) == [kept.queue_id]


# --- two processes: the delivery process follows the receiving process's log -------------

def test_the_delivery_side_follows_the_log_marks_outcomes_and_removes_finished_segments(
        tmp_path, monkeypatch):
    monkeypatch.setattr(qlog, "SEGMENT_BYTES", 4096)

    async def main():
        receiving, delivering = two_processes(tmp_path)
        try:
            envs = [envelope(f"r{i}@example.net") for i in range(20)]   # 3+ segments
            for env in envs:
                await commit(receiving, env)
            assert receiving.commits == 0 and len(qlog.segment_paths(qlog.directory(tmp_path))) >= 3
            # The receiving side hands nothing to itself.
            assert await receiving.claim_due(time.time(), 100, 60) == []
            first = await delivering.claim_due(time.time(), 5, 60)
            assert [m.queue_id for m in first] == [e.queue_id for e in envs[:5]]
            assert first[0].body == BODY
            rest = await delivering.claim_due(time.time(), 100, 60)
            assert [m.queue_id for m in rest] == [e.queue_id for e in envs[5:]]
            for message in first + rest[:-1]:
                await delivering.record(message.queue_id, [RecipientUpdate(
                    idx=0, status=RecipientStatus.DELIVERED, attempts=1)])
            later = time.time() + 600
            await delivering.record(rest[-1].queue_id, [RecipientUpdate(
                idx=0, status=RecipientStatus.QUEUED, attempts=1, next_attempt=later)])
            # Segments read to their seal with every message marked are gone; the one the
            # receiving side still writes to stays.
            assert len(qlog.segment_paths(qlog.directory(tmp_path))) == 1
            assert queued_ids(tmp_path) == [envs[-1].queue_id]   # the deferred one, indexed
            assert journal_kinds(tmp_path, envs[0].queue_id) == ["received"]   # no events given
        finally:
            delivering.close()
            receiving.close()
    asyncio.run(main())


async def claimed(delivering: Store, count: int, sizes: int = 1) -> list:
    """Claims of 1, 2, ... ``sizes`` messages in turn until ``count`` are taken; each claim
    must take some (a follower that stops short fails here)."""
    got: list = []
    while len(got) < count:
        taken = await delivering.claim_due(time.time(), 1 + len(got) % sizes, 60)
        assert taken, "the follower stopped short"
        got += taken
    return got


def test_the_follower_reads_a_window_and_an_entry_larger_than_it_whole(tmp_path, capsys):
    """The delivery side reads the log in windows sized for the claim (not all that is
    durable at once); an entry larger than the window is read whole, not taken for damage,
    and small entries that straddle a window's end are read whole at the next."""
    async def main():
        receiving, delivering = stores(tmp_path, "separate")
        try:
            big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
            bodies = [BODY * (1 + i % 7) for i in range(40)]
            bodies[3] = big * 300                                # ~300 KB, in the log
            envs = [envelope(f"r{i}@example.net") for i in range(len(bodies))]
            for env, body in zip(envs, bodies):
                await commit(receiving, env, body)
            got = await claimed(delivering, len(envs), 3)
            assert [m.queue_id for m in got] == [e.queue_id for e in envs]
            assert [m.body for m in got] == bodies
        finally:
            close(delivering, receiving)
    asyncio.run(main())
    assert "damaged" not in capsys.readouterr().err


def test_the_follower_reads_about_what_it_hands_out_behind_a_backlog_of_large_entries(
        tmp_path, monkeypatch):
    """Claims of a few 50 KB messages each, with hundreds durable behind them: each read is
    sized by the entries' length, not all that is durable (a window too small for one entry
    used to be followed by a read of up to 4 MB: six times the content, issue 15)."""
    read = []
    real_pread = os.pread

    def counting_pread(fd, size, offset):
        data = real_pread(fd, size, offset)
        read.append(len(data))
        return data
    monkeypatch.setattr(qlog.os, "pread", counting_pread)

    async def main():
        receiving, delivering = stores(tmp_path, "separate")
        try:
            body = b"Subject: large\r\n\r\n" + (b"X" * 78 + b"\r\n") * 640   # ~51 KB
            envs = [envelope(f"r{i}@example.net") for i in range(200)]
            for env in envs:
                await commit(receiving, env, body)
            read.clear()
            got = await claimed(delivering, len(envs), 4)
            assert [m.queue_id for m in got] == [e.queue_id for e in envs]
            assert all(m.body == body for m in got)
            content = len(body) * len(envs)
            # The 20-octet reads of the synced position are counted too.
            assert sum(read) < 1.5 * content, (sum(read), content)
        finally:
            close(delivering, receiving)
    asyncio.run(main())


def test_the_follower_reads_each_segments_seal_once(tmp_path, monkeypatch):
    """A sealed segment's end never changes: claims one message at a time through several
    sealed segments read each seal once, not once per claim."""
    monkeypatch.setattr(qlog, "SEGMENT_BYTES", 4096)
    asked = []
    real = qlog.sealed_end
    monkeypatch.setattr(qlog, "sealed_end", lambda path: asked.append(path.name) or real(path))

    async def main():
        receiving, delivering = two_processes(tmp_path)
        try:
            envs = await committed(receiving, 30)
            segments = len(qlog.segment_paths(qlog.directory(tmp_path)))
            assert segments >= 4
            got = await claimed(delivering, len(envs))
            assert [m.queue_id for m in got] == [e.queue_id for e in envs]
            assert len(asked) == len(set(asked)) == segments - 1, asked
        finally:
            close(delivering, receiving)
    asyncio.run(main())


def test_a_restarted_delivery_process_skips_what_its_predecessor_finished(tmp_path):
    async def main():
        receiving, first = stores(tmp_path, "separate")
        try:
            envs = await committed(receiving, 3)
            due = await first.claim_due(time.time(), 10, 60)
            await first.record(due[0].queue_id, [RecipientUpdate(
                idx=0, status=RecipientStatus.DELIVERED, attempts=1)])
            killed(first)                        # the delivery process alone
            second = Store.open(tmp_path)
            second.start_following()
            try:
                again = await second.claim_due(time.time(), 10, 60)
                # The two it had under way come again (at least once); the finished one not.
                assert [m.queue_id for m in again] == [e.queue_id for e in envs[1:]]
            finally:
                second.close()
        finally:
            receiving.close()
    asyncio.run(main())


def test_the_receiving_side_stops_handing_off_while_delivery_is_far_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "HANDOFF_MAX_BACKLOG", 1000)
    monkeypatch.setattr(store_module, "BACKLOG_CHECK_SECONDS", 0)

    async def main():
        receiving, delivering = two_processes(tmp_path)
        try:
            for _ in range(10):                  # ~300 bytes each, nobody reads them
                await commit(receiving, envelope())
            handed, indexed = receiving.log_syncs, receiving.commits
            assert handed + indexed == 10 and 0 < handed < 10
            # Delivery catches up (the handed ones from the log, the others from the index):
            # hand-off again.
            assert len(await delivering.claim_due(time.time(), 100, 60)) == 10
            await commit(receiving, envelope())
            assert receiving.commits == indexed
        finally:
            delivering.close()
            receiving.close()
    asyncio.run(main())


def test_past_the_bound_hand_off_goes_on_while_delivery_reads_on_up_to_the_memory_bound(
        tmp_path, monkeypatch):
    """A burst that runs ahead of a delivery process that keeps reading stays on the log
    (it moves what waits a second into the index itself); once it stops reading, or the
    log is HANDOFF_MAX_BYTES behind, new mail goes into the index."""
    monkeypatch.setattr(store_module, "HANDOFF_MAX_BACKLOG", 1000)
    monkeypatch.setattr(store_module, "HANDOFF_MAX_BYTES", 8000)
    # The receiving side looks at the delivery's position every BACKLOG_CHECK_SECONDS; here
    # only where the test says (look()), so that what happens between two looks is known.
    monkeypatch.setattr(store_module, "BACKLOG_CHECK_SECONDS", 3600)

    async def main():
        receiving, delivering = two_processes(tmp_path)
        sent: list[str] = []
        taken: list[str] = []

        def look() -> None:
            receiving._backlog_checked = float("-inf")

        async def send() -> None:
            env = envelope()
            sent.append(env.queue_id)
            await commit(receiving, env)

        async def take() -> None:
            taken.extend(m.queue_id for m in await delivering.claim_due(time.time(), 1, 60))

        try:
            await send()
            await take()
            for _ in range(15):        # ~440 bytes each: two in, one out between two looks
                look()
                await send()
                await send()
                await take()
            assert receiving.log_syncs == 31 and receiving.commits == 0
            assert receiving._log.backlog() > 1000      # past the bound, reading on
            # Delivery stops reading: a look sees its last read; the next one sees its
            # position where it was, and new mail goes into the index.
            look()
            await send()
            assert receiving.commits == 0
            look()
            await send()
            await send()
            assert receiving.commits == 2
            # Reading on again, until the log is HANDOFF_MAX_BYTES behind.
            await take()
            for _ in range(10):
                look()
                await send()
                await send()
                await take()
            assert receiving.commits > 2
            assert receiving._log.backlog() > 8000 - 1000
            # Every message is delivered once: from the log or from the index.
            while more := await delivering.claim_due(time.time() + 1, 100, 60):
                taken.extend(m.queue_id for m in more)
            assert sorted(taken) == sorted(sent)
        finally:
            close(delivering, receiving)
    asyncio.run(main())


@pytest.mark.parametrize("layout", ["one process", "two processes"])
def test_back_pressure_the_answer_waits_while_delivery_is_behind(tmp_path, monkeypatch, layout):
    """delivery.in_flow_delay: once the oldest message delivery has not taken has waited
    FLOW_SECONDS, Store.inflow() gives the session a future to answer after: resolved
    when delivery has caught up, or after in_flow_delay, whichever comes first."""
    monkeypatch.setattr(store_module, "FLOW_SECONDS", 0.05)

    async def main():
        if layout == "one process":
            receiving = delivering = open_store(tmp_path)
        else:
            receiving, delivering = two_processes(tmp_path)
        try:
            receiving.in_flow_delay = 0.4
            await committed(receiving, 3)
            assert receiving.inflow() is None           # nothing has waited yet
            await asyncio.sleep(0.1)
            # Nobody takes them: an answer waits the whole in_flow_delay.
            waiter = receiving.inflow()
            assert waiter is not None
            started = time.monotonic()
            await waiter
            assert 0.3 < time.monotonic() - started < 2.0
            # Delivery takes them: the next poll lets the answer go.
            waiter = receiving.inflow()
            assert waiter is not None
            started = time.monotonic()
            assert len(await delivering.claim_due(time.time(), 100, 60)) == 3
            await waiter
            assert time.monotonic() - started < 0.3
            assert receiving.inflow() is None
            # Off: never a wait, however far behind.
            await committed(receiving, 1)
            await asyncio.sleep(0.1)
            receiving.in_flow_delay = 0.0
            assert receiving.inflow() is None
        finally:
            close(receiving, delivering)
    asyncio.run(main())


# --- a first attempt that lingers, a message that waits: into the index ----------------------

def lease_of(data: Path, qid: str) -> float:
    db = sqlite3.connect(data / "queue.sqlite3")
    try:
        return db.execute("SELECT MAX(lease_until) FROM recipients WHERE message_id = ?",
                          (qid,)).fetchone()[0]
    finally:
        db.close()


def test_a_lingering_first_attempt_goes_into_the_index_leased_and_its_outcome_lands_there(
        tmp_path):
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope()
            await commit(store, env)
            [due] = await store.claim_due(time.time(), 10, 60)
            assert due.handed and queued_ids(tmp_path) == []
            until = time.time() + 120
            assert await store.index_handed([env.queue_id], until) == [env.queue_id]
            assert queued_ids(tmp_path) == [env.queue_id]
            assert lease_of(tmp_path, env.queue_id) == until     # the attempt holds it
            assert (qlog.INDEXED, env.queue_id) in entries(tmp_path)
            assert listed(tmp_path) == [(env.queue_id, False)]   # from the index now
            assert journal_kinds(tmp_path, env.queue_id) == ["received"]
            # Indexed once only: a second call finds it gone from the log's books.
            assert await store.index_handed([env.queue_id], until) == []
            await store.record(env.queue_id, [RecipientUpdate(
                idx=0, status=RecipientStatus.DELIVERED, attempts=1)])
            assert queued_ids(tmp_path) == []
        finally:
            store.close()
    asyncio.run(main())


@pytest.mark.parametrize("layout", ["inline", "separate"])
def test_handed_messages_that_wait_for_an_attempt_go_into_the_index_due_now(tmp_path, layout):
    """Delivery is busy (no claim took them): received before the cut-off, they go into
    the index due now; a newer one stays handed and the next claim takes it from memory."""
    async def main():
        receiving, delivering = stores(tmp_path, layout)
        try:
            old = await committed(receiving, 3, "old", received_at=time.time() - 5)
            [new] = await committed(receiving, 1, "new")
            ids = await delivering.index_waiting(time.time() - 1)
            assert sorted(ids) == sorted(e.queue_id for e in old)
            assert sorted(queued_ids(tmp_path)) == sorted(ids)
            assert all(lease_of(tmp_path, qid) == 0 for qid in ids)    # due now
            [handed] = await delivering.claim_due(time.time(), 1, 60)
            assert handed.queue_id == new.queue_id and handed.handed
            rest = await delivering.claim_due(time.time() + 1, 10, 60)
            assert sorted(m.queue_id for m in rest) == sorted(ids)
            assert not any(m.handed for m in rest)
        finally:
            close(delivering, receiving)
    asyncio.run(main())


def test_a_restarted_delivery_process_skips_what_its_predecessor_indexed(tmp_path):
    """The predecessor put a lingering message into the index and died before its marker
    was written: the next delivery process does not hand it out again (the index has it,
    and its lease lapses or is released), and marks it."""
    async def main():
        receiving, first = stores(tmp_path, "separate")
        try:
            envs = await committed(receiving, 2)
            await first.claim_due(time.time(), 10, 60)
            await first.index_handed([envs[0].queue_id], time.time() + 120)
            killed(first)                        # the delivery process alone ...
            for marks in qlog.directory(tmp_path).glob("*.marks"):
                marks.unlink()                   # ... before its marker reached the file
            second = Store.open(tmp_path)
            second.start_following()
            try:
                again = await second.claim_due(time.time(), 10, 60)
                assert [m.queue_id for m in again if m.handed] == [envs[1].queue_id]
                marks = b"".join(p.read_bytes() for p in
                                 qlog.directory(tmp_path).glob("*.marks"))
                assert qlog.marker(qlog.INDEXED, envs[0].queue_id) in marks
            finally:
                second.close()
        finally:
            receiving.close()
    asyncio.run(main())


def test_segments_written_beside_the_text_logs_are_adopted_and_recovered(tmp_path):
    """A relay of 2026-12-05/06 kept its segments in data_dir/log (the text logs' directory):
    a start moves them into data_dir/handoff and recovers what they hold."""
    async def crash():
        store = open_store(tmp_path)
        env = envelope()
        await commit(store, env)
        store._jobs.put(None)
        store._writer.join()
        return env
    env = asyncio.run(crash())
    legacy = tmp_path / "log"
    legacy.mkdir()
    (legacy / "mail.log").write_text("a text log stays where it is\n")
    for path in qlog.directory(tmp_path).iterdir():
        os.replace(path, legacy / path.name)

    async def restart():
        store = Store.open(tmp_path)
        try:
            assert await store.recover_log() == 1
        finally:
            store.close()
    asyncio.run(restart())
    assert queued_ids(tmp_path) == [env.queue_id]
    assert os.listdir(legacy) == ["mail.log"]


@pytest.mark.parametrize("layout", ["inline", "separate"])
def test_waiting_messages_the_index_cannot_take_stay_handed(tmp_path, layout):
    """A full disk: the index cannot take the messages that waited (its COMMIT fails).
    They stay where claims find them, in order; not lost until a restart's recovery."""
    async def main():
        files = FaultyFiles()
        receiving, delivering = stores(tmp_path, layout, files)
        try:
            old = await committed(receiving, 3, "old", received_at=time.time() - 5)
            files.fail_commit = sqlite3.OperationalError("database or disk is full")
            with pytest.raises(StoreError):
                await delivering.index_waiting(time.time() - 1)
            files.fail_commit = None
            assert queued_ids(tmp_path) == []
            due = await delivering.claim_due(time.time(), 10, 60)
            assert [m.queue_id for m in due] == [e.queue_id for e in old]
            assert all(m.handed for m in due)
        finally:
            close(delivering, receiving)
    asyncio.run(main())


@pytest.mark.parametrize("layout", ["inline", "separate"])
def test_a_claim_whose_index_scan_fails_still_hands_out_what_it_took(tmp_path, layout):
    """A full disk: a claim's scan of the index fails (it writes leases). The handed
    messages it took already come out of it all the same; they have no other way."""
    async def main():
        files = FaultyFiles()
        receiving, delivering = stores(tmp_path, layout, files)
        try:
            envs = await committed(receiving, 3)
            files.fail_commit = sqlite3.OperationalError("database or disk is full")
            due = await delivering.claim_due(time.time(), 10, 60)
            assert [m.queue_id for m in due] == [e.queue_id for e in envs]
            # With nothing handed, the failing scan is told (at the next look at the index).
            await asyncio.sleep(store_module.INDEX_SCAN_SECONDS * 2)
            with pytest.raises(StoreError):
                await delivering.claim_due(time.time() + 1, 10, 60)
        finally:
            files.fail_commit = None
            close(delivering, receiving)
    asyncio.run(main())


def test_a_message_that_moves_into_the_index_while_it_is_listed_is_seen_once(tmp_path,
                                                                            monkeypatch):
    """The views read the log before the index: a message that goes from one to the other
    between the two reads is listed, shown and counted once (read the other way round it
    was in neither: `queue list` missed it)."""
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope()
            await commit(store, env)
            await store.claim_due(time.time(), 10, 60)

            def move() -> None:      # the delivery side indexes it, in the middle of a read
                runner = threading.Thread(
                    target=lambda: asyncio.run(store.index_handed([env.queue_id], 0.0)))
                runner.start()
                runner.join()
            # It moves right after the first of the two reads, whichever that is.
            moved = []

            def after_first_read(name):
                original = getattr(QueueReader, name)

                def read(self, *args, **kwargs):
                    result = original(self, *args, **kwargs)
                    if not moved:
                        moved.append(name)
                        move()
                    return result
                monkeypatch.setattr(QueueReader, name, read)
            after_first_read("_list_index")
            after_first_read("_listed_from_log")
            reader = QueueReader(tmp_path)
            try:
                assert [m["id"] for m in reader.list()] == [env.queue_id]
                assert reader.count() == 1
                assert reader.show(env.queue_id)["id"] == env.queue_id
            finally:
                reader.close()
            assert queued_ids(tmp_path) == [env.queue_id]
        finally:
            store.close()
    asyncio.run(main())


def test_a_message_that_moves_into_the_index_while_it_is_counted_is_counted_once(
        tmp_path, monkeypatch):
    """queue_summary (the metrics' and the status page's counts) reads the log, then asks
    the index which of its messages it holds, then counts the index: a message that goes
    from the log into the index between the question and the count is counted once (in
    one snapshot of the index), not twice."""
    async def main():
        store = open_store(tmp_path)
        try:
            env = envelope("a@example.net", "b@example.net")
            await commit(store, env)
            await store.claim_due(time.time(), 10, 60)
            original = store_module.has_message
            moved = []

            def has_message(db, queue_id):
                found = original(db, queue_id)
                if not moved:       # the delivery side indexes it, right after the question
                    moved.append(queue_id)
                    runner = threading.Thread(
                        target=lambda: asyncio.run(store.index_handed([env.queue_id], 0.0)))
                    runner.start()
                    runner.join()
                return found
            monkeypatch.setattr(store_module, "has_message", has_message)
            db = sqlite3.connect(f"file:{tmp_path / 'queue.sqlite3'}?mode=ro", uri=True)
            try:
                counts, oldest = store_module.queue_summary(db, qlog.directory(tmp_path))
            finally:
                db.close()
            assert moved == [env.queue_id] and queued_ids(tmp_path) == [env.queue_id]
            assert counts == {"queued": 2}
            assert oldest == pytest.approx(env.received_at)
        finally:
            store.close()
    asyncio.run(main())


def test_a_message_entry_names_its_queue_id_without_decoding_its_envelope():
    env = envelope()
    entry = qlog.message_entry(store_module.envelope_record(env), BODY)
    [(kind, payload)] = list(qlog.read_entries(entry))
    assert kind == qlog.MESSAGE and qlog.message_id(payload) == env.queue_id
    # An envelope written some other way (keys in another order) is decoded in full.
    other = qlog.message_entry({"received_at": 1.0, "queue_id": "ABC"}, BODY)
    assert qlog.message_id(list(qlog.read_entries(other))[0][1]) == "ABC"


# --- two processes: the receiving side's fdatasync in a child (queue/syncer.py) -------------

#: A child whose first fdatasync fails (it answers EIO, then goes on as the real one), and
#: one that dies without an answer.
FAILING_CHILD = ("import os, sys; sys.stdin.buffer.readline(); os.write(1, b'5\\n'); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'relaywarden.queue.syncer'])")
DYING_CHILD = "import sys; sys.stdin.buffer.readline()"


@pytest.mark.parametrize("child, says", [(FAILING_CHILD, "Input/output error"),
                                         (DYING_CHILD, "process ended")])
def test_a_failed_sync_in_the_child_refuses_its_batch_and_the_next_child_takes_over(
        tmp_path, monkeypatch, child, says):
    """The receiving process appends on its loop and a child fdatasyncs (two processes).
    When the child says the sync failed, or ends without an answer, the batch it was asked
    about is refused (the client gets a 451), its segment ends before it (never read back
    by the delivery process), and the next message gets a new child and its 250."""
    async def main():
        receiving, delivering = two_processes(tmp_path)
        try:
            kept = envelope("kept@example.net")
            await commit(receiving, kept)
            monkeypatch.setattr(syncer, "COMMAND", [sys.executable, "-c", child])
            receiving._syncer.close()      # the next question starts the failing child
            refused = envelope("refused@example.net")
            with pytest.raises(StoreError, match=says) as caught:
                await commit(receiving, refused)
            assert not caught.value.full
            monkeypatch.undo()              # a new child (after the dead one) is a real one
            after = envelope("after@example.net")
            await commit(receiving, after)
            assert receiving.log_syncs == 2
            claimed = await delivering.claim_due(time.time(), 100, 60)
            assert [m.queue_id for m in claimed] == [kept.queue_id, after.queue_id]
            segments = qlog.segment_paths(qlog.directory(tmp_path))
            assert len(segments) == 2
            assert qlog.sealed_end(segments[0]) == len(entries_of(segments[0], kept))
        finally:
            delivering.close()
            receiving.close()
    asyncio.run(main())


def entries_of(segment: Path, env: Envelope) -> bytes:
    """The bytes of the segment's first entry (``env``'s), from the file."""
    data = segment.read_bytes()
    entry = qlog.message_entry(store_module.envelope_record(env), BODY)
    assert data.startswith(entry)
    return entry
