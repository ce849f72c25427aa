"""The journal's files (queue/journal.py): where a message that hand-off finished on its
first attempt leaves its story, outside SQLite, and how the history indexer takes it from
there. Driven through the real Store (hand-off, both layouts), the real indexer step and
the real History; the files are read back with the journal's own reader."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from pathlib import Path

import pytest
from support.stores import stores

from relaywarden.history import History
from relaywarden.history.indexer import index_once
from relaywarden.queue import journal as qjournal
from relaywarden.queue import log as qlog
from relaywarden.queue.fileops import FileOps
from relaywarden.queue.store import (Envelope, RecipientRecord, RecipientStatus,
                                     RecipientUpdate, Store, StoreError, new_queue_id)

BODY = b"Subject: straight through\r\nMessage-ID: <st@example.com>\r\n\r\nbody\r\n"


def envelope(to: str = "to@example.net") -> Envelope:
    return Envelope(
        queue_id=new_queue_id(), received_at=time.time(), listener="main",
        client_ip="127.0.0.1", client_name=None, helo="client.test", auth_user=None,
        sender="from@example.com", tls=None,
        recipients=(RecipientRecord(address=to, status=RecipientStatus.QUEUED, rule="relay"),))


async def relay_one(receiving: Store, delivering: Store, to: str = "to@example.net") -> str:
    """Receive a message, take it for its first attempt, record it delivered."""
    env = envelope(to)
    spool = receiving.new_spool()
    spool.write(BODY)
    await receiving.start_commit(env, spool)
    [due] = await delivering.claim_due(time.time(), 10, 60)
    assert due.queue_id == env.queue_id and due.handed
    commits = delivering.commits
    await delivering.record(env.queue_id, [
        RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1,
                        remote_mta="mx.example.net [127.0.0.1]:25")],
        events=[{"at": time.time(), "idx": 0, "to": to, "outcome": "delivered",
                 "remote": "mx.example.net [127.0.0.1]:25", "reply": "250 2.0.0 Ok"}])
    assert delivering.commits == commits          # its outcome took no SQLite transaction
    return env.queue_id


def sqlite_journal(data: Path) -> int:
    db = sqlite3.connect(data / "queue.sqlite3")
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM journal").fetchone()
        return n
    finally:
        db.close()


def files(data: Path) -> list[str]:
    return qjournal.file_names(qjournal.files_directory(data))


def index_all(data: Path) -> History:
    history = History.open(data)
    journal = qjournal.Journal(data)
    try:
        while index_once(history, journal, batch=1000) >= 1000:
            pass
    finally:
        journal.close()
    return history


def events(history: History, queue_id: str) -> list[tuple[str, str]]:
    t = history.timeline(queue_id)
    return [] if t is None else [(e["kind"], e["recipient"]) for e in t["events"]]


@pytest.mark.parametrize("layout", ["inline", "separate"])
def test_a_message_finished_on_its_first_attempt_reaches_the_history_from_a_file(
        tmp_path, layout):
    async def main():
        receiving, delivering = stores(tmp_path, layout)
        try:
            qid = await relay_one(receiving, delivering)
            # Never in SQLite: not its tables, not its journal; its story is in a file.
            assert sqlite_journal(tmp_path) == 0
            assert [e.kind for e in qjournal.read_files(
                qjournal.files_directory(tmp_path), qjournal.START, 100)[0]] == [
                "received", "attempt"]
            history = index_all(tmp_path)
            try:
                assert events(history, qid) == [("received", "to@example.net"),
                                                ("attempt", "to@example.net")]
                t = history.timeline(qid)
                assert t["status"] == "delivered" and t["subject"] == "straight through"
                assert t["message_id"] == "st@example.com" and t["size"] == len(BODY)
            finally:
                history.close()
            # Its writer still holds the file: it stays (more may come).
            assert len(files(tmp_path)) == 1
            return qid
        finally:
            for store in dict.fromkeys((delivering, receiving)):
                store.close()
    qid = asyncio.run(main())
    # Closed by its writer and indexed to its end: the next step removes it, and indexes
    # nothing twice.
    history = index_all(tmp_path)
    try:
        assert files(tmp_path) == []
        assert events(history, qid) == [("received", "to@example.net"),
                                        ("attempt", "to@example.net")]
    finally:
        history.close()


def test_an_open_file_is_read_to_its_last_whole_line_and_later_files_wait_for_it(tmp_path):
    directory = tmp_path / "journal"
    first = qjournal.Appender(directory)
    first.append([qjournal.row(1.0, "A", "received", {"n": 1}),
                  qjournal.row(2.0, "A", "attempt", {"n": 2})])
    [name] = qjournal.file_names(directory)
    # Half a line more, as if a write were under way.
    with open(directory / name, "ab") as f:
        f.write(b'[3.0,"A","attempt",{"n"')
    got, position, finished = qjournal.read_files(directory, qjournal.START, 100)
    assert [(e.at, e.queue_id, e.kind, e.data) for e in got] == [
        (1.0, "A", "received", {"n": 1}), (2.0, "A", "attempt", {"n": 2})]
    assert finished is None                       # its writer holds it
    # A limit stops in the middle: the position says where.
    one, middle, _ = qjournal.read_files(directory, qjournal.START, 1)
    assert [e.at for e in one] == [1.0]
    assert [e.at for e in qjournal.read_files(directory, middle, 100)[0]] == [2.0]
    # A second writer's file (a restarted delivery process) waits behind the open one.
    second = qjournal.Appender(directory)
    time.sleep(0.001)
    second.append([qjournal.row(4.0, "B", "received", {"n": 4})])
    assert qjournal.read_files(directory, position, 100)[0] == []
    # The first writer dies (its lock goes): the torn tail is skipped, the file finished.
    first.close()
    got, position, finished = qjournal.read_files(directory, position, 100)
    assert got == [] and finished == directory / name
    finished.unlink()
    got, position, finished = qjournal.read_files(directory, position, 100)
    assert [e.queue_id for e in got] == ["B"] and finished is None
    second.close()


def test_a_damaged_line_is_skipped_not_a_stop(tmp_path, capsys):
    directory = tmp_path / "journal"
    writer = qjournal.Appender(directory)
    writer.append([qjournal.row(1.0, "A", "received", {})])
    [name] = qjournal.file_names(directory)
    with open(directory / name, "ab") as f:
        f.write(b"not json\n[1,2]\n")
    writer.append([qjournal.row(2.0, "B", "received", {})])
    writer.close()
    got, _, finished = qjournal.read_files(directory, qjournal.START, 100)
    assert [e.queue_id for e in got] == ["A", "B"] and finished is not None
    assert capsys.readouterr().err.count("a damaged line") == 2


def test_a_line_reads_back_as_written_escapes_and_all(tmp_path, capsys):
    """The reader takes a line's plain queue id and kind without the JSON parser; anything
    JSON had to escape goes through it, and the data's text is kept as written."""
    directory = tmp_path / "journal"
    writer = qjournal.Appender(directory)
    rows = [qjournal.row(1.5, "Q1", "received", {"subject": "caf\u00e9, \"quoted\""}),
            qjournal.row(2.0, 'odd"id', "attempt", {"n": [1, 2]}),
            qjournal.row(3.0, "Q\\2", "admin", {}),
            qjournal.row(4.0, "Q3", "kind,with,commas", {})]
    writer.append(rows)
    writer.close()
    got, _, _ = qjournal.read_files(directory, qjournal.START, 10)
    assert [(e.at, e.queue_id, e.kind, e.data, e.text) for e in got] == [
        (1.5, "Q1", "received", {"subject": "caf\u00e9, \"quoted\""}, rows[0][3]),
        (2.0, 'odd"id', "attempt", {"n": [1, 2]}, rows[1][3]),
        (3.0, "Q\\2", "admin", {}, "{}")]
    # A kind with commas in it (the queue writes none) cannot be told from the data: that
    # line is taken for damaged, and said.
    assert capsys.readouterr().err.count("a damaged line") == 1


def test_a_line_is_what_json_would_write():
    """line() writes a row's time, queue id and kind without the JSON encoder where the
    encoder would write them unchanged: the bytes must be the encoder's all the same."""
    import json
    for at, qid, kind in [(1765000000.123456, "AB12cd34", "received"),
                          (0.1 + 0.2, "q-1.x@y+z", "attempt"), (7, "Q", "admin"),
                          (float("inf"), "caf\u00e9", "a b"), (float("nan"), 'q"1', "k\\"),
                          (1e22, "", "\n")]:
        data = json.dumps({"n": 1}, separators=(",", ":"))
        expected = f"[{json.dumps(at)},{json.dumps(qid)},{json.dumps(kind)},{data}]\n"
        assert qjournal.line((at, qid, kind, data)) == expected.encode()


class TornFiles(FileOps):
    """A disk that fills up in the middle of a write: half the data lands, then ENOSPC."""

    def __init__(self) -> None:
        self.tear = False

    def write(self, fd, data) -> None:
        if self.tear:
            self.tear = False
            os.write(fd, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(fd, data)


def test_a_write_cut_short_fails_the_record_and_the_next_one_lands_whole(tmp_path, capsys):
    async def main():
        torn = TornFiles()
        receiving, delivering = stores(tmp_path, "separate", files=torn)
        try:
            env = envelope()
            spool = receiving.new_spool()
            spool.write(BODY)
            await receiving.start_commit(env, spool)
            [due] = await delivering.claim_due(time.time(), 10, 60)
            update = [RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1)]
            attempt = [{"at": time.time(), "idx": 0, "to": "to@example.net",
                        "outcome": "delivered"}]
            torn.tear = True
            with pytest.raises(StoreError) as failed:
                await delivering.record(env.queue_id, update, events=attempt)
            assert failed.value.full                       # ENOSPC: said as a full disk
            # No done marker: the message is still the log's, unfinished.
            assert (qlog.DONE, env.queue_id) not in marks(tmp_path)
            # The engine tries again (it keeps the outcome): now it lands, in a new file.
            await delivering.record(env.queue_id, update, events=attempt)
            assert len(files(tmp_path)) == 2
            return env.queue_id
        finally:
            delivering.close()
            receiving.close()
    qid = asyncio.run(main())
    history = index_all(tmp_path)
    try:
        # The torn half line is dropped (and said); the story is there once.
        assert events(history, qid) == [("received", "to@example.net"),
                                        ("attempt", "to@example.net")]
        assert files(tmp_path) == []
    finally:
        history.close()
    assert "torn last line" in capsys.readouterr().err


def marks(data: Path) -> list[tuple[bytes, str]]:
    out = []
    for path in qlog.segment_paths(qlog.directory(data)):
        for source in (path, qlog.marks_path(path)):
            raw = source.read_bytes() if source.exists() else b""
            out.extend((kind, payload.decode()) for kind, payload in qlog.read_entries(raw)
                       if kind != qlog.MESSAGE)
    return out


def test_a_crash_after_indexing_a_file_but_before_removing_it_indexes_nothing_twice(tmp_path):
    async def main():
        receiving, delivering = stores(tmp_path, "inline")
        try:
            return [await relay_one(receiving, delivering, f"r{i}@example.net")
                    for i in range(3)]
        finally:
            receiving.close()
    ids = asyncio.run(main())
    # The indexer's first two moves, then a crash: committed, the file not removed.
    history = History.open(tmp_path)
    position = history.files_position()
    got, to, finished = qjournal.read_files(qjournal.files_directory(tmp_path), position, 100)
    assert len(got) == 6 and finished is not None
    assert history.apply_files(got, position, to)
    # A second indexer that read at the old position is turned away.
    assert not history.apply_files(got, position, to)
    history.close()
    history = index_all(tmp_path)        # the restarted indexer
    try:
        for qid in ids:
            assert [k for k, _ in events(history, qid)] == ["received", "attempt"]
        (n,) = history._db.execute("SELECT COUNT(*) FROM events").fetchone()
        assert n == 6 and files(tmp_path) == []
    finally:
        history.close()


def test_with_the_history_off_closed_files_are_removed_and_the_open_one_kept(tmp_path):
    directory = tmp_path / "journal"
    old = qjournal.Appender(directory)
    old.append([qjournal.row(1.0, "A", "received", {})])
    old.close()
    time.sleep(0.001)
    live = qjournal.Appender(directory)
    live.append([qjournal.row(2.0, "B", "received", {})])
    stale = directory / ".00000000000000000001-1.jsonl"     # a writer died before its rename
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    assert qjournal.remove_closed_files(directory) == 2
    assert [e.queue_id for e in qjournal.read_files(directory, qjournal.START, 10)[0]] == ["B"]
    live.close()
