"""Abuse limits through real clients: connections per listener and per address, message
and recipient windows, the disk guard and the hop count (loop detection)."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from support.configs import HERMETIC
from support.raw import RawClient
from support.relay import free_port, start_relay, write_config

MSG = b"From: app@example.com\r\nTo: user@example.com\r\nSubject: limits\r\n\r\nhello\r\n"

LIMITS_CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com"]
min_free_space = 0
max_hops = 5

[listeners.few]
address = "127.0.0.1"
port = {few}
[listeners.few.limits]
max_connections = 3
max_connections_per_ip = 0
[listeners.few.relay]
networks = ["127.0.0.0/8"]

[listeners.perip]
address = "127.0.0.1"
port = {perip}
[listeners.perip.limits]
max_connections_per_ip = 2
[listeners.perip.relay]
networks = ["127.0.0.0/8"]

[listeners.rate]
address = "127.0.0.1"
port = {rate}
[listeners.rate.limits]
messages_per_window = 2
recipients_per_window = 3
window = 60
[listeners.rate.relay]
networks = ["127.0.0.0/8"]
"""


@pytest.fixture(scope="module")
def limits_relay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    ports = {name: free_port() for name in ("few", "perip", "rate")}
    config = write_config(tmp, LIMITS_CONFIG, **ports)
    relay = start_relay(config, tmp / "var", ports)
    yield relay
    relay.stop()


def greeted(port: int, source: str = "127.0.0.1") -> RawClient:
    """A connection that has read its greeting (or refusal): ``.greeting``."""
    c = RawClient(port, source)
    c.greeting = c.raw_reply()
    return c


def mail_log(relay, needle: str, timeout: float = 5) -> list[str]:
    """The mail log lines holding needle, once there is one (logs are flushed each second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in relay.logs("mail", ".log").splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def greeted_until(port: int, source: str = "127.0.0.1", timeout: float = 5) -> RawClient:
    """A new connection that gets 220 (closing ones are counted down asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        raw = greeted(port, source)
        if raw.greeting.startswith(b"220 "):
            return raw
        raw.close()
        assert time.monotonic() < deadline, raw.greeting
        time.sleep(0.05)


# ------------------------------------------------------------------- connections


def test_max_connections_on_a_listener(limits_relay):
    port = limits_relay.ports["few"]
    held = [greeted_until(port, f"127.0.0.{10 + i}") for i in range(3)]
    try:
        extra = greeted(port, "127.0.0.20")
        assert extra.greeting == b"421 4.7.0 Too many connections, try again later\r\n"
        assert extra.closed()
        extra.close()
        held.pop().close()
        held.append(greeted_until(port, "127.0.0.20"))   # a slot is free again
    finally:
        for raw in held:
            raw.close()
    [line] = mail_log(limits_relay, "rule=listeners.few.limits.max_connections")
    assert "event=reject stage=connect listener=few client=127.0.0.20 code=421" in line
    assert "reason=\"too many connections on the listener (3 open" in line


def test_max_connections_per_ip(limits_relay):
    port = limits_relay.ports["perip"]
    held = [greeted_until(port, "127.0.0.30") for _ in range(2)]
    try:
        extra = greeted(port, "127.0.0.30")
        assert extra.greeting.startswith(b"421 4.7.0 ")
        assert extra.closed()
        extra.close()
        other = greeted(port, "127.0.0.31")             # another address is not affected
        assert other.greeting.startswith(b"220 ")
        other.close()
    finally:
        for raw in held:
            raw.close()
    [line] = mail_log(limits_relay, "rule=listeners.perip.limits.max_connections_per_ip")
    assert "event=reject stage=connect" in line and "client=127.0.0.30" in line
    # smtplib sees the 421 as the refusal it is.
    with pytest.raises(smtplib.SMTPConnectError) as info:
        a, b = greeted_until(port, "127.0.0.32"), greeted_until(port, "127.0.0.32")
        try:
            smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.32", 0))
        finally:
            a.close()
            b.close()
    assert info.value.smtp_code == 421


# ------------------------------------------------------------------- windows


def test_messages_per_window(limits_relay):
    port = limits_relay.ports["rate"]
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.40", 0)) as c:
        c.ehlo("app.test")
        assert c.sendmail("app@example.com", ["user@example.com"], MSG) == {}
        assert c.mail("app@example.com")[0] == 250   # counted at MAIL, even if abandoned
        c.rset()
        assert c.mail("app@example.com") == (451, b"4.7.1 Too many messages, slow down and try again later")
    # Per client address: another one may send.
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.41", 0)) as c:
        c.ehlo("app.test")
        assert c.mail("app@example.com")[0] == 250
    [line] = mail_log(limits_relay, "rule=listeners.rate.limits.messages_per_window")
    assert "event=reject stage=mail listener=rate client=127.0.0.40 code=451" in line
    assert 'reason="more than 2 messages in 60 s from 127.0.0.40"' in line


def test_recipients_per_window(limits_relay):
    port = limits_relay.ports["rate"]
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.50", 0)) as c:
        c.ehlo("app.test")
        c.mail("app@example.com")
        got = [c.rcpt(f"u{i}@example.com")[0] for i in range(5)]
        assert got == [250, 250, 250, 452, 452]
        assert c.rcpt("u9@example.com") == (452, b"4.5.3 Too many recipients")
        code, text = c.data(MSG)                     # the three accepted ones go through
        assert code == 250
        qid = text.split()[-1].decode()
        c.mail("app@example.com")
        assert c.rcpt("late@example.com")[0] == 452
        assert c.noop()[0] == 250                    # 452 is flow control: no error count
    [message] = [m for m in limits_relay.messages() if m["id"] == qid]
    assert [r["address"] for r in message["recipients"]] == [f"u{i}@example.com" for i in range(3)]
    lines = mail_log(limits_relay, "rule=listeners.rate.limits.recipients_per_window")
    assert "event=reject stage=rcpt listener=rate client=127.0.0.50 code=452" in lines[0]
    assert "recipient=u3@example.com" in lines[0]


# ------------------------------------------------------------------- hop count


def received(n: int) -> bytes:
    return b"".join(
        f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 1 Jan 2024 00:00:0{i % 10} +0000\r\n".encode()
        for i in range(n)
    )


def queue_list(relay) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "relaywarden", "queue", "list", "--json", "--config", str(relay.config)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_too_many_received_headers_go_to_badmail(limits_relay):
    port = limits_relay.ports["rate"]
    ids = {}
    for hops, source in ((5, "127.0.0.60"), (6, "127.0.0.61")):
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as c:
            c.ehlo("loop.test")
            c.mail("app@example.com")
            c.rcpt("a@example.com")
            c.rcpt("b@example.net")
            code, text = c.data(received(hops) + MSG)
            assert code == 250                     # accepted: the sender must stop retrying
            ids[hops] = text.split()[-1].decode()
    # Header fields split across DATA chunks: sent in small pieces with pauses.
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.62", 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO loop.test\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    while not f.readline().startswith(b"354"):
        pass
    data = b"X-First: 1\r\n" + received(7) + MSG + b".\r\n"
    for start in range(0, len(data), 13):           # every piece ends mid-line
        raw.sendall(data[start:start + 13])
        time.sleep(0.01)
    reply = f.readline()
    assert reply.startswith(b"250 "), reply
    ids[7] = reply.split()[-1].decode()
    raw.close()

    listed = {m["id"]: m for m in queue_list(limits_relay)}
    assert {r["status"] for r in listed[ids[5]]["recipients"]} == {"queued"}
    for hops in (6, 7):
        for r in listed[ids[hops]]["recipients"]:
            assert r["status"] == "badmail"
            assert r["rule"] == "relay.max_hops"
            assert r["reason"] == f"loop detected (5.4.6): {hops} Received headers"
    [line] = mail_log(limits_relay, f"id={ids[6]} code=554")
    assert "event=reject stage=data" in line and "rule=relay.max_hops" in line


# ------------------------------------------------------------------- disk guard


DISK_CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
min_free_space = {free}

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.0/8"]
"""


def test_disk_guard_refuses_mail_and_sighup_changes_the_threshold(tmp_path):
    (tmp_path / "var").mkdir()
    st = os.statvfs(tmp_path / "var")
    too_much = st.f_bavail * st.f_frsize + 10**12       # more than there is: the guard trips
    port = free_port()
    config = write_config(tmp_path, DISK_CONFIG, main=port, free=too_much)
    relay = start_relay(config, tmp_path / "var", {"main": port})
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("app.test")
            assert c.mail("app@example.com") == (452, b"4.3.1 Insufficient system storage")
        [line] = mail_log(relay, "rule=relay.min_free_space")
        assert "event=reject stage=mail" in line and "code=452" in line and "reason=" in line

        config.write_text(config.read_text().replace(f"min_free_space = {too_much}", "min_free_space = 0"))
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("app.test")
                if c.mail("app@example.com")[0] == 250:
                    assert c.rcpt("user@example.net")[0] == 250
                    assert c.data(MSG)[0] == 250
                    break
            assert time.monotonic() < deadline, "the new threshold did not take effect"
            time.sleep(0.2)
    finally:
        relay.stop()
