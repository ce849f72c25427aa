"""Hand-off (delivery.handoff = true; queue/log.py) through a real relay: a real SMTP client,
`relaywarden serve` on 127.0.0.1, a real downstream server, the admin CLI.

A message delivered at its first attempt never enters the SQLite index (its record is the
log entry, then a done marker); one that must wait (deferred, held by its route) enters it
after its first attempt and is then the admin's like any other; the journal the message
history reads still gets every message."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from support.relay import delivery_pid, inflow_counts
from support.relay import until as value_once
from support.site import Site
from support.stores import journal_kinds
from relaywarden.queue.admin import HANDOFF_WAIT_SECONDS
from relaywarden.queue import log as qlog
from relaywarden.queue.store import QueueReader

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


def log_entries(site: Site) -> list[tuple[bytes, str]]:
    """The log's entries and markers (in the segments, or beside them in .marks files)."""
    out = []
    for path in qlog.segment_paths(qlog.directory(site.data_dir)):
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
    assert journal_kinds(site.data_dir, qid) in (["received", "attempt"], [])   # [] once the history took it


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


def test_held_mail_goes_into_the_index_at_once_and_is_released_by_the_admin(site):
    """Mail a hold route keeps skips the log: the session asks the router, and the message
    is in the index before its 250 (where ETRN and ATRN look), held at its first attempt."""
    qid = send(site, "user@held.test", "held")
    assert qid in queued_ids(site)
    assert all(entry_id != qid for _, entry_id in log_entries(site))
    until(lambda: site.statuses() == {"user@held.test": "held"})
    site.cli("queue", "release", qid)
    [got] = site.down.wait_for(1, timeout=30)
    assert got.recipients == ["user@held.test"]


def test_a_message_on_its_first_attempt_is_seen_from_the_log_then_from_the_index(site):
    """The admin sees it all along: at first the log holds it and the queue's views read it
    from there (read in process here: within the grace); once its first attempt has lasted
    HANDOFF_GRACE_SECONDS (the downstream server holds its answer to the final dot back)
    the delivery process puts it into the index, leased by that attempt."""
    site.down.behaviour.data_delay = 4.0
    qid = send(site, "slow@example.net", "on its way")
    reader = QueueReader(site.data_dir)
    try:
        [listed] = reader.list()
        shown = reader.show(qid)
        body = reader.body(qid)
    finally:
        reader.close()
    assert listed["id"] == qid and listed["handoff"] is True
    assert shown["handoff"] is True and shown["recipients"][0]["address"] == "slow@example.net"
    assert shown["recipients"][0]["status"] == "queued" and b"on its way" in body
    until(lambda: lease_of(site, qid) > time.time())
    shown = site.cli("queue", "show", qid, "--body").stdout
    assert "handoff:" not in shown and "slow@example.net [queued]" in shown, shown
    assert "on its way" in shown
    [entry] = json.loads(site.cli("queue", "list", "--json").stdout)
    assert entry["id"] == qid and "handoff" not in entry
    assert (qlog.INDEXED, qid) in log_entries(site)
    site.down.wait_for(1, timeout=30)
    until(lambda: site.cli("queue", "list").stdout.strip() == "queue is empty")


def test_the_admin_holds_a_message_on_its_first_attempt(site):
    """`queue hold` right after the 250: the command waits for the delivery process to put
    the message into the index (about HANDOFF_GRACE_SECONDS), then holds it. The attempt
    under way goes on (as for any leased message); a deferral it ends with leaves the
    message held by the admin (the scheduler does not take held mail)."""
    site.down.behaviour.data_delay = 2.0
    site.down.behaviour.data = "451 4.3.0 try later"
    qid = send(site, "slow@example.net", "hold me")
    held = site.cli("queue", "hold", qid)
    assert f"{qid}: 1 recipient(s) held" in held.stdout, (held.stdout, held.stderr)
    until(lambda: (lambda r: r and r[0] > 0)(attempts_of(site, qid)))
    assert site.statuses() == {"slow@example.net": "held"}
    assert attempts_of(site, qid) == (1, "451 4.3.0 try later")


def queued_ids(site: Site) -> list[str]:
    db = sqlite3.connect(f"file:{site.data_dir / 'queue.sqlite3'}?mode=ro", uri=True)
    try:
        return [mid for (mid,) in db.execute("SELECT id FROM messages")]
    finally:
        db.close()


def lease_of(site: Site, queue_id: str) -> float:
    db = sqlite3.connect(f"file:{site.data_dir / 'queue.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT MAX(lease_until) FROM recipients WHERE message_id = ?",
                         (queue_id,)).fetchone()
    finally:
        db.close()
    return row[0] or 0.0


def attempts_of(site: Site, queue_id: str) -> tuple[int, str] | None:
    db = sqlite3.connect(f"file:{site.data_dir / 'queue.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT attempts, last_error FROM recipients WHERE message_id = ?",
                          (queue_id,)).fetchone()
    finally:
        db.close()


def test_an_action_on_a_message_the_delivery_process_has_not_taken_says_try_again(tmp_path):
    """Two processes, the delivery process stopped (SIGSTOP: as while it is down): a new
    message stays in the log. `queue hold` waits for it to go into the index, gives up
    after HANDOFF_WAIT_SECONDS and says so with EX_TEMPFAIL (75); once the delivery process
    runs again the message goes out."""
    site = Site(tmp_path, CONFIG, process="separate")
    try:
        pid = delivery_pid(site.relay.proc.pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            qid = send(site, "user@example.net", "paused")
            started = time.monotonic()
            held = site.cli("queue", "hold", qid, check=False)
            assert held.returncode == 75, (held.returncode, held.stdout, held.stderr)
            assert f"{qid} is on its first attempt" in held.stderr and "try again" in held.stderr
            assert time.monotonic() - started >= HANDOFF_WAIT_SECONDS
            missing = site.cli("queue", "hold", "NOSUCHMESSAGE", check=False)
            assert missing.returncode == 1 and "no message NOSUCHMESSAGE" in missing.stderr
        finally:
            os.kill(pid, signal.SIGCONT)
        [got] = site.down.wait_for(1, timeout=30)
        assert got.recipients == ["user@example.net"]
    finally:
        site.close()


def test_while_delivery_is_behind_the_250_waits_up_to_in_flow_delay(tmp_path):
    """Back-pressure (delivery.in_flow_delay, as Postfix's): with the delivery process
    stopped, messages wait in the log; once the oldest has waited half a second, each 250
    after the final dot comes only after in_flow_delay (the message is on disk already).
    When the delivery process runs again, the answers come at once again, and every message
    is delivered once."""
    site = Site(tmp_path, CONFIG.replace("handoff = true", "handoff = true\nin_flow_delay = 0.6"),
                process="separate")
    try:
        pid = delivery_pid(site.relay.proc.pid)
        os.kill(pid, signal.SIGSTOP)
        sent, waits = [], []
        try:
            with site.smtp() as c:
                began = time.monotonic()
                while time.monotonic() - began < 2.5:
                    c.mail("app@example.com")
                    assert c.rcpt("user@example.net")[0] == 250
                    started = time.monotonic()
                    code, text = c.data(b"Subject: pressed\r\n\r\nhello\r\n")
                    waits.append(time.monotonic() - started)
                    assert code == 250, text
                    sent.append(text.decode().split()[-1])
        finally:
            os.kill(pid, signal.SIGCONT)
        # The first answers came at once; once the log held a message half a second old,
        # each waited in_flow_delay (not more: the delivery process did not read).
        assert waits[0] < 0.3, waits
        slow = [w for w in waits if w >= 0.5]
        assert slow and max(waits) < 2.0, waits
        assert waits[-1] >= 0.5, waits
        # Delivery runs again: it catches up, and the answers are quick again.
        got = site.down.wait_for(len(sent), timeout=30)
        with site.smtp() as c:
            c.mail("app@example.com")
            assert c.rcpt("user@example.net")[0] == 250
            started = time.monotonic()
            code, text = c.data(b"Subject: again\r\n\r\nhello\r\n")
            assert code == 250 and time.monotonic() - started < 0.3, text
        got = site.down.wait_for(len(sent) + 1, timeout=30)
        # The metrics count the 250s held back, and how long they waited (flushed once a
        # second: until they have caught up).
        held = [w for w in waits if w >= 0.5]

        delayed, seconds = value_once(lambda: inflow_counts(site.data_dir, "main"),
                                      lambda c: c[0] >= len(held),
                                      what="relaywarden_inflow_delayed_total short")
        assert delayed >= len(held) and seconds >= 0.5 * len(held), (delayed, seconds, waits)
        subjects = [m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in got]
        assert sorted(subjects) == sorted([b"pressed"] * len(sent) + [b"again"])
        assert len(site.down.messages) == len(sent) + 1          # each once
    finally:
        site.close()


def niceness(pid: int) -> list[int]:
    """The nice value of each thread of process ``pid`` (proc(5): stat's 19th field)."""
    return [int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            for task in Path(f"/proc/{pid}/task").iterdir()]


@pytest.mark.parametrize("nice", [None, 0, 12])
def test_the_delivery_process_runs_at_delivery_nice_below_the_receiving_one(tmp_path, nice):
    """delivery.nice (default 5): every thread of the delivery process runs that much
    below the receiving process, which stays as it was started; 0 leaves them equal.
    Messages still go through."""
    config = CONFIG if nice is None else CONFIG.replace(
        "handoff = true", f"handoff = true\nnice = {nice}")
    site = Site(tmp_path, config, process="separate")
    try:
        relay = site.relay.proc.pid
        base = os.getpriority(os.PRIO_PROCESS, 0)     # the relay inherits the test's
        expected = min(base + (5 if nice is None else nice), 19)
        # A message delivered: the delivery process is up and has done its work.
        queue_id = send(site, "user@example.net", "niced")
        [got] = site.down.wait_for(1, timeout=30)
        assert b"Subject: niced" in got.content, queue_id
        assert set(niceness(relay)) == {base}
        # All its threads: those made as it started, and any made later (a body read,
        # the index's writer) take their creator's.
        assert set(niceness(delivery_pid(relay))) == {expected}
    finally:
        site.close()


def test_a_refused_delivery_nice_is_said_and_delivery_runs_on(tmp_path, monkeypatch):
    """Where nice(2) is refused (a sandbox), the delivery process says so on stderr and
    delivers at the priority it has: the setting never stops the relay."""
    inject = tmp_path / "inject"
    inject.mkdir()
    # Every Python process of the relay imports this; only the delivery process's nice()
    # fails.
    (inject / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'delivery-worker' in sys.argv:\n"
        "    def _refused(increment):\n"
        "        raise PermissionError(1, 'Operation not permitted')\n"
        "    os.nice = _refused\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(inject), *filter(None, [os.environ.get("PYTHONPATH")])]))
    site = Site(tmp_path, CONFIG, process="separate")
    try:
        send(site, "user@example.net", "unniced")
        [got] = site.down.wait_for(1, timeout=30)
        assert b"Subject: unniced" in got.content
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert set(niceness(delivery_pid(site.relay.proc.pid))) == {base}
    finally:
        site.close()
    err = site.relay.proc.stderr.read()
    assert "delivery.nice: cannot lower the delivery process's priority" in err, err


def test_delivery_nice_out_of_range_is_a_config_error_naming_the_key(tmp_path):
    from relaywarden.config import ConfigError, load_config

    for bad in ("20", "-1", '"low"'):
        path = tmp_path / "relay.toml"
        path.write_text(f'[relay]\nhostname = "r.test"\n[delivery]\nnice = {bad}\n')
        with pytest.raises(ConfigError, match=r"delivery\.nice"):
            load_config(path)


def syncer_pids(relay_pid: int) -> list[int]:
    """The receiving process's fdatasync children (queue/syncer.py; two processes)."""
    children = Path(f"/proc/{relay_pid}/task/{relay_pid}/children").read_text().split()
    return [int(c) for c in children
            if b"relaywarden.queue.syncer" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_the_fdatasync_child_killed_is_replaced_and_no_acknowledged_message_is_lost(tmp_path):
    """Two processes: the receiving one's log is made durable by a child (queue/syncer.py).
    SIGKILL it between messages and during a burst: every message answered 250 reaches the
    next hop, one that was refused got a 451, and a new child takes over."""
    site = Site(tmp_path, CONFIG, process="separate")
    try:
        first = send(site, "user@example.net", "before")
        [old] = syncer_pids(site.relay.proc.pid)
        os.kill(old, signal.SIGKILL)
        accepted, refused = [first], 0
        for n in range(30):
            with site.smtp() as c:
                c.mail("app@example.com")
                assert c.rcpt("user@example.net")[0] == 250
                code, text = c.data(f"Subject: after {n}\r\n\r\nhello\r\n".encode())
            if code == 250:
                accepted.append(text.decode().split()[-1])
            else:
                assert code == 451 and text.startswith(b"4.3.0"), text
                refused += 1
            if n == 10:
                for pid in syncer_pids(site.relay.proc.pid):
                    os.kill(pid, signal.SIGKILL)
        assert refused <= 2 and len(accepted) >= 29
        got = site.down.wait_for(len(accepted))
        subjects = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in got)
        assert len(subjects) == len(set(subjects)) == len(accepted)
        [new] = syncer_pids(site.relay.proc.pid)
        assert new != old
    finally:
        site.close()
