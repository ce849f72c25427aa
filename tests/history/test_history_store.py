"""The history fed from the queue's journal: the real Store and QueueAdmin write, the
indexer step moves entries into a History, searches and timelines read them back."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywarden.history import History, HistoryError, message_status, parse_since
from relaywarden.history.indexer import index_once, seed_from_queue
from relaywarden.history.store import _whole
from relaywarden.queue.admin import QueueAdmin
from relaywarden.queue.journal import START, Journal, JournalEntry, _header_end, header_fields
from relaywarden.queue.store import (
    Envelope,
    QueueReader,
    RecipientRecord,
    RecipientStatus,
    RecipientUpdate,
    Store,
)

BODY = (b"Received: from x\r\nSubject: =?utf-8?q?Scan_r=C3=A9sultat?=\r\n"
        b"Message-ID: <abc.123@scanner.example.com>\r\n\r\nhello\r\n")


def envelope(qid: str, *, sender="scan@example.com", recipients=("boss@example.net",),
             at: float | None = None, status=RecipientStatus.QUEUED) -> Envelope:
    return Envelope(
        queue_id=qid, received_at=time.time() if at is None else at, listener="main",
        client_ip="10.0.5.20", client_name="scanner.example.com", helo="scanner",
        auth_user=None, sender=sender, tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
        recipients=tuple(RecipientRecord(address=r, status=status, rule="relay.networks[0]")
                         for r in recipients))


async def commit(store: Store, env: Envelope, body: bytes = BODY) -> None:
    spool = store.new_spool()
    spool.write(body)
    await store.commit(env, spool)
    spool.discard()


def index(tmp_path) -> History:
    history = History.open(tmp_path)
    journal = Journal(tmp_path)
    while index_once(history, journal):
        pass
    assert journal.read(0) == [], "the journal is trimmed behind the history's cursor"
    journal.close()
    return history


def test_header_fields_unfold_and_take_the_first():
    head = (b"Subject: one\r\n two\r\nMessage-Id:  <x@y>\r\nSubject: second\r\n\r\n"
            b"Subject: in the body\r\n")
    assert header_fields(head) == {"subject": "one two", "message_id": "<x@y>"}
    assert header_fields(b"From: a\r\n\r\nSubject: body\r\n") == {}


def _header_fields_by_regex(head: bytes) -> dict[str, str]:
    """What header_fields found before it used bytes.find (2026-12-07): the reference. With
    one fix: that code looked a second Message-ID up under its header name, not its key,
    so the last one won where its docstring said the first; here the first counts for
    both fields, as it does now."""
    import re
    end = re.search(rb"\r?\n\r?\n", head)
    section = head if end is None else head[:end.start()]
    found: dict[str, str] = {}
    for m in re.finditer(rb"^(message-id|subject)[ \t]*:(.*(?:\r?\n[ \t].*)*)", section,
                         re.IGNORECASE | re.MULTILINE):
        key = "message_id" if m.group(1).lower() == b"message-id" else "subject"
        if key in found:
            continue
        value = m.group(2)
        if b"\n" in value:
            value = re.sub(rb"\r?\n[ \t]", b" ", value)
        found[key] = value.strip()[:998].decode("utf-8", "replace")
    return found


_PIECES = [b"Subject", b"subject", b"SUBJECT", b"Message-ID", b"message-id", b"Message-Id",
           b"Subjects", b"X-Subject", b"Message-IDs", b":", b" :", b"\t:", b": ", b" ",
           b"\t", b"\r\n", b"\n", b"\r", b"\r\n ", b"\n\t", b"\r\n\r\n", b"\n\n",
           b"\n\r\n", b"text", b"<a@b>", b"\xc3\xa9", b"\xff", b"x" * 1000]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_header_fields_find_what_the_regular_expression_found(pieces):
    import re
    head = b"".join(pieces)
    assert header_fields(head) == _header_fields_by_regex(head)
    end = re.search(rb"\r?\n\r?\n", head)
    assert _header_end(head) == (len(head) if end is None else end.start())


def test_header_fields_at_the_start_with_bare_line_ends_and_no_end():
    assert header_fields(b"subject :x\n\tb\n\nMessage-ID: <no>") == {"subject": "x b"}
    assert header_fields(b"Subjectx: no\r\nSubject: yes") == {"subject": "yes"}
    assert header_fields(b"X: a\r\n\nSubject: after a bare LF\r\n") == {}
    assert header_fields(b"") == {}
    # The first of two counts, for each field (RFC 5322 3.6 allows one of each).
    assert header_fields(b"Message-ID: <1@a>\r\nSubject: one\r\nMessage-ID: <2@a>\r\n"
                         b"Subject: two\r\n") == {"message_id": "<1@a>", "subject": "one"}


def test_arrival_attempts_and_outcome_make_one_timeline(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        await commit(store, envelope("M1", recipients=("boss@example.net", "audit@example.org")))
        await store.record("M1", [
            RecipientUpdate(idx=0, status=RecipientStatus.DELIVERED, attempts=1,
                            remote_mta="mx.example.net [192.0.2.1]:25"),
            RecipientUpdate(idx=1, status=RecipientStatus.QUEUED, attempts=1,
                            next_attempt=time.time() + 600, last_error="451 4.7.1 later"),
        ], events=[
            {"at": time.time(), "idx": 0, "to": "boss@example.net", "outcome": "delivered",
             "remote": "mx.example.net [192.0.2.1]:25", "tls": "TLSv1.3 X",
             "reply": "250 2.0.0 Ok: queued as 4XyZ", "remote_id": "4XyZ"},
            {"at": time.time(), "idx": 1, "to": "audit@example.org", "outcome": "deferred",
             "remote": "mx.example.org [192.0.2.2]:25", "reply": "451 4.7.1 later"},
        ])
        store.close()
    asyncio.run(go())
    history = index(tmp_path)
    t = history.timeline("M1")
    assert t["subject"] == "Scan résultat"
    assert t["message_id"] == "abc.123@scanner.example.com"
    assert t["tls"] == "TLSv1.3 TLS_AES_256_GCM_SHA384"
    assert t["client_name"] == "scanner.example.com" and t["size"] == len(BODY)
    assert t["status"] == "deferred"
    assert [(r["address"], r["status"], r["rule"]) for r in t["recipients"]] == [
        ("boss@example.net", "delivered", "relay.networks[0]"),
        ("audit@example.org", "deferred", "relay.networks[0]")]
    assert [(e["kind"], e["recipient"]) for e in t["events"]] == [
        ("received", "boss@example.net,audit@example.org"),
        ("attempt", "boss@example.net"), ("attempt", "audit@example.org")]
    assert t["events"][1]["data"]["remote_id"] == "4XyZ"
    assert t["events"][1]["data"]["reply"] == "250 2.0.0 Ok: queued as 4XyZ"
    # Search by every documented filter finds it.
    for kw in ({"recipient": "boss@example.net"}, {"recipient": "EXAMPLE.org"},
               {"recipient": "@example.net"}, {"sender": "scan@example.com"},
               {"sender": "example.com"}, {"message_id": "<abc.123@scanner.example.com>"},
               {"queue_id": "M1"}, {"client": "10.0.5.20"}, {"status": "deferred"},
               {"since": time.time() - 60}):
        items, _ = history.search(**kw)
        assert [i["queue_id"] for i in items] == ["M1"], kw
    for kw in ({"recipient": "nobody@example.net"}, {"status": "delivered"},
               {"until": time.time() - 60}, {"sender": "<>"}):
        assert history.search(**kw)[0] == [], kw


def test_an_admin_hold_during_an_attempt_stays_held_in_the_history_as_in_the_queue(tmp_path):
    """The hold came while the attempt was under way; the attempt then deferred. The queue
    keeps the recipient held (the admin wins, issue 14 item 2); the history says the same."""
    async def go():
        store = Store.open(tmp_path)
        await commit(store, envelope("HD", recipients=("boss@example.net", "cc@example.net")))
        claimed = await store.claim_due(time.time() + 1, 10, 120)
        assert [m.queue_id for m in claimed] == ["HD"]
        admin = QueueAdmin(tmp_path)
        assert admin.hold("HD", by="alice") == 2       # both waiting (leased) recipients
        admin.close()
        await store.record("HD", [
            RecipientUpdate(idx=0, status=RecipientStatus.QUEUED, attempts=1,
                            next_attempt=time.time() + 600, last_error="451 4.7.1 later"),
            RecipientUpdate(idx=1, status=RecipientStatus.DELIVERED, attempts=1,
                            remote_mta="mx.example.net [192.0.2.1]:25"),
        ], events=[
            {"at": time.time(), "idx": 0, "to": "boss@example.net", "outcome": "deferred",
             "remote": "mx.example.net [192.0.2.1]:25", "reply": "451 4.7.1 later"},
            {"at": time.time(), "idx": 1, "to": "cc@example.net", "outcome": "delivered",
             "remote": "mx.example.net [192.0.2.1]:25", "reply": "250 2.0.0 Ok"},
        ])
        store.close()
    asyncio.run(go())
    reader = QueueReader(tmp_path)
    try:
        in_queue = {r["address"]: r["status"] for r in reader.show("HD")["recipients"]}
    finally:
        reader.close()
    assert in_queue == {"boss@example.net": "held", "cc@example.net": "delivered"}, in_queue
    history = index(tmp_path)
    t = history.timeline("HD")
    assert [(r["address"], r["status"]) for r in t["recipients"]] == [
        ("boss@example.net", "held"), ("cc@example.net", "delivered")]
    assert t["status"] == "held"


def test_admin_actions_are_recorded_with_who_did_them(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        await commit(store, envelope("H1"))
        await commit(store, envelope("D1"))
        await commit(store, envelope("B1", status=RecipientStatus.BADMAIL))
        store.close()
    asyncio.run(go())
    admin = QueueAdmin(tmp_path)
    assert admin.hold("H1", by="alice") == 1
    history = index(tmp_path)
    assert history.timeline("H1")["status"] == "held"
    assert admin.release("H1", by="bob") == 1
    assert admin.release("H1", by="bob") == 0      # nothing held: nothing journaled
    n, dsn_id = admin.delete_with_dsn("D1", by="carol", reporting_mta="relay.test")
    assert n == 1 and dsn_id
    assert admin.badmail_release("B1", by="dave") == ["boss@example.net"]
    admin.close()
    history.close()
    history = index(tmp_path)
    h1 = history.timeline("H1")
    assert h1["status"] == "queued"
    assert [(e["data"]["action"], e["data"]["by"]) for e in h1["events"] if e["kind"] == "admin"] \
        == [("hold", "alice"), ("release", "bob")]
    d1 = history.timeline("D1")
    assert d1["status"] == "deleted"
    assert d1["events"][-1]["data"] == {"action": "delete-dsn", "by": "carol",
                                        "recipients": ["boss@example.net"], "dsn_id": dsn_id}
    # The DSN is a message of its own, to the sender, in the history too.
    dsn = history.timeline(dsn_id)
    assert dsn["sender"] == "" and [r["address"] for r in dsn["recipients"]] == ["scan@example.com"]
    assert history.timeline("B1")["status"] == "queued"


def test_pagination_is_keyset_and_complete(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        for i in range(25):
            await commit(store, envelope(f"P{i:02d}", at=1000.0 + i,
                                         recipients=("a@page.test", "b@page.test")))
        store.close()
    asyncio.run(go())
    history = index(tmp_path)
    for kw in ({}, {"recipient": "page.test"}):
        seen, cursor = [], None
        while True:
            items, cursor = history.search(limit=10, before=cursor, **kw)
            seen += [i["queue_id"] for i in items]
            if cursor is None:
                break
        assert seen == [f"P{i:02d}" for i in reversed(range(25))], kw
    with pytest.raises(HistoryError) as err:
        history.search(before="garbage")
    assert err.value.field == "before"
    with pytest.raises(HistoryError) as err:
        history.search(status="lost")
    assert err.value.field == "status"


def test_a_new_history_is_seeded_from_the_queue_and_pruned_by_age(tmp_path):
    async def go():
        store = Store.open(tmp_path)
        await commit(store, envelope("OLD", at=time.time() - 40 * 86400))
        await commit(store, envelope("NEW"))
        store.close()
    asyncio.run(go())
    journal = Journal(tmp_path)
    journal.trim(journal.last_seq())           # as if indexed by a history now lost
    journal.close()
    history = History.open(tmp_path)
    assert seed_from_queue(history, tmp_path) == 2
    assert {i["queue_id"] for i in history.search()[0]} == {"OLD", "NEW"}
    # Pruning keeps what is still waiting, whatever its age.
    assert history.prune(time.time() - 30 * 86400) == 0
    QueueAdmin(tmp_path).delete("OLD", by="alice")
    while index_once(history, Journal(tmp_path)):
        pass
    assert history.timeline("OLD")["status"] == "deleted"
    assert history.prune(time.time() - 30 * 86400) == 1
    assert history.timeline("OLD") is None and history.timeline("NEW") is not None


def test_message_status_and_since_parsing():
    assert message_status(["delivered", "deferred"]) == "deferred"
    assert message_status(["delivered", "bounced"]) == "bounced"
    assert message_status(["delivered"]) == "delivered"
    assert message_status(["badmail", "held"]) == "badmail"
    assert parse_since("2h", now=10000.0) == 10000.0 - 7200
    assert parse_since("2026-12-01T00:00:00Z") == 1796083200.0
    with pytest.raises(ValueError):
        parse_since("yesterday")


def _entry(at: float, qid: str, kind: str, data: dict) -> JournalEntry:
    return JournalEntry(0, at, qid, kind, data, json.dumps(data, separators=(",", ":")))


def _rows(history: History) -> dict[str, list[tuple]]:
    """Every row of the history's tables, but the moment a status was worked out and the
    events' own numbering."""
    db = history._db
    return {
        "messages": db.execute("SELECT queue_id, received_at, listener, client_ip, client_name,"
                               " helo, tls, auth_user, sender, sender_lc, sender_domain, size,"
                               " message_id, subject, status FROM messages"
                               " ORDER BY queue_id").fetchall(),
        "recipients": db.execute("SELECT * FROM recipients ORDER BY queue_id, idx").fetchall(),
        "events": db.execute("SELECT queue_id, at, kind, recipient, data FROM events"
                             " ORDER BY seq").fetchall(),
    }


def test_a_batch_indexes_whole_messages_as_entry_by_entry_would(tmp_path):
    """The indexer builds the rows of a message whose arrival and attempts come in one batch
    itself (History._index): the tables must hold exactly what indexing one entry at a time
    gives, for whole messages and for every case that goes entry by entry."""
    def received(at, qid, recipients):
        return _entry(at, qid, "received", {
            "listener": "main", "client_ip": "10.0.5.20", "client_name": None, "helo": "scan",
            "tls": None, "auth_user": "scanner", "sender": "Scan@Example.COM", "size": 321,
            "message_id": " <id.1@example.com> ", "subject": "=?utf-8?q?r=C3=A9sultat?=",
            "recipients": [[a, status, "relay.networks[0]", "why"] for a, status in recipients]})

    def attempt(at, qid, idx, to, outcome, reply="250 2.0.0 Ok"):
        return _entry(at, qid, "attempt", {"at": at, "idx": idx, "to": to, "outcome": outcome,
                                           "reply": reply, "remote": "mx [192.0.2.1]:25"})

    earlier = [received(1.0, "OLD", [("a@x.example", "queued")]),
               received(1.5, "DUP", [("a@x.example", "queued")])]
    batch = [
        # whole: two recipients, the second tried twice in the batch
        received(2.0, "W1", [("A@X.example", "queued"), ("b@y.example", "queued")]),
        attempt(2.1, "W1", 0, "A@X.example", "delivered"),
        attempt(2.2, "W1", 1, "b@y.example", "deferred", "451 4.7.1 later"),
        # whole: a held recipient stays held when deferred; a badmail one is left as it is
        received(3.0, "W2", [("h@x.example", "held"), ("q@x.example", "badmail")]),
        attempt(3.1, "W2", 0, "h@x.example", "deferred", "451 4.4.1 no"),
        attempt(2.3, "W1", 1, "b@y.example", "delivered"),
        # entry by entry: an arrival alone; attempts of an earlier arrival; an attempt naming
        # no recipient of its message; an admin action between arrival and attempt
        received(4.0, "R1", [("c@x.example", "queued")]),
        attempt(4.1, "OLD", 0, "a@x.example", "bounced", "550 5.1.1 no such user"),
        received(5.0, "P3", [("d@x.example", "queued")]),
        attempt(5.1, "P3", 7, "e@x.example", "delivered"),
        received(6.0, "P4", [("f@x.example", "queued")]),
        _entry(6.1, "P4", "admin", {"action": "hold", "by": "alice", "recipients": ["-"]}),
        attempt(6.2, "P4", 0, "f@x.example", "deferred", "451 4.4.1 no"),
    ]
    # Whole in form, but DUP's arrival is in the history already: the insert finds it, and
    # the batch goes entry by entry, W3 too.
    last = [received(1.5, "DUP", [("a@x.example", "queued")]),
            attempt(1.6, "DUP", 0, "a@x.example", "delivered"),
            received(7.0, "W3", [("g@x.example", "queued")]),
            attempt(7.1, "W3", 0, "g@x.example", "delivered")]
    assert set(_whole(batch)) == {"W1", "W2"}       # the rest goes entry by entry
    assert set(_whole(last)) == {"DUP", "W3"}
    (tmp_path / "one").mkdir()
    (tmp_path / "batch").mkdir()
    one_by_one = History.open(tmp_path / "one")
    at_once = History.open(tmp_path / "batch")
    position = START
    for n, e in enumerate(earlier + batch + last, 1):
        assert one_by_one.apply_files([e], position, ("f", n))
        position = ("f", n)
    assert at_once.apply_files(earlier, START, ("f", 1))
    assert at_once.apply_files(batch, ("f", 1), ("f", 2))
    assert at_once.apply_files(last, ("f", 2), ("f", 3))
    expected, got = _rows(one_by_one), _rows(at_once)
    assert got == expected
    # What the whole messages came to, spelt out (not only "the same as the slow path").
    statuses = {qid: status for qid, *_, status in got["messages"]}
    assert statuses["W1"] == "delivered" and statuses["W2"] == "badmail"
    assert statuses["DUP"] == statuses["W3"] == "delivered" and statuses["P4"] == "held"
    w1 = [r for r in got["recipients"] if r[0] == "W1"]
    assert [(r[2], r[3], r[6], r[9]) for r in w1] == [
        ("A@X.example", "a@x.example", "delivered", "250 2.0.0 Ok"),
        ("b@y.example", "b@y.example", "delivered", "250 2.0.0 Ok")]
    assert [r[6] for r in got["recipients"] if r[0] == "W2"] == ["held", "badmail"]
    assert at_once.timeline("W1")["subject"] == "résultat"
    assert at_once.timeline("W1")["message_id"] == "id.1@example.com"
    one_by_one.close()
    at_once.close()
