"""The metrics of a real relay (receiving, delivery and admin processes) after real SMTP
traffic: the counters equal what was sent, read from the merged files and over HTTP."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

import support.site
from support.relay import free_port, start_relay
from relaywarden import metrics

PASSWORD = "correct horse battery"

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[delivery]
retry_schedule = [1]
connect_timeout = 2

[routes."down.test"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."example.com"]
next_hops = ["[127.0.0.1]:{down}"]

[auth]
users_file = "users"
[auth.throttle]
delays = [0]
client_limit = 50
user_limit = 50

[groups.scanners]
networks = ["127.0.0.3/32"]
recipient_domains = ["down.test"]
on_violation = "badmail"

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.access]
default = "allow"
deny = ["127.0.0.66/32"]
[listeners.main.relay]
networks = ["127.0.0.1/32", "127.0.0.3/32"]

[listeners.sub]
address = "127.0.0.1"
port = {sub}
[listeners.sub.tls]
mode = "starttls"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.sub.auth]
enabled = true
[listeners.sub.relay]
networks = []
authenticated = true

[admin]
enabled = true
address = "127.0.0.1"
port = {admin}
"""

MSG = b"From: app@down.test\r\nTo: x@down.test\r\nSubject: m\r\n\r\nbody\r\n"

N_SENT = 5        # accepted and delivered
M_DENIED = 3      # RCPT refused: 550 relay denied
K_BADMAIL = 2     # accepted, kept in badmail
AUTH_FAIL = 2
AUTH_OK = 1


def scrape_text(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Site(support.site.Site):
    listeners = ("main", "sub")

    def __init__(self, tmp):
        ca = trustme.CA()
        cert = ca.issue_cert("relay.test", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp / "relay.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "relay.key"))
        self.client_ctx = ssl.create_default_context()
        ca.configure_trust(self.client_ctx)
        out = subprocess.run([sys.executable, "-m", "relaywarden", "user", "add", "alice",
                              "--file", str(tmp / "users"), "--password-stdin"],
                             input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        self.admin_port = free_port()
        super().__init__(tmp, CONFIG, admin=self.admin_port)

    def send(self, to: str, source="127.0.0.1") -> None:
        with self.smtp(source=source) as c:
            c.mail("app@down.test")
            code, text = c.rcpt(to)
            assert code == 250, text
            code, text = c.data(MSG)
            assert code == 250, text

    def http_metrics(self) -> tuple[str, str]:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
                    return r.read().decode(), r.headers["Content-Type"]
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def wait_scrape(data_dir, until, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        body, _ = metrics.exposition(data_dir)
        samples = scrape_text(body.decode())
        if until(samples):
            return samples
        if time.monotonic() > deadline:
            return samples           # the asserts say what is off
        time.sleep(0.2)


def test_counters_equal_the_traffic_sent(site):
    for i in range(N_SENT):
        site.send(f"user{i}@down.test")
    # Relay denied: 127.0.0.5 is not in the relay networks and out.test is not hosted.
    with site.smtp(source="127.0.0.5") as c:
        c.mail("someone@elsewhere.test")
        for i in range(M_DENIED):
            code, _ = c.rcpt(f"r{i}@out.test")
            assert code == 550
    # Scanners may only send to down.test: other domains are accepted into badmail.
    for i in range(K_BADMAIL):
        site.send(f"q{i}@else.test", source="127.0.0.3")
    # Refused at connect (access deny): 554 greeting.
    with smtplib.SMTP(timeout=20) as c:
        c.source_address = ("127.0.0.66", 0)
        code, _ = c.connect("127.0.0.1", site.ports["main"], source_address=("127.0.0.66", 0))
        assert code == 554
    # AUTH over STARTTLS on the submission listener.
    for password in ["wrong"] * AUTH_FAIL + [PASSWORD] * AUTH_OK:
        with site.smtp("sub") as c:
            c.starttls(context=site.client_ctx)
            c.ehlo("client.test")
            c.user, c.password = "alice", password
            try:     # one AUTH command (login() would try every mechanism offered)
                c.auth("PLAIN", c.auth_plain)
            except smtplib.SMTPAuthenticationError:
                assert password != PASSWORD
            else:
                assert password == PASSWORD

    site.down.wait_for(N_SENT)
    # The messages, the denied one, badmail, and start_relay's probe of each listener.
    main_sessions = N_SENT + 1 + K_BADMAIL + 1
    sub_sessions = AUTH_FAIL + AUTH_OK + 1

    def settled(s):
        return (value(s, "relaywarden_recipients_delivered_total", route="down.test") >= N_SENT
                and value(s, "relaywarden_connections_total", listener="main",
                          result="accepted") >= main_sessions
                and value(s, "relaywarden_connections_total", listener="sub",
                          result="accepted") >= sub_sessions
                and value(s, "relaywarden_connections_total", listener="main",
                          result="rejected") >= 1
                and value(s, "relaywarden_queue_recipients", state="queued") == 0)

    s = wait_scrape(site.data_dir, settled)
    assert value(s, "relaywarden_messages_received_total", listener="main") == N_SENT + K_BADMAIL
    assert value(s, "relaywarden_messages_quarantined_total", listener="main") == K_BADMAIL
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="rcpt",
                 code="550") == M_DENIED
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="connect",
                 code="554") == 1
    assert value(s, "relaywarden_recipients_delivered_total", route="down.test") == N_SENT
    assert value(s, "relaywarden_recipients_deferred_total", route="down.test") == 0
    assert value(s, "relaywarden_recipients_bounced_total", route="down.test") == 0
    assert value(s, "relaywarden_connections_total", listener="main",
                 result="accepted") == main_sessions
    assert value(s, "relaywarden_connections_total", listener="main", result="rejected") == 1
    assert value(s, "relaywarden_connections_total", listener="sub",
                 result="accepted") == sub_sessions
    assert value(s, "relaywarden_connections_open", listener="main") == 0
    assert value(s, "relaywarden_connections_open", listener="sub") == 0
    assert value(s, "relaywarden_auth_total", listener="sub", result="fail") == AUTH_FAIL
    assert value(s, "relaywarden_auth_total", listener="sub", result="ok") == AUTH_OK
    assert value(s, "relaywarden_tls_inbound_connections_total", listener="sub",
                 version="TLSv1.3") == AUTH_FAIL + AUTH_OK
    assert value(s, "relaywarden_tls_outbound_recipients_total", route="down.test",
                 version="none") == N_SENT
    h = "relaywarden_delivery_attempt_duration_seconds"
    assert value(s, h + "_count", outcome="delivered") == N_SENT
    assert 0 < value(s, h + "_sum", outcome="delivered") < 30 * N_SENT
    assert value(s, h + "_bucket", outcome="delivered", le="+Inf") == N_SENT
    # Scrape-time gauges: the queue keeps only the badmail recipients.
    assert value(s, "relaywarden_queue_recipients", state="badmail") == K_BADMAIL
    assert value(s, "relaywarden_queue_recipients", state="queued") == 0
    assert value(s, "relaywarden_queue_oldest_message_age_seconds") == 0
    assert value(s, "relaywarden_disk_free_bytes") > 0
    # The live gauges of every process, as the status page reads them.
    snap = metrics.snapshot(site.data_dir)
    assert snap["listeners"] == {"main": 0, "sub": 0}
    assert snap["delivery"] == {"in_flight": 0, "destinations": []}

    # The same numbers over HTTP from the admin process.
    text, ctype = site.http_metrics()
    assert ctype.startswith("text/plain")
    h_s = scrape_text(text)
    for key in [("relaywarden_messages_received_total", (("listener", "main"),)),
                ("relaywarden_recipients_delivered_total", (("route", "down.test"),)),
                ("relaywarden_commands_rejected_total",
                 (("code", "550"), ("listener", "main"), ("stage", "rcpt"))),
                ("relaywarden_messages_quarantined_total", (("listener", "main"),)),
                ("relaywarden_auth_total", (("listener", "sub"), ("result", "fail")))]:
        assert h_s.get(key) == s.get(key), key

    # The dashboard's per-minute counts: what the admin process's sampler stored, plus
    # what has happened since its last sample (sample_once adds only growth).
    metrics.sample_once(site.data_dir)
    stats = metrics.series(site.data_dir, "hour")
    assert len(stats["minutes"]) == 60
    assert sum(stats["received"]) == N_SENT + K_BADMAIL
    assert sum(stats["delivered"]) == N_SENT
    assert sum(stats["rejected"]) == M_DENIED + 1
    assert sum(stats["quarantined"]) == K_BADMAIL
    assert sum(stats["deferred"]) == sum(stats["bounced"]) == 0


def test_deferrals_and_a_restart_wipes_the_counters(site):
    site.down.behaviour.rcpt["slow@down.test"] = "451 4.2.0 try later"
    site.send("slow@down.test")
    site.send("ok@down.test")
    h = "relaywarden_delivery_attempt_duration_seconds_count"

    def settled(s):
        # The log line (and so the counter) comes just before the queue's own record, and
        # a counter and the histogram are two writes: wait until all agree.
        return (value(s, "relaywarden_recipients_deferred_total", route="down.test") >= 1
                and value(s, "relaywarden_recipients_delivered_total", route="down.test") >= 1
                and value(s, "relaywarden_queue_recipients", state="queued") == 1
                and value(s, h, outcome="deferred") == value(
                    s, "relaywarden_recipients_deferred_total", route="down.test"))

    s = wait_scrape(site.data_dir, settled)
    deferred = value(s, "relaywarden_recipients_deferred_total", route="down.test")
    assert deferred >= 1
    assert value(s, h, outcome="deferred") == deferred
    assert value(s, "relaywarden_queue_recipients", state="queued") == 1
    assert value(s, "relaywarden_queue_oldest_message_age_seconds") > 0
    top = metrics.series(site.data_dir, "day")["top_deferred"]
    assert top and top[0]["destination"] == "down.test" and top[0]["count"] == 1
    assert "451" in top[0]["last_error"]

    site.relay.stop()
    site.relay = start_relay(site.config, site.data_dir, site.ports)
    body, _ = metrics.exposition(site.data_dir)
    s = scrape_text(body.decode())
    assert value(s, "relaywarden_messages_received_total", listener="main") == 0
    assert value(s, "relaywarden_recipients_delivered_total", route="down.test") == 0
