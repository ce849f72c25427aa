"""The send half against the network as a relay meets it: the relay process, real downstream
SMTP servers on several loopback addresses, a real DNS server (unbound) with MX, null MX,
NXDOMAIN, SERVFAIL and unanswered names, TLS with a test CA, AUTH to a smart host, and
real clients (smtplib).

Hermetic: every config points [dns] at the loopback unbound (whose only data is the
RECORDS below) and every name there resolves to 127.0.0.0/8, so nothing leaves loopback.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import re
import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from support.relay import free_port, start_relay, until, write_config
from dnsserver import DnsServer
from downstream import Downstream

# Loopback addresses of the downstream servers (all on delivery.mx_port for MX hops).
MX1, MX2, DEAD, EQ1, EQ2, BARE = "127.0.0.11", "127.0.0.12", "127.0.0.16", "127.0.0.13", \
    "127.0.0.14", "127.0.0.15"
TLS_OK, TLS_WRONG, TLS_PLAIN, TLS_IMPLICIT = "127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"
SMART_A, SMART_B = "127.0.0.31", "127.0.0.32"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

RECORDS = {
    # preference 10 up, 20 up: the lowest preference gets the mail
    "mx.test": {"MX": [(10, "mx1.mx.test"), (20, "mx2.mx.test")]},
    "mx1.mx.test": {"A": MX1},
    "mx2.mx.test": {"A": MX2},
    # preference 10 has no listener: failover to 20
    "failover.test": {"MX": [(10, "dead.failover.test"), (20, "mx2.mx.test")]},
    "dead.failover.test": {"A": DEAD},
    # two hosts of equal preference: both share the load (RFC 5321 5.1)
    "equal.test": {"MX": [(10, "e1.equal.test"), (10, "e2.equal.test")]},
    "e1.equal.test": {"A": EQ1},
    "e2.equal.test": {"A": EQ2},
    # no MX, an A record: the implicit MX (RFC 5321 5.1)
    "bare.test": {"A": BARE},
    "nullmx.test": {"MX": [(0, ".")]},          # RFC 7505
    "broken.test": "servfail",
    "slowdns.test": "timeout",
    # TLS: the MX host name is what the certificate must match
    "tls.test": {"MX": [(10, "mx.tls.test")]},
    "mx.tls.test": {"A": TLS_OK},
    "wrongname.test": {"MX": [(10, "mx.wrongname.test")]},
    "mx.wrongname.test": {"A": TLS_WRONG},
    "plain.tls.test": {"A": TLS_PLAIN},
    "smtps.tls.test": {"A": TLS_IMPLICIT},
    # smart hosts by name
    "smart-a.test": {"A": SMART_A},
    "smart-b.test": {"A": SMART_B},
}


@pytest.fixture(scope="module")
def dns():
    with DnsServer(RECORDS, negative_ttl=5) as server:
        yield server


BASE = """
[relay]
hostname = "relay.test"
data_dir = "var"

[delivery]
retry_schedule = [1]
expire_after = {expire}
delay_notice_after = {delay_notice}
connect_timeout = 2
command_timeout = 3
data_timeout = 3
mx_port = {mx_port}
tls = "{tls}"
per_destination = {per_destination}
{delivery}

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 1

# DSNs go back to the senders, who all live at senders.test.
[routes."senders.test"]
next_hops = ["[127.0.0.1]:{bounce_port}"]
tls = "none"

{routes}

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.0/8"]
"""

MSG = (b"From: app@senders.test\r\nTo: someone@example.test\r\nSubject: %s\r\n"
       b"Message-ID: <%s@senders.test>\r\n\r\nbody %s\r\n")

SENDER = "app@senders.test"


class Setup:
    """One relay, its downstream servers, and helpers. Make the servers with server(),
    then start() the relay with the routes that name them."""

    def __init__(self, tmp_path: Path, dns: DnsServer) -> None:
        self.tmp = tmp_path
        self.dns = dns
        self.main = free_port()
        self.mx_port = free_port()
        self.servers: list[Downstream] = []
        self.bounces = self.server()          # 127.0.0.1, where senders.test's mail goes
        self.relay = None

    def server(self, host: str = "127.0.0.1", port: int | None = None, **kw) -> Downstream:
        down = Downstream(port or free_port(), host=host, **kw).start()
        self.servers.append(down)
        return down

    def mx_server(self, host: str, **kw) -> Downstream:
        return self.server(host, self.mx_port, **kw)

    def start(self, *, routes: str = "", delivery: str = "", tls: str = "opportunistic",
              expire: int = 600, delay_notice: int = 0, per_destination: int = 10) -> None:
        text = BASE.format(
            expire=expire, delay_notice=delay_notice, mx_port=self.mx_port, tls=tls,
            per_destination=per_destination, delivery=delivery, dns_port=self.dns.port,
            bounce_port=self.bounces.port, routes=routes, main=self.main)
        # Never the system resolver, never a name outside the loopback unbound.
        assert 'nameservers = ["127.0.0.1"]' in text
        config = write_config(self.tmp, text)
        self.relay = start_relay(config, self.tmp / "var", {"main": self.main})

    def send(self, to: list[str], subject: str = "hello", *, sender: str = SENDER,
             source: str = "127.0.0.1", options: tuple[str, ...] = (),
             rcpt_options: tuple[str, ...] = ()) -> str:
        with smtplib.SMTP("127.0.0.1", self.main, source_address=(source, 0), timeout=10) as c:
            c.ehlo("client.test")
            code, text = c.mail(sender, list(options))
            assert code == 250, text
            for rcpt in to:
                code, text = c.rcpt(rcpt, list(rcpt_options))
                assert code == 250, text
            code, text = c.data(MSG % (subject.encode(), subject.encode(), subject.encode()))
            assert code == 250, text
            return re.search(rb"queued as (\S+)", text).group(1).decode()

    def queue(self) -> list[dict]:
        return self.relay.messages()

    def statuses(self, qid: str) -> dict[str, str]:
        for row in self.queue():
            if row["id"] == qid:
                return {r["address"]: r["status"] for r in row["recipients"]}
        return {}

    def wait_queue(self, predicate, timeout: float = 20.0) -> list[dict]:
        return until(self.queue, predicate, timeout=timeout, step=0.1,
                     what="queue never got there")

    def gone(self, qid: str, timeout: float = 20.0) -> None:
        self.wait_queue(lambda rows: qid not in [r["id"] for r in rows], timeout)

    def maillog(self) -> str:
        """The mail log as of now: the relay writes out what it holds first (SIGUSR1)."""
        self.relay.flush_logs()
        return self.relay.logs("mail", ".log")

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Mail log lines matching `pattern` (a regex), once there are `count` of them
        (each look has the relay flush its logs: no waiting for its once-a-second timer)."""
        def matching() -> list[str]:
            return [line for line in self.maillog().splitlines() if re.search(pattern, line)]

        return until(matching, lambda found: len(found) >= count, timeout=timeout, step=0.1,
                     what=f"no {count} mail log line(s) match {pattern!r}")

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        for down in self.servers:
            down.stop()
        if self.relay is not None:
            # Hermetic: every next hop the relay tried was on loopback.
            tried = re.findall(r'relay="[^"\[]*\[([^\]]+)\]', self.maillog())
            assert all(ipaddress.ip_address(a) in LOOPBACK for a in tried), tried


@pytest.fixture
def setup(tmp_path, dns):
    s = Setup(tmp_path, dns)
    yield s
    s.close()


def subject(msg) -> str:
    return email.message_from_bytes(msg.content)["Subject"]


def report(msg) -> tuple[email.message.EmailMessage, str]:
    """A DSN as a parsed message and its message/delivery-status part as text."""
    parsed = email.message_from_bytes(msg.content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    [status] = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"]
    return parsed, status.as_bytes().decode()


# ----------------------------------------------------------------------- 1. MX routing


def test_mx_lowest_preference_failover_equal_preference_and_implicit_mx(setup):
    mx1, mx2 = setup.mx_server(MX1), setup.mx_server(MX2)
    eq1, eq2 = setup.mx_server(EQ1), setup.mx_server(EQ2)
    bare = setup.mx_server(BARE)
    setup.start()    # no [routes] entry for these domains: the default route, by MX

    # The lowest preference wins while it answers, every time.
    q1 = setup.send(["a@mx.test"], "pref")
    setup.send(["a2@mx.test"], "pref2")
    setup.send(["a3@mx.test"], "pref3")
    got = mx1.wait_for(3)
    assert sorted(m.recipients[0] for m in got) == ["a2@mx.test", "a3@mx.test", "a@mx.test"]
    # The primary of failover.test has nothing listening: the secondary takes it.
    q2 = setup.send(["b@failover.test"], "failover")
    [got] = mx2.wait_for(1)
    assert got.recipients == ["b@failover.test"]
    # Implicit MX: bare.test has only an A record.
    q3 = setup.send(["c@bare.test"], "implicit")
    [got] = bare.wait_for(1)
    assert got.recipients == ["c@bare.test"]
    # Equal preferences: both hosts get mail. 16 messages all on one side by chance:
    # p = 2 * 2**-16.
    for i in range(16):
        setup.send([f"u{i}@equal.test"], f"eq{i}")
    until(lambda: (len(eq1.messages), len(eq2.messages)), lambda n: sum(n) >= 16)
    assert len(eq1.messages) >= 1 and len(eq2.messages) >= 1, (len(eq1.messages),
                                                                 len(eq2.messages))
    assert len(eq1.messages) + len(eq2.messages) == 16
    setup.wait_queue(lambda rows: rows == [])
    assert len(mx1.messages) == 3 and len(mx2.messages) == 1    # nothing doubled
    assert setup.bounces.messages == []
    setup.wait_log(rf'event=delivered id={q1} to=a@mx.test relay="?mx1\.mx\.test')
    setup.wait_log(rf'event=delivered id={q2} to=b@failover.test relay="?mx2\.mx\.test')
    setup.wait_log(rf'event=delivered id={q3} to=c@bare.test relay="?bare\.test')
    # The failed primary was tried first and the attempt is in the log.
    setup.wait_log(rf'event=deferred id={q2} relay="?dead\.failover\.test')


# ------------------------------------------------------------------ 2. DNS outcomes


def test_null_mx_bounces_at_once_with_556_5_1_10(setup):
    setup.start()
    qid = setup.send(["x@nullmx.test"], "nullmx")
    [dsn] = setup.bounces.wait_for(1, timeout=10)
    assert dsn.sender == "" and dsn.recipients == [SENDER]
    _, status = report(dsn)
    assert "Final-Recipient: rfc822; x@nullmx.test" in status
    assert "Action: failed" in status and "Status: 5.1.10" in status
    setup.gone(qid)
    [line] = setup.wait_log(rf"event=bounced id={qid} ")
    assert "556 5.1.10" in line
    # Bounced at once: exactly one attempt, never a retry, no connection anywhere.
    assert not re.search(rf"event=(attempt|deferred) id={qid}", setup.maillog())


def test_nxdomain_bounces_5_1_2(setup):
    setup.start()
    qid = setup.send(["x@nosuchdomain.test"], "nx")
    [dsn] = setup.bounces.wait_for(1, timeout=10)
    _, status = report(dsn)
    assert "Final-Recipient: rfc822; x@nosuchdomain.test" in status
    assert "Action: failed" in status and "Status: 5.1.2" in status
    setup.gone(qid)
    [line] = setup.wait_log(rf"event=bounced id={qid} ")
    assert "5.1.2" in line and "NXDOMAIN" in line


def test_smart_host_name_not_found_is_deferred_not_bounced(setup):
    # NXDOMAIN for the recipient's domain means the address is wrong: a bounce. NXDOMAIN
    # for a configured next hop says nothing about the recipient; it is a typo or a DNS
    # fault the admin can mend, so the mail waits.
    setup.start(routes="""
[routes."far.test"]
next_hops = ["smarthost.nosuchdomain.test"]
""")
    qid = setup.send(["x@far.test"], "typo")
    lines = setup.wait_log(rf"event=deferred id={qid} to=x@far.test ", count=2)
    assert all("451 4." in line and "smarthost.nosuchdomain.test" in line for line in lines)
    assert setup.statuses(qid) == {"x@far.test": "queued"}
    assert not re.search(rf"event=bounced id={qid}", setup.maillog())
    assert setup.bounces.messages == []


def test_servfail_and_dns_timeout_defer_and_stay_queued(setup):
    setup.start()
    q_fail = setup.send(["x@broken.test"], "servfail")
    q_slow = setup.send(["y@slowdns.test"], "timeout")
    for qid, address in ((q_fail, "x@broken.test"), (q_slow, "y@slowdns.test")):
        # deferred more than once: the retry schedule goes on, nothing is bounced
        lines = setup.wait_log(rf"event=deferred id={qid} to={re.escape(address)} ", count=2)
        assert all("451 4.4.3" in line for line in lines), lines
        assert setup.statuses(qid) == {address: "queued"}
    log = setup.maillog()
    assert "SERVFAIL" in log.split(f"id={q_fail} to=")[1].splitlines()[0]
    assert "timed out" in log.split(f"id={q_slow} to=")[1].splitlines()[0]
    assert not re.search(rf"event=bounced id=({q_fail}|{q_slow})", log)
    assert setup.bounces.messages == []


# ------------------------------------------------------------------- 3. slow next hop


class Mute:
    """Accepts TCP connections and never says a word (a hung MTA)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_next_hop_that_never_greets_is_deferred_then_delivered(setup):
    port = free_port()
    mute = Mute("127.0.0.1", port)
    try:
        setup.start(routes=f"""
[routes."slow.test"]
next_hops = ["[127.0.0.1]:{port}"]
""")
        started = time.monotonic()
        qid = setup.send(["x@slow.test"], "mute")
        line = setup.wait_log(rf"event=deferred id={qid} to=x@slow.test ")[0]
        # command_timeout is 3 s: the attempt waited that long for the greeting, no longer
        assert 2.5 <= time.monotonic() - started < 10
        assert "timeout waiting for the greeting reply" in line and "451 4.4.2" in line
        assert setup.statuses(qid) == {"x@slow.test": "queued"}
        assert mute.accepted
    finally:
        mute.close()
    down = setup.server("127.0.0.1", port)
    [got] = down.wait_for(1, timeout=20)
    assert got.recipients == ["x@slow.test"] and subject(got) == "mute"
    setup.gone(qid)
    setup.wait_log(rf"event=delivered id={qid} to=x@slow.test")


@pytest.mark.slow   # waits out data_timeout; the greeting timeout case covers a slow next hop
def test_next_hop_slow_after_the_final_dot_is_deferred_then_delivered(setup):
    down = setup.server()
    down.behaviour.data_delay = 5          # longer than data_timeout = 3
    setup.start(routes=f"""
[routes."slow.test"]
next_hops = ["[127.0.0.1]:{down.port}"]
""")
    qid = setup.send(["x@slow.test"], "slowdata")
    until(lambda: down.delayed, timeout=10)      # the first attempt waits for its answer
    down.behaviour.data_delay = 0  # from the next attempt on
    line = setup.wait_log(rf"event=deferred id={qid} to=x@slow.test ")[0]
    assert "timeout waiting for the data reply" in line and "451 4.4.2" in line
    [got] = down.wait_for(1, timeout=20)
    assert got.recipients == ["x@slow.test"]
    setup.gone(qid)
    [delivered] = setup.wait_log(rf"event=delivered id={qid} to=x@slow.test")
    assert delivered > line             # a later attempt (the lines start with a timestamp)
    # Once delivered, never again: a witness to the same next hop, sent now, arrives alone.
    setup.send(["witness@slow.test"], "witness")
    got = down.wait_for(2)
    assert [m.recipients for m in got] == [["x@slow.test"], ["witness@slow.test"]]


# ----------------------------------------------------------------------------- 4. TLS


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def test_tls_verify_by_mx_name_wrong_name_required_and_implicit(setup, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    good = setup.mx_server(TLS_OK, tls_context=server_context(ca, "mx.tls.test"))
    # a valid certificate from the trusted CA, but for another name than the MX host's
    wrong = setup.mx_server(TLS_WRONG, tls_context=server_context(ca, "mx.tls.test"))
    plain = setup.mx_server(TLS_PLAIN)                       # offers no STARTTLS
    smtps = setup.server(TLS_IMPLICIT, ssl_context=server_context(ca, "smtps.tls.test"))
    setup.start(tls="verify", delivery=f'ca_file = "{ca_file}"', routes=f"""
[routes."required.test"]
next_hops = ["plain.tls.test"]
tls = "required"

[routes."smtps.test"]
next_hops = ["smtps.tls.test:{smtps.port}"]
implicit_tls = true
""")
    q_good = setup.send(["a@tls.test"], "verified")
    q_wrong = setup.send(["b@wrongname.test"], "wrongname")
    q_plain = setup.send(["c@required.test"], "required")
    q_smtps = setup.send(["d@smtps.test"], "implicit")

    [got] = good.wait_for(1)
    assert got.recipients == ["a@tls.test"]
    assert got.tls in ("TLSv1.2", "TLSv1.3")          # the downstream saw TLS
    [got] = smtps.wait_for(1)
    assert got.recipients == ["d@smtps.test"] and got.tls in ("TLSv1.2", "TLSv1.3")
    setup.wait_log(rf'event=delivered id={q_good} to=a@tls.test relay="?mx\.tls\.test')
    setup.wait_log(rf'event=delivered id={q_smtps} to=d@smtps.test relay="?smtps\.tls\.test')

    line = setup.wait_log(rf"event=deferred id={q_wrong} relay=.* stage=starttls ")[0]
    assert "4.7.5 TLS failed: certificate" in line and "Hostname mismatch" in line, line
    line = setup.wait_log(rf"event=deferred id={q_plain} relay=.* stage=starttls ")[0]
    assert "4.7.4 TLS required but not available" in line, line
    for qid, address in ((q_wrong, "b@wrongname.test"), (q_plain, "c@required.test")):
        setup.wait_log(rf"event=deferred id={qid} to={re.escape(address)} ", count=2)
        assert setup.statuses(qid) == {address: "queued"}
    assert wrong.messages == [] and plain.messages == []
    assert setup.bounces.messages == []


# ----------------------------------------------------------------------------- 5. AUTH


class Accounts:
    def __init__(self, **passwords: str) -> None:
        self.passwords = passwords
        self.tries: list[tuple[str, str]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.tries.append((mechanism, user))
        ok = self.passwords.get(user) == password and session.ssl is not None
        # handled=False: aiosmtpd itself answers a failure (535 5.7.8).
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def test_auth_to_smart_hosts_and_sender_dependent_routes(setup, tmp_path):
    good_pw, bad_pw = tmp_path / "good.password", tmp_path / "bad.password"
    good_pw.write_text("s3cret pass\n")
    bad_pw.write_text("guess\n")
    accounts = Accounts(relay="s3cret pass")
    tls = server_context(trustme.CA(), "smart-a.test")
    # A: STARTTLS and AUTH required (aiosmtpd offers AUTH only after STARTTLS).
    smart_a = setup.server(SMART_A, tls_context=tls, require_starttls=True,
                           authenticator=accounts)
    smart_b = setup.server(SMART_B)
    setup.start(routes=f"""
[routes."*"]
next_hops = ["smart-a.test:{smart_a.port}"]
tls = "required"
username = "relay"
password_file = "{good_pw}"

[sender_routes.wrong]
sender_domains = ["wrongpw.test"]
next_hops = ["smart-a.test:{smart_a.port}"]
tls = "required"
username = "relay"
password_file = "{bad_pw}"

[sender_routes.apps]
groups = ["apps"]
sender_domains = ["apps.test"]
next_hops = ["smart-b.test:{smart_b.port}"]
tls = "none"

[groups.apps]
networks = ["127.0.0.5/32"]
""")
    q1 = setup.send(["x@far.test"], "auth")
    [got] = smart_a.wait_for(1)
    assert got.recipients == ["x@far.test"] and got.login == "relay" and got.tls
    setup.wait_log(rf"event=delivered id={q1} to=x@far.test")

    # Mail from apps.test, or from a client in group apps, goes to B; the rest to A.
    q2 = setup.send(["y@far.test"], "by-domain", sender="job@apps.test")
    q3 = setup.send(["z@far.test"], "by-group", sender="job@senders.test", source="127.0.0.5")
    got = smart_b.wait_for(2)
    assert sorted(subject(m) for m in got) == ["by-domain", "by-group"]
    assert all(m.login is None for m in got)
    setup.wait_log(rf"event=delivered id={q2} to=y@far.test .*route=sender_routes\.apps")
    setup.wait_log(rf"event=delivered id={q3} to=z@far.test .*route=sender_routes\.apps")

    # A wrong password: refused by the smart host, deferred (an admin can mend it).
    q4 = setup.send(["w@far.test"], "badpw", sender="x@wrongpw.test")
    line = setup.wait_log(rf"event=deferred id={q4} relay=.* stage=auth ")[0]
    assert "535" in line, line
    setup.wait_log(rf"event=deferred id={q4} to=w@far.test ", count=2)
    assert setup.statuses(q4) == {"w@far.test": "queued"}
    assert ("PLAIN", "relay") in accounts.tries
    assert len(smart_a.messages) == 1 and len(smart_b.messages) == 2
    assert not re.search(rf"event=bounced id={q4}", setup.maillog())


# ----------------------------------------------------------------------------- 6. DSN


def test_notify_success_to_a_next_hop_without_dsn_gives_a_relayed_notice(setup):
    down = setup.server()
    setup.start(routes=f"""
[routes."far.test"]
next_hops = ["[127.0.0.1]:{down.port}"]
tls = "none"
""")
    qid = setup.send(["x@far.test"], "success", options=("ENVID=env-42",),
                     rcpt_options=("NOTIFY=SUCCESS", "ORCPT=rfc822;x@far.test"))
    [got] = down.wait_for(1)
    assert got.rcpt_options == [[]]           # aiosmtpd offers no DSN: nothing passed on
    [dsn] = setup.bounces.wait_for(1)
    assert dsn.sender == "" and dsn.recipients == [SENDER]
    _, status = report(dsn)
    assert "Action: relayed" in status and "Status: 2." in status
    assert "Final-Recipient: rfc822; x@far.test" in status
    assert "Original-Envelope-Id: env-42" in status
    setup.gone(qid)


def test_notify_never_on_a_rejected_recipient_sends_no_dsn(setup):
    down = setup.server()
    down.behaviour.rcpt = {"gone@far.test": "550 5.1.1 no such user",
                           "gone2@far.test": "550 5.1.1 no such user"}
    setup.start(routes=f"""
[routes."far.test"]
next_hops = ["[127.0.0.1]:{down.port}"]
tls = "none"
""")
    qid = setup.send(["gone@far.test"], "never", rcpt_options=("NOTIFY=NEVER",))
    setup.wait_log(rf"event=bounced id={qid} to=gone@far.test")
    setup.gone(qid)
    # A second message that does want its failure reported: once its DSN is in, the first
    # one's would have been too.
    later = setup.send(["gone2@far.test"], "failure", rcpt_options=("NOTIFY=FAILURE",))
    [dsn] = setup.bounces.wait_for(1)
    assert "gone2@far.test" in report(dsn)[1]
    setup.gone(later)
    # The relay queues a DSN with reason "DSN for ID" (its mail log says so): one for the
    # second message, none for the first.
    log = setup.maillog()
    assert f"DSN for {later}" in log and f"DSN for {qid}" not in log
    assert len(setup.bounces.messages) == 1


def test_delay_notice_once_while_retries_go_on(setup):
    dead = free_port()
    setup.start(delay_notice=2, expire=60, routes=f"""
[routes."late.test"]
next_hops = ["[127.0.0.1]:{dead}"]
""")
    qid = setup.send(["x@late.test"], "delayed")
    [dsn] = setup.bounces.wait_for(1, timeout=15)
    parsed, status = report(dsn)
    assert "Action: delayed" in status and "Status: 4." in status
    assert "Will-Retry-Until:" in status
    assert "Final-Recipient: rfc822; x@late.test" in status
    # The retries go on (about one a second), and no second notice comes.
    seen = len(re.findall(rf"event=deferred id={qid} to=", setup.maillog()))
    setup.wait_log(rf"event=deferred id={qid} to=x@late.test ", count=seen + 3, timeout=15)
    assert len(setup.bounces.messages) == 1
    assert setup.statuses(qid) == {"x@late.test": "queued"}
    # and it is delivered when the next hop comes back
    down = setup.server("127.0.0.1", dead)
    [got] = down.wait_for(1, timeout=15)
    assert got.recipients == ["x@late.test"]
    setup.gone(qid)
    assert len(setup.bounces.messages) == 1


def test_ret_hdrs_bounce_holds_only_the_headers(setup):
    down = setup.server()
    down.behaviour.rcpt = {"gone@far.test": "550 5.1.1 no such user"}
    setup.start(routes=f"""
[routes."far.test"]
next_hops = ["[127.0.0.1]:{down.port}"]
tls = "none"
""")
    qid = setup.send(["gone@far.test"], "hdrs", options=("RET=HDRS",))
    [dsn] = setup.bounces.wait_for(1)
    parsed, status = report(dsn)
    assert "Action: failed" in status and "Status: 5.1.1" in status
    parts = [p.get_content_type() for p in parsed.walk()]
    assert "text/rfc822-headers" in parts and "message/rfc822" not in parts
    assert b"Subject: hdrs" in dsn.content and b"Message-ID: <hdrs@senders.test>" in dsn.content
    assert b"body hdrs" not in dsn.content
    setup.gone(qid)


# ----------------------------------------------------------- 7. connection reuse


def test_a_burst_shares_connections_to_one_next_hop(setup):
    down = setup.server()
    setup.start(per_destination=3, routes=f"""
[routes."far.test"]
next_hops = ["[127.0.0.1]:{down.port}"]
tls = "none"
""")
    n = 30
    with smtplib.SMTP("127.0.0.1", setup.main, timeout=10) as c:
        c.ehlo("burst.test")
        for i in range(n):
            c.sendmail(SENDER, [f"r{i}@far.test"], MSG % ((f"b{i}".encode(),) * 3))
    got = down.wait_for(n, timeout=30)
    assert sorted(subject(m) for m in got) == sorted(f"b{i}" for i in range(n))
    setup.wait_queue(lambda rows: rows == [])
    per_connection: dict[int, int] = {}
    for m in got:
        per_connection[m.connection] = per_connection.get(m.connection, 0) + 1
    assert down.connections < n, down.connections
    assert max(per_connection.values()) >= 2, per_connection
    assert down.max_open <= 3, down.max_open     # delivery.per_destination
