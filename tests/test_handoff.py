"""Hand-off (delivery.handoff = true; queue/log.py) through a real relay: a real SMTP client,
`relaywarden serve` on 127.0.0.1, a real downstream server, the admin CLI.

A message delivered at its first attempt never enters the SQLite index (its record is the
log entry, then a done marker); one that must wait (deferred, held by its route) enters it
after its first attempt and is then the admin's like any other; the journal the message
history reads still gets every message."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from support.site import Site
from relaywarden.queue import log as qlog

CONFIG = """
[relay]
hostname = "relay.test"
data_dir = "var"

[delivery]
process = "{process}"
handoff = true
retry_schedule = [1]
connect_timeout = 2
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."held.test"]
hold = true
next_hops = ["[127.0.0.1]:{down}"]   # where released mail goes

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


@pytest.fixture(params=["inline", "separate"])
def site(tmp_path, request):
    """One process handing messages to its own engine, or two: the delivery process
    follows the receiving process's log."""
    site = Site(tmp_path, CONFIG, process=request.param)
    yield site
    site.close()


def send(site: Site, to: str, subject: str) -> str:
    with site.smtp() as c:
        c.mail("app@example.com")
        assert c.rcpt(to)[0] == 250
        code, text = c.data(f"Subject: {subject}\r\n\r\nhello\r\n".encode())
        assert code == 250, text
        return text.decode().split()[-1]          # "2.0.0 Ok: queued as ID"


def until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def journal(site: Site, queue_id: str) -> list[str]:
    db = sqlite3.connect(f"file:{site.data_dir / 'queue.sqlite3'}?mode=ro", uri=True)
    try:
        return [kind for (kind,) in db.execute(
            "SELECT kind FROM journal WHERE queue_id = ? ORDER BY seq", (queue_id,))]
    finally:
        db.close()


def log_entries(site: Site) -> list[tuple[bytes, str]]:
    """The log's entries and markers (in the segments, or beside them in .marks files)."""
    out = []
    for path in qlog.segment_paths(site.data_dir / "log"):
        marks = qlog.marks_path(path)
        for kind, payload in [*qlog.read_entries(path.read_bytes()),
                              *qlog.read_entries(marks.read_bytes() if marks.exists() else b"")]:
            out.append((kind, qlog.split_message(payload)[0]["queue_id"]
                        if kind == qlog.MESSAGE else payload.decode()))
    return out


def test_a_message_goes_from_memory_to_its_next_hop_and_never_into_the_index(site):
    qid = send(site, "user@example.net", "straight through")
    [got] = site.down.wait_for(1)
    assert got.recipients == ["user@example.net"] and b"straight through" in got.content
    site.wait_log(rf"event=delivered .*id={qid}")
    assert (qlog.MESSAGE, qid) in log_entries(site)
    until(lambda: (qlog.DONE, qid) in log_entries(site))
    # The index never held it; the journal (the history's feed) has its whole story.
    assert site.cli("queue", "list").stdout.strip() == "queue is empty"
    assert journal(site, qid) in (["received", "attempt"], [])   # [] once the history took it


def test_a_deferred_message_is_the_admins_after_its_first_attempt_and_is_retried(site):
    site.down.behaviour.rcpt["later@example.net"] = "450 4.2.1 mailbox busy"
    qid = send(site, "later@example.net", "deferred")
    site.wait_log(rf"event=deferred .*id={qid}")
    shown = site.cli("queue", "show", qid).stdout
    assert "later@example.net" in shown and "450 4.2.1 mailbox busy" in shown
    until(lambda: (qlog.INDEXED, qid) in log_entries(site))
    site.down.behaviour.rcpt.clear()
    [got] = site.down.wait_for(1, timeout=30)
    assert got.recipients == ["later@example.net"]
    site.wait_log(rf"event=delivered .*id={qid}")


def test_held_mail_goes_into_the_index_and_is_released_by_the_admin(site):
    qid = send(site, "user@held.test", "held")
    # The hold route is the delivery side's decision: the message is handed on, held,
    # and from then on waits in the index (committed before its marker is written).
    until(lambda: qid in site.cli("queue", "list").stdout)
    until(lambda: (qlog.INDEXED, qid) in log_entries(site))
    assert site.statuses() == {"user@held.test": "held"}
    site.cli("queue", "release", qid)
    [got] = site.down.wait_for(1, timeout=30)
    assert got.recipients == ["user@held.test"]


def test_a_message_on_its_first_attempt_is_listed_and_shown_from_the_log(site):
    """The admin sees it: `queue list` and `queue show` read the log for what the index
    does not hold yet (the downstream server holds its answer to the final dot back)."""
    site.down.behaviour.data_delay = 4.0
    qid = send(site, "slow@example.net", "on its way")
    listed = site.cli("queue", "list").stdout
    assert qid in listed and "slow@example.net [queued]" in listed
    shown = site.cli("queue", "show", qid, "--body").stdout
    assert "handoff:" in shown and "slow@example.net [queued]" in shown and "on its way" in shown
    assert json.loads(site.cli("queue", "list", "--json").stdout)[0]["handoff"] is True
    site.down.wait_for(1, timeout=30)
    until(lambda: site.cli("queue", "list").stdout.strip() == "queue is empty")
