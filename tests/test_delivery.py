"""The send half through the real interface: the relay process, a real downstream SMTP server,
real clients. Every message answered 250 ends delivered, bounced (with a DSN), held, or in
badmail; none disappears."""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import support.site
from support.relay import free_port, start_relay, until
from downstream import Downstream

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com", "held.test"]

[delivery]
retry_schedule = [1]
expire_after = {expire}
delay_notice_after = 0
connect_timeout = 2
command_timeout = 3
data_timeout = 5
tls = "none"
ndr_copy_to = "ndr-copies@example.com"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[badmail]
notify = "admin@example.com"
notify_interval = 1
command = ["{python}", "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))", "{marker}", "{id}"]

[routes."example.com"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."held.test"]
hold = true
next_hops = ["[127.0.0.1]:{down}"]

[routes."other.test"]
next_hops = ["[127.0.0.1]:{other}"]

[routes."failover.test"]
next_hops = ["[127.0.0.1]:{dead}", "[127.0.0.1]:{down}"]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[groups.scanners]
networks = ["127.0.0.3/32"]
recipient_domains = ["example.com"]
on_violation = "badmail"

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32", "127.0.0.3/32"]
"""

MSG = b"From: app@example.com\r\nTo: x@example.com\r\nSubject: %s\r\n\r\nbody %s\r\n.line\r\n"


class Setup(support.site.Site):
    """The relay, its downstream server and a second one (other.test's)."""

    def __init__(self, tmp_path: Path, *, expire: int = 600) -> None:
        self.other = Downstream(free_port()).start()
        self.other_port, self.dead_port = self.other.port, free_port()
        self.marker = tmp_path / "badmail-commands.txt"
        super().__init__(tmp_path, CONFIG, other=self.other_port, dead=self.dead_port,
                         expire=expire, python=sys.executable, marker=str(self.marker))

    def send(self, to: list[str], subject: str = "hello", *, sender: str = "app@example.com",
             source: str = "127.0.0.1", options: list[str] = (), rcpt_options=(),
             content: bytes | None = None) -> str:
        """One message, answered 250; returns its queue ID. ``content``: the whole message
        (default: a small one with ``subject``)."""
        if content is None:
            content = MSG % (subject.encode(), subject.encode())
        with smtplib.SMTP("127.0.0.1", self.ports["main"], source_address=(source, 0),
                          timeout=30) as c:
            c.ehlo("client.test")
            c.mail(sender, list(options))
            for rcpt in to:
                code, _ = c.rcpt(rcpt, list(rcpt_options))
                assert code == 250
            code, text = c.data(content)
            assert code == 250, text
            return re.search(rb"queued as (\S+)", text).group(1).decode()

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return super().cli(*args, check=check)     # the tests look at the exit code

    def queue(self) -> list[dict]:
        return self.relay.messages()

    def close(self) -> None:
        super().close()
        self.other.stop()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.close()


def subjects(messages) -> list[str]:
    return [email.message_from_bytes(m.content)["Subject"] for m in messages]


def test_hosted_route_delivers_and_the_queue_empties(setup):
    qid = setup.send(["user@example.com"], "first")
    [msg] = setup.down.wait_for(1)
    assert msg.sender == "app@example.com" and msg.recipients == ["user@example.com"]
    parsed = email.message_from_bytes(msg.content)
    assert parsed["Subject"] == "first"
    assert f"id {qid}".encode() in msg.content.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ")
    assert msg.content.endswith(b"body first\r\n.line\r\n")   # dot-stuffing both ways
    setup.wait_queue(lambda rows: rows == [])
    log = setup.maillog()
    assert re.search(rf"event=delivered id={qid} to=user@example.com relay=\S+", log)


def test_message_split_per_route_each_part_tracked(setup):
    setup.send(["a@example.com", "b@other.test", "c@example.com"], "split")
    [m1] = setup.down.wait_for(1)
    [m2] = setup.other.wait_for(1)
    assert sorted(m1.recipients) == ["a@example.com", "c@example.com"]
    assert m2.recipients == ["b@other.test"]
    setup.wait_queue(lambda rows: rows == [])


def test_downstream_down_then_421_then_up_nothing_lost(setup):
    setup.down.stop()
    ids = [setup.send([f"u{i}@example.com"], f"m{i}") for i in range(5)]
    rows = setup.wait_queue(lambda rows: len(rows) == 5 and all(
        r["recipients"][0]["status"] == "queued" for r in rows))
    setup.wait_log(r"event=deferred .*Connection refused")   # an attempt met the closed port
    # The admin sees why a message waits and when it is tried next.
    shown = setup.cli("queue", "show", ids[0])
    assert shown.returncode == 0
    assert re.search(r"attempts=[1-9]\d* next=\S+Z last_error=451 4\.4\.1 No answer from host: "
                     r"Connection refused relay=127\.0\.0\.1 \[127\.0\.0\.1\]:\d+", shown.stdout), shown.stdout
    [r] = json.loads(setup.cli("queue", "show", ids[0], "--json").stdout)["recipients"]
    assert r["attempts"] >= 1 and r["last_error"].startswith("451 4.4.1")
    setup.down = Downstream(setup.down_port)
    setup.down.behaviour.greeting = "421 4.3.2 maintenance"
    setup.down.start()
    setup.wait_log(r"event=deferred .*421")   # a retry met the 421
    assert setup.down.messages == []
    setup.down.behaviour.greeting = None
    got = setup.down.wait_for(5, timeout=30)
    assert sorted(subjects(got)) == [f"m{i}" for i in range(5)]
    setup.wait_queue(lambda rows: rows == [])


def test_a_stale_pooled_connection_is_replaced_not_deferred(setup):
    first = setup.send(["a@example.com"], "one")
    setup.down.wait_for(1)
    # The idle connection kept for reuse now meets a 421 at MAIL (the host is closing it):
    # the relay opens a new connection at once instead of deferring for a retry interval.
    setup.down.behaviour.mail_once = "421 4.3.2 connection too old"
    second = setup.send(["b@example.com"], "two")
    got = setup.down.wait_for(2, timeout=5)
    assert subjects(got) == ["one", "two"]
    log = setup.maillog()
    assert not re.search(rf"event=deferred id={second} to=", log)
    assert first != second


def test_failover_to_the_second_next_hop(setup):
    setup.send(["x@failover.test"], "failover")
    [msg] = setup.down.wait_for(1)
    assert msg.recipients == ["x@failover.test"]


def test_partial_recipient_failures_and_the_bounce(setup):
    setup.down.behaviour.rcpt = {"gone@example.com": "550 5.1.1 no such user",
                                 "busy@example.com": "450 4.2.1 mailbox busy"}
    qid = setup.send(["ok@example.com", "gone@example.com", "busy@example.com"], "partial",
                     sender="sender@other.test")
    # The original for ok@, and the bounce's copy to the NDR address (IIS's "Send copy of
    # Non-Delivery Report to"), both reach example.com's next hop; the bounce itself goes
    # back to the sender through other.test's next hop.
    arrived = {m.recipients[0]: m for m in setup.down.wait_for(2)}
    assert set(arrived) == {"ok@example.com", "ndr-copies@example.com"}
    assert arrived["ndr-copies@example.com"].sender == ""
    [dsn] = setup.other.wait_for(1)
    assert dsn.sender == "" and dsn.recipients == ["sender@other.test"]
    report = email.message_from_bytes(dsn.content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_bytes().decode()
    assert "Final-Recipient: rfc822; gone@example.com" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "550 5.1.1 no such user" in text
    # Each part is tracked: busy@ stays queued (retried), the others are final.
    rows = setup.wait_queue(lambda rows: any(
        r["id"] == qid and {x["status"] for x in r["recipients"]} == {"delivered", "bounced", "queued"}
        for r in rows))
    [row] = [r for r in rows if r["id"] == qid]
    states = {r["address"]: r["status"] for r in row["recipients"]}
    assert states == {"ok@example.com": "delivered", "gone@example.com": "bounced",
                      "busy@example.com": "queued"}
    setup.down.behaviour.rcpt = {}
    setup.down.wait_for(3)
    setup.wait_queue(lambda rows: rows == [])
    log = setup.maillog()
    assert re.search(rf"event=bounced id={qid} to=gone@example.com", log)
    assert re.search(rf"event=deferred id={qid} to=busy@example.com", log)


def test_5xx_at_data_bounces_and_null_sender_never_bounced(setup):
    setup.down.behaviour.data = "554 5.6.0 content rejected"
    setup.send(["a@example.com"], "rejected", sender="someone@other.test")
    [dsn] = setup.other.wait_for(1)
    assert dsn.recipients == ["someone@other.test"]
    # A message with a null sender that fails goes to badmail (double bounce), not back out.
    qid = setup.send(["b@example.com"], "double", sender="")
    rows = setup.wait_queue(lambda rows: any(
        r["id"] == qid and r["recipients"][0]["status"] == "badmail" for r in rows))
    assert len(setup.other.messages) == 1


def test_hold_route_keeps_mail_until_flushed(setup):
    qid = setup.send(["x@held.test"], "held")
    setup.wait_queue(lambda rows: rows and rows[0]["recipients"][0]["status"] == "held")
    got = setup.witness()                    # delivery ran; the held message stayed
    assert [m.recipients for m in got] == [["witness@example.com"]]
    setup.down.messages.clear()
    out = setup.cli("queue", "flush", "--domain", "held.test")
    assert out.returncode == 0 and "1 recipient(s)" in out.stdout
    [msg] = setup.down.wait_for(1)
    assert msg.recipients == ["x@held.test"]
    setup.wait_queue(lambda rows: rows == [])


def test_queue_commands_hold_release_retry_delete(setup):
    setup.down.stop()
    qid = setup.send(["a@example.com"], "cmds")
    out = setup.cli("queue", "list", "--json")
    [row] = json.loads(out.stdout)
    assert row["id"] == qid
    assert setup.cli("queue", "hold", qid).returncode == 0
    assert setup.queue()[0]["recipients"][0]["status"] == "held"
    show = setup.cli("queue", "show", qid, "--json")
    assert json.loads(show.stdout)["recipients"][0]["status"] == "held"
    setup.down = Downstream(setup.down_port).start()
    # Past the time its retry was due (retry_schedule [1]), a witness goes through; the
    # held message, due first, stays.
    [r] = json.loads(setup.cli("queue", "show", qid, "--json").stdout)["recipients"]
    time.sleep(max(0.0, r["next_attempt"] - time.time()) + 0.2)
    got = setup.witness()
    assert [m.recipients for m in got] == [["witness@example.com"]]
    setup.down.messages.clear()
    assert setup.cli("queue", "release", qid).returncode == 0
    setup.down.wait_for(1)
    setup.wait_queue(lambda rows: rows == [])
    # delete: a deferred message disappears without a bounce
    setup.down.stop()
    qid2 = setup.send(["b@example.com"], "doomed")
    assert setup.cli("queue", "retry", qid2).returncode == 0
    assert setup.cli("queue", "delete", qid2).returncode == 0
    assert setup.queue() == []
    assert setup.cli("queue", "show", qid2).returncode == 1
    log = setup.maillog()
    assert re.search(rf"event=delete id={qid2} recipients=1 by=\S+", log), log


def test_scanner_badmail_file_notice_command_and_release(setup):
    qid = setup.send(["boss@example.com", "me@gmail.test"], "scan", sender="scanner@example.com",
                     source="127.0.0.3")
    # boss@ is delivered, and the admin's notice arrives (null sender, summarised); in
    # whatever order the two deliveries finish.
    arrived = {m.recipients[0]: m for m in setup.down.wait_for(2)}
    assert set(arrived) == {"boss@example.com", "admin@example.com"}
    notice = arrived["admin@example.com"]
    assert notice.sender == ""
    assert qid.encode() in notice.content and b"me@gmail.test" in notice.content
    eml = setup.data_dir / "badmail" / f"{qid}.eml"
    meta = setup.data_dir / "badmail" / f"{qid}.json"
    until(meta.exists, what=f"{meta} never written")
    assert eml.read_bytes().endswith(b"body scan\r\n.line\r\n")
    info = json.loads(meta.read_text())
    assert info["recipients"][0]["address"] == "me@gmail.test"
    assert info["recipients"][0]["rule"] == "groups.scanners.recipient_domains"
    # the command ran with the queue id
    until(setup.marker.exists, what="the badmail command never ran")
    assert setup.marker.read_text().split() == [qid]
    out = setup.cli("badmail", "list")
    assert qid in out.stdout and "me@gmail.test" in out.stdout
    out = setup.cli("badmail", "release", qid, "--by", "alice")
    assert out.returncode == 0 and "released me@gmail.test (by alice)" in out.stdout
    got = setup.down.wait_for(3)
    assert got[2].recipients == ["me@gmail.test"]
    setup.wait_queue(lambda rows: rows == [])
    assert "by=alice" in setup.maillog()


def test_badmail_delete_removes_message_and_files(setup):
    qid = setup.send(["me@gmail.test"], "scan", sender="scanner@example.com", source="127.0.0.3")
    meta = setup.data_dir / "badmail" / f"{qid}.json"
    until(meta.exists, what=f"{meta} never written")
    out = setup.cli("badmail", "delete", qid)
    assert out.returncode == 0
    assert not meta.exists() and not (setup.data_dir / "badmail" / f"{qid}.eml").exists()
    assert setup.queue() == []


def test_large_messages_go_through_as_files_and_leave_nothing_behind(setup):
    """Bodies too large for memory are queued as files (data_dir/bodies); delivered, deleted
    or badmail-deleted, the file goes with the message."""
    line = b"0123456789" * 7 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (3_000_000 // len(line)) + b".starts with a dot\r\n"
    bodies = setup.data_dir / "bodies"
    setup.send(["user@example.com"], content=big)
    [msg] = setup.down.wait_for(1, timeout=30)
    assert msg.content.endswith(big.split(b"\r\n\r\n", 1)[1])   # whole, dots intact
    setup.wait_queue(lambda rows: rows == [])
    # The file goes right after the COMMIT that removed the row.
    until(lambda: list(bodies.iterdir()), lambda files: files == [], timeout=5)
    held = setup.send(["x@held.test"], content=big)
    assert [p.name for p in bodies.iterdir()] == [held]
    shown = setup.cli("queue", "show", held, "--body")
    assert shown.returncode == 0 and shown.stdout.rstrip().endswith(".starts with a dot")
    assert setup.cli("queue", "delete", held).returncode == 0
    assert list(bodies.iterdir()) == []
    quarantined = setup.send(["me@gmail.test"], content=big, source="127.0.0.3")
    until((setup.data_dir / "badmail" / f"{quarantined}.json").exists)
    assert [p.name for p in bodies.iterdir()] == [quarantined]
    eml = (setup.data_dir / "badmail" / f"{quarantined}.eml").read_bytes()
    assert eml == (bodies / quarantined).read_bytes()   # copied from the file, whole
    assert eml.endswith(big.split(b"\r\n\r\n", 1)[1])
    assert setup.cli("badmail", "delete", quarantined).returncode == 0
    assert list(bodies.iterdir()) == []
    assert list((setup.data_dir / "tmp").iterdir()) == []


def test_a_queued_message_whose_body_file_is_gone_is_held_and_reported(setup):
    """Someone removed a body file by hand: nothing can be sent and retrying will not help,
    so the recipients are held (no busy loop of attempts) and the mail log says why."""
    big = b"Subject: orphan\r\n\r\n" + (b"z" * 70 + b"\r\n") * 30_000
    qid = setup.send(["x@held.test"], content=big)
    (setup.data_dir / "bodies" / qid).unlink()
    assert setup.cli("queue", "release", qid).returncode == 0
    setup.wait_queue(lambda rows: rows and rows[0]["recipients"][0]["status"] == "held"
                     and "orphan" not in str(setup.down.messages))
    log = setup.wait_log("is missing")
    assert re.search(rf"event=deferred id={qid} error=\"the body file \S+ of a queued "
                     rf"message is missing\" action=held", log), log
    assert setup.down.messages == []
    assert setup.cli("queue", "delete", qid).returncode == 0
    assert setup.queue() == []


def test_a_large_message_that_bounces_comes_back_whole_in_a_large_dsn(setup):
    """The original goes out from its file; the DSN that carries it back (RET=FULL) is
    large too, so the delivery process stores it as a file; both leave no file behind."""
    setup.down.behaviour.data = "554 5.6.0 content rejected"
    line = b"abcdefghij" * 7 + b"\r\n"
    big = b"Subject: big bounce\r\n\r\n" + line * (2_500_000 // len(line)) + b"the end\r\n"
    qid = setup.send(["a@example.com"], sender="someone@other.test", options=["RET=FULL"],
                     content=big)
    [dsn] = setup.other.wait_for(1, timeout=30)
    assert dsn.recipients == ["someone@other.test"] and dsn.sender == ""
    assert len(dsn.content) > 2_500_000
    assert b"the end\r\n" in dsn.content and f"id {qid}".encode() in dsn.content.replace(b"\r\n\t", b" ")
    # The NDR copy for the postmaster went to example.com, which refuses everything here: a
    # bounce of a bounce, so it waits in badmail, with its body file.
    rows = setup.wait_queue(lambda rows: rows and all(r["id"] != qid for r in rows) and any(
        [x["status"] for x in r["recipients"]] == ["delivered", "badmail"]
        and r["size"] > 2_500_000 for r in rows))
    [copy] = [r for r in rows if r["size"] > 2_500_000]
    # The original's file goes right after the COMMIT that removed its row.
    bodies = setup.data_dir / "bodies"
    until(lambda: [p.name for p in bodies.iterdir()], lambda names: names == [copy["id"]],
          timeout=5)
    assert "DSN for " + qid in setup.maillog()
    assert setup.cli("badmail", "delete", copy["id"]).returncode == 0
    assert list((setup.data_dir / "bodies").iterdir()) == []


def test_a_message_over_the_next_hops_size_bounces_in_the_relays_own_words(setup):
    """The next hop announces SIZE 100000: the message is not sent, and the DSN says the
    refusal is the relay's (X-relaywarden), not a reply the host gave (smtp)."""
    setup.down.stop()
    setup.down = Downstream(setup.down_port, size_limit=100_000).start()
    big = b"Subject: too big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 2000
    setup.send(["a@example.com"], sender="someone@other.test", content=big)
    [dsn] = setup.other.wait_for(1, timeout=20)
    text = dsn.content.decode()
    assert "Action: failed" in text and "Status: 5.3.4" in text
    assert "Diagnostic-Code: X-relaywarden;" in text and "Diagnostic-Code: smtp" not in text
    assert setup.down.messages == []


def test_expired_mail_bounces_with_4_4_7(tmp_path):
    s = Setup(tmp_path, expire=3)
    try:
        s.down.stop()
        qid = s.send(["late@example.com"], "late", sender="sender@other.test")
        [dsn] = s.other.wait_for(1, timeout=20)
        text = dsn.content.decode()
        assert "Action: failed" in text and "Status: 4.4.7" in text
        assert "Final-Recipient: rfc822; late@example.com" in text
        # The host never answered: the reason is the relay's own words, not the host's.
        assert "Diagnostic-Code: X-relaywarden;" in text and "said:" not in text
        s.wait_queue(lambda rows: qid not in [r["id"] for r in rows])
        assert re.search(rf"event=bounced id={qid} to=late@example.com .*4\.4\.7", s.maillog())
    finally:
        s.close()


@pytest.mark.slow   # load and kill -9; test_durability's quick case covers kill -9
def test_kill_9_during_delivery_every_acknowledged_message_arrives(setup):
    acknowledged: list[str] = []
    stop = threading.Event()

    def sender(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", setup.ports["main"], timeout=5) as c:
                c.ehlo("load")
                for i in range(400):
                    if stop.is_set():
                        return
                    subject = f"k{n}-{i}"
                    # sendmail returns only after the 250 (it raises otherwise)
                    c.sendmail("a@example.com", [f"r{n}@example.com"],
                               MSG % (subject.encode(), subject.encode()))
                    acknowledged.append(subject)
        except (OSError, smtplib.SMTPException):
            return

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    setup.relay.proc.send_signal(signal.SIGKILL)
    setup.relay.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    setup.relay = start_relay(setup.config, setup.data_dir, setup.ports)
    want = set(acknowledged)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = set(subjects(setup.down.messages))
        if want <= got:
            break
        time.sleep(0.2)
    missing = want - set(subjects(setup.down.messages))
    assert not missing, f"{len(missing)} acknowledged messages never arrived"
    setup.wait_queue(lambda rows: rows == [], timeout=30)


SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r\n\x00.\r\n",
           b"\r\n.\x00\r\n"]


def test_smuggling_probes_counted_at_the_downstream_server(setup):
    """Each probe hides a second transaction behind a fake end-of-data. Two counts prove
    it never becomes a message: the replies the client gets (one per real command), and the
    messages the downstream server receives (none with the smuggled subject, ever)."""
    import socket

    outer_accepted = 0
    for probe in SMUGGLE:
        s = socket.create_connection(("127.0.0.1", setup.ports["main"]), timeout=10)
        f = s.makefile("rb")

        def replies(n):
            got = []
            for _ in range(n):
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                got.append(int(line[:3]))
            return got

        assert replies(1) == [220]
        s.sendall(b"EHLO probe\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<outer@example.com>\r\nDATA\r\n")
        assert replies(4) == [250, 250, 250, 354]
        s.sendall(b"Subject: outer\r\n\r\nouter" + probe +
                  b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                  b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n")
        # exactly one reply for the (only) message, then QUIT's: no 250s for a second MAIL
        end, quit_code = replies(2)
        assert quit_code == 221
        assert end in (250, 550)
        outer_accepted += end == 250
        s.close()
    setup.send(["marker@example.com"], "marker")
    setup.down.wait_for(outer_accepted + 1)
    # Proven by events, not by waiting: the relay never queued a message for the smuggled
    # recipient (its mail log has every message it accepted), and a witness sent after all
    # of them has arrived (a message queued before it would have been delivered by then).
    log = setup.maillog()
    assert re.search(r"event=queued .*to=marker@example\.com", log)
    assert not re.search(r"event=queued .*victim@example\.com", log)
    setup.witness()
    with setup.down.lock:
        everything = list(setup.down.messages)
    assert len(everything) == outer_accepted + 2
    assert "smuggled" not in subjects(everything)
    assert all(m.recipients in (["outer@example.com"], ["marker@example.com"],
                                ["witness@example.com"]) for m in everything)
