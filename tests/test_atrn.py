"""ATRN (RFC 2645, On-Demand Mail Relay) through the real interface: a customer's server
logs in to the running relay, says ATRN, and then plays the SMTP server on its own
connection while the relay sends it the mail a hold route kept."""

from __future__ import annotations

import base64
import json
import re
import smtplib
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

import support.site
from support.relay import free_port, start_relay, write_config
from downstream import Downstream

PASSWORD = "shop secret 42"
CRAM_SECRET = "a secret for CRAM-MD5 only"

CONFIG = """
[relay]
hostname = "relay.test"
min_free_space = 0

[auth]
users_file = "users"
cram_md5_file = "cram"

[delivery]
tls = "none"
connect_timeout = 2
command_timeout = 5
data_timeout = 5
delay_notice_after = 0

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."shop.test"]
hold = true
atrn_users = ["Shop"]

[routes."shop2.test"]
hold = true
atrn_users = ["shop"]

[routes."other.test"]
hold = true
atrn_users = ["someone-else"]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
[listeners.main.auth]
enabled = true
plaintext_networks = ["127.0.0.1/32"]

[listeners.tls]
address = "127.0.0.1"
port = {tls}
[listeners.tls.tls]
mode = "starttls"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.tls.auth]
enabled = true
"""


@dataclass
class Got:
    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class Customer:
    """The customer's SMTP server, spoken over the connection it opened (RFC 2645 5.3).
    ``rcpt``: address -> reply instead of 250; ``hang_up_at_mail``: close the connection
    when MAIL number n (1-based) arrives."""
    rcpt: dict[str, str] = field(default_factory=dict)
    hang_up_at_mail: int = 0
    got: list[Got] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def serve(self, sock, reader) -> None:
        def send(text: str) -> None:
            sock.sendall(text.encode() + b"\r\n")
        send("220 shop.test ESMTP ready for your mail")
        sender, recipients, mails = "", [], 0
        while True:
            line = reader.readline()
            if not line:
                return
            text = line.decode().rstrip("\r\n")
            self.commands.append(text)
            verb = text[:4].upper()
            if verb == "EHLO":
                send("250 shop.test")
            elif verb == "MAIL":
                mails += 1
                if mails == self.hang_up_at_mail:
                    sock.close()
                    return
                sender, recipients = re.search(r"<(.*?)>", text).group(1), []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                address = re.search(r"<(.*?)>", text).group(1)
                answer = self.rcpt.get(address, "250 2.1.5 ok")
                if answer.startswith("250"):
                    recipients.append(address)
                send(answer)
            elif verb == "DATA":
                send("354 go ahead")
                content = b""
                while (chunk := reader.readline()) != b".\r\n":
                    content += chunk
                self.got.append(Got(sender, recipients, content))
                send("250 2.0.0 got it")
            elif verb == "RSET":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.1 what")


class Site(support.site.Site):
    listeners = ("main", "tls")

    def __init__(self, tmp_path: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("relay.test", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
        cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
        self.client_ctx = ssl.create_default_context()
        ca.configure_trust(self.client_ctx)
        for user in ("shop", "someone-else"):
            out = subprocess.run([sys.executable, "-m", "relaywarden", "user", "add", user,
                                  "--file", str(tmp_path / "users"), "--password-stdin"],
                                 input=PASSWORD + "\n", capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 0, out.stderr
        (tmp_path / "cram").write_text(f"# ODMR clients\nShop:{CRAM_SECRET}\n")
        super().__init__(tmp_path, CONFIG)

    def send(self, *to: str, sender: str = "app@example.com") -> str:
        with smtplib.SMTP("127.0.0.1", self.ports["main"], timeout=30) as c:
            c.ehlo("app.test")
            c.mail(sender)
            for rcpt in to:
                assert c.rcpt(rcpt)[0] == 250
            code, text = c.data(b"Subject: for the shop\r\n\r\nhello shop\r\n")
            assert code == 250, text
            return re.search(rb"queued as (\S+)", text).group(1).decode()

    def login(self, *, tls: bool = False, user: str = "shop") -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.ports["tls" if tls else "main"], timeout=30)
        c.ehlo("shop.test")
        if tls:
            c.starttls(context=self.client_ctx)
            c.ehlo("shop.test")
        assert c.has_extn("atrn")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        assert c.docmd("AUTH", "PLAIN " + token)[0] == 235
        return c

    def atrn(self, c: smtplib.SMTP, customer: Customer, domains: str = "") -> tuple[int, bytes]:
        """ATRN; on 250, play the customer's server until the relay says QUIT."""
        code, text = c.docmd("ATRN", domains) if domains else c.docmd("ATRN")
        if code == 250:
            reader = c.file or c.sock.makefile("rb")
            t = threading.Thread(target=customer.serve, args=(c.sock, reader), daemon=True)
            t.start()
            t.join(30)
            assert not t.is_alive(), "the relay never said QUIT"
        return code, text

    def statuses(self) -> dict[str, tuple[str, str]]:
        r = self.relay.reader()
        try:
            out = {}
            for m in r.list():
                shown = r.show(m["id"])
                for rcpt in shown["recipients"]:
                    out[rcpt["address"]] = (rcpt["status"], rcpt["held_by"])
            return out
        finally:
            r.close()



@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.relay.stop()
    s.down.stop()


HELD = ("held", "route")


def test_atrn_sends_the_held_mail_over_the_customers_connection(site):
    one = site.send("a@shop.test")
    two = site.send("b@shop.test", "c@shop.test")
    site.send("x@other.test")
    site.wait(lambda s: s == {"a@shop.test": HELD, "b@shop.test": HELD, "c@shop.test": HELD,
                              "x@other.test": HELD})
    customer = Customer()
    with site.login() as c:
        code, text = site.atrn(c, customer, "shop.test")
    assert (code, text) == (250, b"2.0.0 OK now reversing the connection")
    assert sorted(tuple(g.recipients) for g in customer.got) == [
        ("a@shop.test",), ("b@shop.test", "c@shop.test")]
    assert all(g.sender == "app@example.com" and b"hello shop" in g.content
               and b"Received: from app.test" in g.content for g in customer.got)
    assert customer.commands[0] == "EHLO relay.test" and customer.commands[-1] == "QUIT"
    # Delivered mail leaves the queue; other.test's mail was not the shop's to collect.
    site.wait(lambda s: s == {"x@other.test": HELD})
    assert site.down.messages == []
    # The session logs the end of the ATRN after the queue has let the messages go: wait
    # for that line (seen missing once on a loaded machine when read at once).
    log = site.wait_log(r"delivered=3 held=0 stage=done")
    assert re.search(r"event=atrn listener=main client=127\.0\.0\.1 user=shop "
                     r"domains=shop\.test messages=2", log), log
    assert len(re.findall(r"event=delivered .*relay=\"ATRN 127\.0\.0\.1", log)) == 3
    # The relay's side of the reversed connection is in the outbound protocol log, under
    # the ID of the inbound session that said ATRN; each message's lines under its queue ID.
    inbound = [json.loads(line) for line in site.relay.logs("ex", ".jsonl").splitlines()]
    [atrn] = [e for e in inbound if e["cs-method"] == "ATRN" and e["sc-status"] == 250]
    out = [e for e in map(json.loads, site.relay.logs("out", ".jsonl").splitlines())
           if e["x-session-id"] == atrn["x-session-id"]]
    methods = [e["cs-method"] for e in out]
    assert methods[:2] == ["CONNECT", "EHLO"] and methods[-1] == "QUIT"
    middle = out[2:-1]
    first, second = dict.fromkeys(e["x-queue-id"] for e in middle)
    assert {first, second} == {one, two}
    per = {one: ["MAIL", "RCPT", "DATA", "."], two: ["MAIL", "RCPT", "RCPT", "DATA", "."]}
    assert [(e["x-queue-id"], e["cs-method"]) for e in middle] == (
        [(first, m) for m in per[first]] + [(second, m) for m in per[second]])
    assert out[0]["x-queue-id"] == first and out[-1]["x-queue-id"] == second
    assert [e["sc-status"] for e in out if e["cs-method"] == "."] == [250, 250]
    assert {e["s-sitename"] for e in out} == {'routes."shop.test"'}


def test_atrn_without_domains_collects_every_domain_of_the_user(site):
    site.send("a@shop.test")
    site.send("b@shop2.test")
    site.wait(lambda s: len(s) == 2)
    customer = Customer()
    with site.login() as c:
        assert site.atrn(c, customer)[0] == 250
    assert sorted(r for g in customer.got for r in g.recipients) == ["a@shop.test", "b@shop2.test"]
    site.wait(lambda s: s == {})


def test_atrn_refusals(site):
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
        c.ehlo("shop.test")
        assert c.docmd("ATRN", "shop.test") == (530, b"5.7.0 Authentication required")
    with site.login() as c:
        # Not this user's domain, alone or in a list: the whole request is refused.
        assert c.docmd("ATRN", "other.test") == (450, b"4.7.1 ATRN request refused")
        assert c.docmd("ATRN", "shop.test,other.test")[0] == 450
        assert c.docmd("ATRN", "shop.test,,x")[0] == 501
        assert c.docmd("ATRN", "[10.0.0.1]")[0] == 501
        # Nothing waits: 453, and the session goes on.
        assert c.docmd("ATRN", "shop.test") == (453, b"4.3.0 You have no mail")
        assert c.noop()[0] == 250
    with site.login(user="someone-else") as c:
        assert c.docmd("ATRN", "shop.test")[0] == 450
    log = site.maillog()
    assert "event=reject stage=atrn listener=main client=127.0.0.1 user=shop code=450" in log


def test_what_the_customer_defers_goes_back_on_hold_and_refusals_bounce(site):
    qid = site.send("ok@shop.test", "later@shop.test", "nobody@shop.test")
    site.wait(lambda s: len(s) == 3 and all(v == HELD for v in s.values()))
    customer = Customer(rcpt={"later@shop.test": "452 4.2.2 mailbox full, try later",
                              "nobody@shop.test": "550 5.1.1 no such user"})
    with site.login() as c:
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert [g.recipients for g in customer.got] == [["ok@shop.test"]]
    # The 4xx recipient waits for the next ATRN; the 5xx one bounced (a DSN to the
    # sender, through routes."*" to the downstream server).
    site.wait(lambda s: s == {"ok@shop.test": ("delivered", ""), "later@shop.test": HELD,
                              "nobody@shop.test": ("bounced", "")})
    [dsn] = site.down.wait_for(1)
    assert dsn.sender == "" and dsn.recipients == ["app@example.com"]
    assert b"nobody@shop.test" in dsn.content and b"550 5.1.1 no such user" in dsn.content
    r = site.relay.reader()
    try:
        [later] = [x for x in r.show(qid)["recipients"] if x["address"] == "later@shop.test"]
    finally:
        r.close()
    assert later["attempts"] == 1 and "452 4.2.2 mailbox full" in later["last_error"]
    # Next time the mailbox has room.
    customer = Customer()
    with site.login() as c:
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert [g.recipients for g in customer.got] == [["later@shop.test"]]
    site.wait(lambda s: s == {})


def test_a_connection_lost_midway_leaves_the_rest_on_hold(site):
    for n in range(3):
        site.send(f"m{n}@shop.test")
    site.wait(lambda s: len(s) == 3)
    customer = Customer(hang_up_at_mail=2)
    with site.login() as c:
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert len(customer.got) == 1
    # One delivered; the two others back on hold, none lost, none stuck in a lease.
    site.wait(lambda s: len(s) == 2 and all(v == HELD for v in s.values()))
    customer = Customer()
    with site.login() as c:
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert len(customer.got) == 2
    got = {r for g in customer.got for r in g.recipients}
    assert len(got) == 2 and got < {"m0@shop.test", "m1@shop.test", "m2@shop.test"}
    site.wait(lambda s: s == {})


def test_atrn_after_starttls(site):
    site.send("a@shop.test")
    site.wait(lambda s: s == {"a@shop.test": HELD})
    customer = Customer()
    with site.login(tls=True) as c:
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert [g.recipients for g in customer.got] == [["a@shop.test"]]
    site.wait(lambda s: s == {})


def test_atrn_is_not_offered_without_atrn_users(tmp_path):
    port = free_port()
    config = write_config(tmp_path, """
        [relay]
        hostname = "relay.test"
        [routes."shop.test"]
        hold = true
        [listeners.main]
        address = "127.0.0.1"
        port = {main}
        """, main=port)
    relay = start_relay(config, tmp_path / "var", {"main": port})
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("shop.test")
            assert not c.has_extn("atrn")
            assert c.docmd("ATRN")[0] == 502
    finally:
        relay.stop()


def test_cram_md5_login_then_atrn(site):
    site.send("a@shop.test")
    site.wait(lambda s: s == {"a@shop.test": HELD})
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
        c.ehlo("shop.test")
        assert "CRAM-MD5" in c.esmtp_features["auth"].split()
        c.user, c.password = "shop", CRAM_SECRET
        assert c.auth("CRAM-MD5", c.auth_cram_md5)[0] == 235
        customer = Customer()
        assert site.atrn(c, customer, "shop.test")[0] == 250
    assert [g.recipients for g in customer.got] == [["a@shop.test"]]
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
        c.ehlo("shop.test")
        # The account password is not the CRAM-MD5 secret; an unknown name fails the same.
        for user, secret in (("shop", PASSWORD), ("nobody", CRAM_SECRET)):
            c.user, c.password = user, secret
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                c.auth("CRAM-MD5", c.auth_cram_md5)
            assert refused.value.smtp_code == 535
        # Not base64 of "name digest": 501.
        assert c.docmd("AUTH", "CRAM-MD5")[0] == 334
        assert c.docmd(base64.b64encode(b"shop nothex").decode())[0] == 501
    log = site.maillog()
    assert "event=auth listener=main client=127.0.0.1 mechanism=CRAM-MD5 result=ok" in log
    assert CRAM_SECRET not in log


def test_fetchmail_collects_by_odmr(site, tmp_path):
    """fetchmail's ODMR mode, a real RFC 2645 client: it logs in with CRAM-MD5, says ATRN,
    and hands the turned-around session to its own SMTP host (a real aiosmtpd server)."""
    site.send("a@shop.test")
    site.send("b@shop.test", "c@shop2.test")
    site.wait(lambda s: len(s) == 3)
    local = Downstream(free_port()).start()
    home = tmp_path / "fetchmail"
    home.mkdir()
    rc = home / "fetchmailrc"
    rc.write_text(f'poll 127.0.0.1 proto odmr port {site.ports["main"]}\n'
                  f'  user shop password "{CRAM_SECRET}" fetchdomains shop.test\n'
                  f'  smtphost 127.0.0.1/{local.port}\n')
    rc.chmod(0o600)
    try:
        out = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
                             capture_output=True, text=True, timeout=60,
                             env={"HOME": str(home), "FETCHMAILHOME": str(home),
                                  "PATH": "/usr/bin:/bin"})
        assert "ODMR> ATRN shop.test" in out.stdout, out.stdout + out.stderr
        got = local.wait_for(2)
    finally:
        local.stop()
    assert sorted(r for m in got for r in m.recipients) == ["a@shop.test", "b@shop.test"]
    # shop2.test was not asked for: still held (for the same message as b@shop.test).
    site.wait(lambda s: s == {"b@shop.test": ("delivered", ""), "c@shop2.test": HELD})
