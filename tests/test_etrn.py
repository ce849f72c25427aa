"""ETRN (RFC 1985) through the real interface: a client asks the running relay to start a
domain's queue, the relay delivers what it held to a real downstream server."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support.site
from support.relay import free_port, start_relay, write_config

CONFIG = """
[relay]
hostname = "relay.test"

[delivery]
retry_schedule = [600]
expire_after = 3600
delay_notice_after = 0
connect_timeout = 2
command_timeout = 3
data_timeout = 5
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."branch.test"]
hold = true
etrn = true
next_hops = ["[127.0.0.1]:{down}"]

[routes."*.branch.test"]
hold = true
etrn = true
next_hops = ["[127.0.0.1]:{down}"]

[routes."closed.test"]
hold = true
next_hops = ["[127.0.0.1]:{down}"]

[routes."limited.test"]
hold = true
etrn = true
etrn_networks = ["127.0.0.2/32"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."plain.test"]
etrn = true
next_hops = ["[127.0.0.1]:{down}"]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.0/8"]
"""


class Site(support.site.Site):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, CONFIG)

    def send(self, *to: str) -> str:
        with smtplib.SMTP("127.0.0.1", self.ports["main"], timeout=30) as c:
            c.ehlo("client.test")
            c.mail("app@example.com")
            for rcpt in to:
                assert c.rcpt(rcpt)[0] == 250
            code, text = c.data(b"Subject: for the branch\r\n\r\nhello\r\n")
            assert code == 250, text
            return re.search(rb"queued as (\S+)", text).group(1).decode()

    def etrn(self, *nodes: str, source: str = "127.0.0.1") -> list[tuple[int, str]]:
        """Each node in one session (after EHLO); the replies as (code, text)."""
        with smtplib.SMTP("127.0.0.1", self.ports["main"], source_address=(source, 0),
                          timeout=30) as c:
            c.ehlo("branch-server.test")
            assert c.has_extn("etrn")
            return [(code, text.decode()) for code, text in
                    (c.docmd("ETRN", node) if node else c.docmd("ETRN") for node in nodes)]


    def show(self, queue_id: str) -> dict:
        r = self.relay.reader()
        try:
            return r.show(queue_id)
        finally:
            r.close()

    def tried_once(self, queue_id: str) -> dict:
        """Wait for the first attempt at the message's first recipient; its queue row."""
        deadline = time.monotonic() + 20
        while True:
            rcpt = self.show(queue_id)["recipients"][0]
            if rcpt["attempts"] >= 1:
                return rcpt
            assert time.monotonic() < deadline, rcpt
            time.sleep(0.1)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relaywarden", *args, "--config",
                               str(self.config)], capture_output=True, text=True, timeout=60)

    def maillog(self) -> str:
        self.relay.flush_logs()
        return self.relay.logs("mail", ".log")


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.relay.stop()
    s.down.stop()


def test_etrn_starts_the_mail_a_hold_route_kept(site):
    site.send("a@branch.test")
    site.send("b@branch.test", "c@branch.test")
    site.wait(lambda s: s == {"a@branch.test": "held", "b@branch.test": "held",
                              "c@branch.test": "held"})
    # held: nothing went out by itself
    got = site.witness()                       # delivery ran meanwhile
    assert [m.recipients for m in got] == [["witness@example.com"]]
    site.down.messages.clear()

    [answer] = site.etrn("branch.test")
    assert answer == (253, "2.0.0 OK, 2 pending messages for node branch.test started")
    got = site.down.wait_for(2)
    assert sorted(r for m in got for r in m.recipients) == [
        "a@branch.test", "b@branch.test", "c@branch.test"]
    site.wait(lambda s: s == {})
    # Nothing is waiting any more; the second ETRN says so.
    assert site.etrn("BRANCH.test.") == [(251, "2.0.0 OK, no messages waiting for node branch.test")]
    log = site.maillog()
    assert re.search(r"event=etrn listener=main client=127\.0\.0\.1 node=branch\.test "
                     r"domains=branch\.test messages=2", log), log
    assert ("event=etrn listener=main client=127.0.0.1 node=branch.test domains=branch.test"
            " messages=0") in log


def test_etrn_for_a_domain_without_etrn_is_459_and_the_mail_stays(site):
    qid = site.send("x@closed.test")
    site.wait(lambda s: s == {"x@closed.test": "held"})
    [answer] = site.etrn("closed.test")
    assert answer == (459, "4.7.1 Node closed.test not allowed: ETRN is not enabled for this domain")
    # A domain the relay has no route for at all goes by MX: no ETRN either.
    assert site.etrn("elsewhere.test")[0][0] == 459
    got = site.witness()                       # delivery ran meanwhile
    assert [m.recipients for m in got] == [["witness@example.com"]]
    site.down.messages.clear()
    assert site.statuses() == {"x@closed.test": "held"}
    assert site.show(qid)["recipients"][0]["held_by"] == "route"
    log = site.maillog()
    assert ('event=reject stage=etrn listener=main client=127.0.0.1 code=459 '
            'rule="routes.\\"closed.test\\"" reason="ETRN is not enabled for this domain" '
            'node=closed.test') in log, log


def test_etrn_networks_decide_who_may_start_a_queue(site):
    site.send("x@limited.test")
    site.wait(lambda s: s == {"x@limited.test": "held"})
    [refused] = site.etrn("limited.test", source="127.0.0.1")
    assert refused == (459, "4.7.1 Node limited.test not allowed: this client may not start "
                            "the domain's queue")
    got = site.witness()                       # delivery ran meanwhile
    assert [m.recipients for m in got] == [["witness@example.com"]]
    site.down.messages.clear()
    [started] = site.etrn("limited.test", source="127.0.0.2")
    assert started[0] == 253
    [msg] = site.down.wait_for(1)
    assert msg.recipients == ["x@limited.test"]


def test_etrn_at_domain_starts_the_subdomains_too(site):
    site.send("a@branch.test")
    site.send("b@sales.branch.test")
    site.send("c@closed.test")
    site.wait(lambda s: len(s) == 3 and set(s.values()) == {"held"})
    [answer] = site.etrn("@branch.test")
    assert answer == (253, "2.0.0 OK, 2 pending messages for node @branch.test started")
    got = site.down.wait_for(2)
    assert sorted(r for m in got for r in m.recipients) == ["a@branch.test", "b@sales.branch.test"]
    site.wait(lambda s: s == {"c@closed.test": "held"})
    # "@closed.test": neither it nor anything below it may be started.
    assert site.etrn("@closed.test")[0][0] == 459


def test_a_triggered_delivery_that_fails_goes_back_to_the_hold(site):
    qid = site.send("a@branch.test")
    site.wait(lambda s: s == {"a@branch.test": "held"})
    site.down.behaviour.data = "451 4.3.0 the branch server is busy"
    assert site.etrn("branch.test")[0][0] == 253
    # Tried once, then held again (waiting for the next ETRN), not put on the retry schedule.
    rcpt = site.tried_once(qid)
    assert rcpt["attempts"] == 1 and rcpt["status"] == "held" and rcpt["held_by"] == "route"
    assert "451 4.3.0 the branch server is busy" in rcpt["last_error"]
    log = site.maillog()
    assert re.search(r"event=deferred id=" + qid + r" to=a@branch\.test .*action=held", log), log
    # The branch server is fine again: the next ETRN delivers.
    site.down.behaviour.data = None
    assert site.etrn("branch.test")[0] == (
        253, "2.0.0 OK, 1 pending messages for node branch.test started")
    [msg] = site.down.wait_for(1)
    assert msg.recipients == ["a@branch.test"]
    site.wait(lambda s: s == {})


def test_etrn_on_a_normal_route_retries_waiting_mail_now(site):
    # retry_schedule is 600 s: without ETRN the deferred message would wait ten minutes.
    site.down.behaviour.data = "451 4.3.0 not now"
    qid = site.send("x@plain.test")
    site.tried_once(qid)
    assert site.statuses() == {"x@plain.test": "queued"}
    site.down.behaviour.data = None
    assert site.etrn("plain.test")[0][0] == 253
    [msg] = site.down.wait_for(1)
    assert msg.recipients == ["x@plain.test"]
    site.wait(lambda s: s == {})


def test_etrn_leaves_what_the_admin_held(site):
    site.down.behaviour.data = "451 4.3.0 not now"
    qid = site.send("x@plain.test")
    site.tried_once(qid)
    out = site.cli("queue", "hold", qid)
    assert out.returncode == 0, out.stderr
    site.down.behaviour.data = None
    assert site.etrn("plain.test") == [(251, "2.0.0 OK, no messages waiting for node plain.test")]
    got = site.witness()                       # delivery ran meanwhile
    assert [m.recipients for m in got] == [["witness@example.com"]]
    site.down.messages.clear()
    shown = site.show(qid)["recipients"][0]
    assert (shown["status"], shown["held_by"]) == ("held", "admin")


def test_etrn_syntax_sequence_and_session_cap(site):
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
        assert c.docmd("ETRN", "branch.test")[0] == 503          # before EHLO
        c.ehlo("client.test")
        assert c.docmd("ETRN")[0] == 501
        assert c.docmd("ETRN", "not a domain")[0] == 501
        assert c.docmd("ETRN", "#queue")[0] == 459
        c.mail("app@example.com")
        code, text = c.docmd("ETRN", "branch.test")
        assert (code, text) == (503, b"5.5.1 ETRN not permitted during a mail transaction")
        c.rset()
        answers = [c.docmd("ETRN", "branch.test")[0] for _ in range(21)]
        assert answers == [251] * 20 + [459]
        assert c.noop()[0] == 250


def test_etrn_is_not_offered_without_an_etrn_route(tmp_path):
    port, down = free_port(), free_port()
    config = write_config(tmp_path, """
        [relay]
        hostname = "relay.test"
        [routes."branch.test"]
        hold = true
        next_hops = ["[127.0.0.1]:{down}"]
        [listeners.main]
        address = "127.0.0.1"
        port = {main}
        """, main=port, down=down)
    relay = start_relay(config, tmp_path / "var", {"main": port})
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.test")
            assert not c.has_extn("etrn")
            assert c.docmd("ETRN", "branch.test")[0] == 502
    finally:
        relay.stop()


def test_queue_show_names_who_holds_a_recipient(site):
    qid = site.send("a@branch.test")
    site.wait(lambda s: s == {"a@branch.test": "held"})
    out = site.cli("queue", "show", qid)
    assert "recipient:    a@branch.test [held by route]" in out.stdout, out.stdout
    as_json = site.cli("queue", "show", qid, "--json")
    assert json.loads(as_json.stdout)["recipients"][0]["held_by"] == "route"
