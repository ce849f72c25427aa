"""The protocol logs through the real interface: a relay process, clients that send known
bytes (a raw socket), a real downstream server; then the files an admin would read.

Inbound (exYYMMDD.log/.jsonl): what was received (ESMTP parameters of accepted commands
too), its exact octets, how long the answer took (AUTH's throttle delay, the durable commit),
a session ID on every line and the queue ID on the lines of the message. Outbound
(outYYMMDD.log/.jsonl): every command the delivering process sent and the next hop's reply,
with the queue ID on every line.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.configs import BASIC, HERMETIC
from support.raw import RawClient
from support.relay import free_port, start_relay, until, write_config
from downstream import Downstream


def entries(relay, prefix: str) -> list[dict]:
    return [json.loads(line) for line in relay.logs(prefix, ".jsonl").splitlines()]


def w3c_rows(relay, prefix: str) -> list[dict]:
    """The W3C lines as dicts, keyed by the names the file's own #Fields line gives."""
    rows, fields = [], None
    for line in relay.logs(prefix, ".log").splitlines():
        if line.startswith("#Fields: "):
            fields = line[len("#Fields: "):].split(" ")
        elif line and not line.startswith("#"):
            values = line.split(" ")
            assert fields is not None and len(values) == len(fields), line
            rows.append(dict(zip(fields, values)))
    return rows


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


# --- inbound ------------------------------------------------------------------------------

def test_inbound_lines_keep_parameters_exact_octets_session_and_queue_id(relay):
    c = RawClient(relay.port, source="127.0.0.2")     # not a relay client: example.com only
    greeting = c.raw_reply()
    sent, got = {}, {}

    def say(method: str, line: bytes) -> bytes:
        sent[method], got[method] = line, c.say(line)
        return got[method]

    say("EHLO", b"EHLO client.test\r\n")
    mail = b"MAIL FROM:<app@example.com> SIZE=30 RET=HDRS ENVID=run+2B42\r\n"
    assert say("MAIL", mail).startswith(b"250 ")
    rcpt = b"RCPT TO:<user@example.com> NOTIFY=NEVER ORCPT=rfc822;user@example.com\r\n"
    assert say("RCPT", rcpt).startswith(b"250 ")
    # Refused by the policy (no relaying for gmail.test): its parameters stay too.
    refused = b"RCPT TO:<x@gmail.test> NOTIFY=SUCCESS,FAILURE\r\n"
    assert c.say(refused).startswith(b"550 ")
    assert say("DATA", b"DATA\r\n").startswith(b"354 ")
    # 55 octets on the wire: dot-stuffed ("..dot" is ".dot"), with the final dot; the
    # content is 51 (the cs-bytes of "." are what came, not what was kept).
    body = b"Subject: octets\r\n\r\n..dot at the start\r\nsecond line\r\n.\r\n"
    assert len(body) == 55
    assert say(".", body).startswith(b"250 ")
    queue_id = re.search(rb"queued as (\S+)", got["."]).group(1).decode()
    say("QUIT", b"QUIT\r\n")
    c.close()
    relay.flush_logs()

    for rows in (entries(relay, "ex"), w3c_rows(relay, "ex")):
        # The fixture's readiness probe was a session of its own before ours.
        ours = [r for r in rows if r["x-session-id"] == rows[-1]["x-session-id"]]
        assert [r["cs-method"] for r in ours] == ["CONNECT", "EHLO", "MAIL", "RCPT", "RCPT",
                                                  "DATA", ".", "QUIT"]
        assert rows[0]["x-session-id"] != ours[0]["x-session-id"]
        yes, no = [r for r in ours if r["cs-method"] == "RCPT"]
        by = {r["cs-method"]: r for r in ours if r is not no}
        w3c = isinstance(rows[0]["sc-status"], str)
        show = (lambda s: s.replace(" ", "+")) if w3c else (lambda s: s)   # IIS: space is +
        num = str if w3c else int
        assert by["MAIL"]["cs-uri-query"] == show(
            "FROM:<app@example.com> SIZE=30 RET=HDRS ENVID=run+2B42")
        assert yes["cs-uri-query"] == show(
            "TO:<user@example.com> NOTIFY=NEVER ORCPT=rfc822;user@example.com")
        assert no["cs-uri-query"] == show("TO:<x@gmail.test> NOTIFY=SUCCESS,FAILURE")
        assert no["cs-bytes"] == num(len(refused)) and no["sc-status"] == num(550)
        for method, line in sent.items():
            # cs-bytes: the octets received; sc-bytes: the reply's octets as sent.
            assert by[method]["cs-bytes"] == num(len(line)), method
            assert by[method]["sc-bytes"] == num(len(got[method])), method
        assert by["CONNECT"]["sc-bytes"] == num(len(greeting))
        assert by["."]["cs-bytes"] == num(55) and by["."]["sc-status"] == num(250)
        # The lines of the message (from DATA on, when it has its ID) carry its queue ID.
        none = "-" if w3c else None
        assert [r["x-queue-id"] for r in ours] == [none] * 5 + [queue_id] * 2 + [none]


AUTH_CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[auth]
users_file = "users"

[auth.throttle]
delays = [1.5]
client_limit = 50
user_limit = 50

[listeners.local]
address = "127.0.0.1"
port = {local}
[listeners.local.auth]
enabled = true
plaintext_networks = ["127.0.0.1/32"]
"""


def test_auth_line_times_the_throttle_delay_and_masks_credentials(tmp_path):
    out = subprocess.run([sys.executable, "-m", "relaywarden", "user", "add", "alice", "--file",
                          str(tmp_path / "users"), "--password-stdin"], input="right pw\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ports = {"local": free_port()}
    relay = start_relay(write_config(tmp_path, AUTH_CONFIG, **ports), tmp_path / "var", ports)
    try:
        c = RawClient(ports["local"])
        c.raw_reply()
        c.say(b"EHLO client.test\r\n")
        wrong = base64.b64encode(b"\0alice\0wrong pw")
        plain = b"AUTH PLAIN " + wrong + b"\r\n"
        started = time.monotonic()
        answer = c.say(plain)
        waited = time.monotonic() - started
        assert answer.startswith(b"535 ") and waited >= 1.5
        # LOGIN: three client lines, two 334 challenges, one log line for it all.
        login = [b"AUTH LOGIN\r\n", base64.b64encode(b"alice") + b"\r\n",
                 base64.b64encode(b"right pw") + b"\r\n"]
        replies = [c.say(line) for line in login]
        assert [r[:4] for r in replies] == [b"334 ", b"334 ", b"235 "]
        c.say(b"QUIT\r\n")
        c.close()
        relay.flush_logs()
        for rows in (entries(relay, "ex"), w3c_rows(relay, "ex")):
            num = str if isinstance(rows[0]["sc-status"], str) else int
            auth = [r for r in rows if r["cs-method"] == "AUTH"]
            assert [r["sc-status"] for r in auth] == [num(535), num(235)]
            # The answer came after the throttle's delay: time-taken says so.
            assert int(auth[0]["time-taken"]) >= 1500
            assert int(auth[0]["time-taken"]) <= waited * 1000 + 50
            assert auth[0]["cs-bytes"] == num(len(plain))
            assert auth[1]["cs-bytes"] == num(sum(map(len, login)))
            assert auth[1]["sc-bytes"] == num(sum(map(len, replies)))
            assert [r["cs-uri-query"] for r in auth] == ["PLAIN", "LOGIN"]
            assert auth[1]["cs-username"] == "alice"
        logs = "".join(p.read_text() for p in (relay.data_dir / "log").iterdir())
        for secret in (wrong, base64.b64encode(b"right pw"), b"wrong pw", b"right pw"):
            assert secret.decode() not in logs
    finally:
        relay.stop()


# --- outbound -----------------------------------------------------------------------------

OUT_CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[delivery]
retry_schedule = [60]
connect_timeout = 2
command_timeout = 5
data_timeout = 10
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."example.com"]
next_hops = ["[127.0.0.1]:{dead}", "[127.0.0.1]:{down}"]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


@pytest.fixture
def delivering(tmp_path):
    ports = {"main": free_port()}
    down_port, dead = free_port(), free_port()
    config = write_config(tmp_path, OUT_CONFIG, main=ports["main"], down=down_port, dead=dead,
                          noport=free_port())
    down = Downstream(down_port).start()
    relay = start_relay(config, tmp_path / "var", ports)
    yield relay, down, down_port, dead
    relay.stop()
    down.stop()


def send(relay, rcpts: list[bytes], body: bytes) -> str:
    c = RawClient(relay.port)
    c.raw_reply()
    c.say(b"EHLO client.test\r\n")
    assert c.say(b"MAIL FROM:<app@example.com> RET=HDRS ENVID=e1\r\n").startswith(b"250")
    for rcpt in rcpts:
        assert c.say(rcpt).startswith(b"250")
    assert c.say(b"DATA\r\n").startswith(b"354")
    answer = c.say(body)
    c.say(b"QUIT\r\n")
    c.close()
    return re.search(rb"queued as (\S+)", answer).group(1).decode()


def test_outbound_log_has_every_command_and_reply_with_the_queue_id(delivering):
    relay, down, down_port, dead = delivering
    down.behaviour.data_delay = 1.0           # the final dot's answer comes a second late
    body = b"Subject: out\r\n\r\n.dot line\r\nend\r\n.\r\n"
    qid = send(relay, [b"RCPT TO:<user@example.com> NOTIFY=FAILURE\r\n"], body)
    [received] = down.wait_for(1)
    # The connection waits in the pool for the next message; a stop closes it (QUIT) and
    # writes out the logs. First the final dot's reply is read (the outcome written: the
    # message leaves the queue).
    until(relay.messages, lambda rows: rows == [], what="the outcome was never written")
    assert relay.stop() == 0
    for rows in (entries(relay, "out"), w3c_rows(relay, "out")):
        w3c = isinstance(rows[0]["sc-status"], str)
        num = str if w3c else int
        show = (lambda s: s.replace(" ", "+")) if w3c else (lambda s: s)
        # The first next hop does not listen: the attempt is a line (status 0, why).
        first = rows[0]
        assert first["cs-method"] == "CONNECT" and first["sc-status"] == num(0)
        assert first["s-port"] == num(dead) and show("Connection refused") in first["cs-uri-query"]
        ours = [r for r in rows if r["s-port"] == num(down_port)]
        assert [r["cs-method"] for r in ours] == ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA",
                                                  ".", "QUIT"]
        assert [r["sc-status"] for r in ours] == [num(c) for c in (220, 250, 250, 250, 354,
                                                                   250, 221)]
        assert {r["x-queue-id"] for r in rows} == {qid}
        assert len({r["x-session-id"] for r in ours}) == 1
        assert ours[0]["x-session-id"] != first["x-session-id"]
        for r in ours:      # s-sitename: the route (as the mail log names it)
            assert (r["c-ip"], r["s-ip"], r["s-sitename"]) == ("127.0.0.1", "127.0.0.1",
                                                                'routes."example.com"')
        by = {r["cs-method"]: r for r in ours}
        assert by["EHLO"]["cs-uri-query"] == "relay.test"
        # What was sent, parameters included: SIZE, which the downstream offers (it offers
        # no DSN: RET, ENVID and NOTIFY are not passed on, RFC 3461 4).
        mail = f"FROM:<app@example.com> SIZE={len(received.content)}"
        assert by["MAIL"]["cs-uri-query"] == show(mail)
        assert by["MAIL"]["cs-bytes"] == num(len(f"MAIL {mail}\r\n"))
        assert by["RCPT"]["cs-uri-query"] == "TO:<user@example.com>"
        assert by["RCPT"]["cs-bytes"] == num(len("RCPT TO:<user@example.com>\r\n"))
        assert by["DATA"]["cs-bytes"] == num(6) and by["QUIT"]["cs-bytes"] == num(6)
        # The message as sent: its lines stuffed again, and the final dot.
        stuffed = received.content.count(b"\r\n.") + received.content.startswith(b".")
        assert by["."]["cs-bytes"] == num(len(received.content) + stuffed + 3)
        assert by["MAIL"]["sc-bytes"] == num(len(b"250 2.1.0 OK\r\n"))
        assert by["."]["sc-bytes"] == num(len(b"250 2.0.0 accepted\r\n"))
        assert int(by["."]["time-taken"]) >= 1000


def test_outbound_log_shows_a_deferred_delivery(delivering):
    relay, down, down_port, dead = delivering
    down.behaviour.rcpt["busy@other.test"] = "450 4.2.0 mailbox busy"
    qid = send(relay, [b"RCPT TO:<busy@other.test>\r\n"], b"Subject: later\r\n\r\nx\r\n.\r\n")
    relay.flush_logs()

    def deferred():
        return [r for r in entries(relay, "out") if r["cs-method"] == "RCPT"]

    [rcpt] = wait_for(deferred, "the RCPT line")
    assert rcpt["sc-status"] == 450 and rcpt["x-queue-id"] == qid
    assert rcpt["sc-bytes"] == len(b"450 4.2.0 mailbox busy\r\n")
    wait_for(lambda: "event=deferred" in relay.logs("mail", ".log"), "the deferral")
    relay.flush_logs()
    rows = [r for r in entries(relay, "out") if r["x-session-id"] == rcpt["x-session-id"]]
    methods = [r["cs-method"] for r in rows]
    assert methods[:3] == ["CONNECT", "EHLO", "MAIL"] and "RSET" in methods
    assert all(r["x-queue-id"] == qid for r in rows)
