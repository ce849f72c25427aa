"""The history through the real interface: a relay process with its admin process, a real
downstream server, real SMTP clients, and `relaywarden track` as an admin runs it."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time

import pytest

from support.relay import free_port, start_relay, write_config
from downstream import Behaviour, Downstream

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]

[delivery]
retry_schedule = [600]
connect_timeout = 2
command_timeout = 3
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = 1
timeout = 1

[routes."example.net"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."*"]
next_hops = ["[127.0.0.1]:{dead}"]

[listeners.main]
address = "127.0.0.1"
port = {main}

[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


def track(config, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "relaywarden", "track", "--config", str(config),
                          "--json", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_track(config, predicate, *args: str, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        try:
            found = track(config, *args)
        except AssertionError:
            found = []      # the history file is not there yet
        if predicate(found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"track {args} never matched; last: {json.dumps(found, indent=1)}")


def test_track_shows_arrival_attempt_reply_and_outcome(tmp_path):
    down = Downstream(free_port()).start()
    # The next hop names its own queue id, as Postfix does.
    down.behaviour = Behaviour(data="250 2.0.0 Ok: queued as 7F3A21BC")
    ports = {"main": free_port()}
    config = write_config(tmp_path, CONFIG, down=down.port, dead=free_port(), **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", ports["main"], timeout=10) as smtp:
            smtp.sendmail("scan@example.com", ["auditor@example.net"],
                          b"Subject: Quarterly scan\r\nMessage-ID: <q4.scan@example.com>\r\n"
                          b"\r\nsee attachment\r\n")
            smtp.sendmail("scan@example.com", ["someone@elsewhere.test"],
                          b"Subject: Will wait\r\n\r\nx\r\n")
        found = wait_track(config, lambda f: f and f[0]["status"] == "delivered",
                           "--to", "auditor@example.net", "--since", "1h")
        [t] = found
        assert t["sender"] == "scan@example.com" and t["subject"] == "Quarterly scan"
        assert t["message_id"] == "q4.scan@example.com" and t["client_ip"] == "127.0.0.1"
        kinds = [(e["kind"], e["data"].get("outcome")) for e in t["events"]]
        assert kinds == [("received", None), ("attempt", "delivered")]
        attempt = t["events"][1]["data"]
        assert attempt["reply"] == "250 2.0.0 Ok: queued as 7F3A21BC"
        assert attempt["remote_id"] == "7F3A21BC"
        assert attempt["remote"] == f"127.0.0.1 [127.0.0.1]:{down.port}"
        # The other one is deferred (its next hop is down) and says why.
        [w] = wait_track(config, lambda f: f and f[0]["status"] == "deferred",
                         "--to", "elsewhere.test")
        assert w["recipients"][0]["status"] == "deferred"
        assert w["recipients"][0]["last_reply"].startswith("4")
        # Filters that do not match find nothing; the text form prints the timeline.
        assert track(config, "--to", "auditor@example.net", "--status", "bounced") == []
        assert track(config, "--message-id", "<q4.scan@example.com>")[0]["queue_id"] == t["queue_id"]
        text = subprocess.run([sys.executable, "-m", "relaywarden", "track", "--config",
                               str(config), "--from", "example.com"],
                              capture_output=True, text=True, timeout=30).stdout
        assert "delivered <auditor@example.net>" in text
        assert "(their id 7F3A21BC)" in text
        bad = subprocess.run([sys.executable, "-m", "relaywarden", "track", "--config",
                              str(config), "--since", "yesterday"],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "--since" in bad.stderr
    finally:
        relay.stop()
        down.stop()


def test_an_admin_action_is_in_the_timeline_with_who_did_it(tmp_path):
    ports = {"main": free_port()}
    config = write_config(tmp_path, CONFIG, down=free_port(), dead=free_port(), **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", ports["main"], timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["x@elsewhere.test"], b"Subject: s\r\n\r\nx\r\n")
        # Held once its first attempt is over (an attempt under way writes its outcome).
        [t] = wait_track(config, lambda f: f and f[0]["status"] == "deferred",
                         "--to", "x@elsewhere.test")
        held = subprocess.run([sys.executable, "-m", "relaywarden", "queue", "hold",
                               t["queue_id"], "--config", str(config)],
                              capture_output=True, text=True, timeout=30)
        assert held.returncode == 0, held.stderr
        [t] = wait_track(config, lambda f: f and f[0]["status"] == "held",
                         "--to", "x@elsewhere.test")
        admin = [e["data"] for e in t["events"] if e["kind"] == "admin"]
        assert admin and admin[-1]["action"] == "hold" and admin[-1]["by"]
    finally:
        relay.stop()


@pytest.mark.slow   # kill -9 (fault)
def test_the_history_catches_up_after_kill_9(tmp_path):
    """The history is an index that may lag: messages the relay answered 250 for just
    before it was killed (with its admin process) are in the history after the restart,
    each once, with their outcome."""
    import signal

    down = Downstream(free_port()).start()
    ports = {"main": free_port()}
    config = write_config(tmp_path, CONFIG, down=down.port, dead=free_port(), **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", ports["main"], timeout=10) as smtp:
            for i in range(40):
                smtp.sendmail("batch@example.com", [f"r{i}@example.net"],
                              f"Subject: n{i}\r\n\r\nx\r\n".encode())
        relay.stop(signal.SIGKILL)          # no time to index or flush anything
        relay = start_relay(config, tmp_path / "var", ports)
        found = wait_track(config, lambda f: len(f) == 40 and
                           all(t["status"] == "delivered" for t in f),
                           "--from", "batch@example.com", "--limit", "100", timeout=30)
        assert sorted(t["subject"] for t in found) == sorted(f"n{i}" for i in range(40))
        for t in found:
            assert [e["kind"] for e in t["events"]].count("received") == 1
        assert len(down.wait_for(40)) >= 40
    finally:
        relay.stop()
        down.stop()


def test_with_the_history_off_the_journal_is_emptied_not_kept(tmp_path):
    import sqlite3

    ports = {"main": free_port()}
    config = write_config(tmp_path, CONFIG + "\n[history]\nenabled = false\n",
                          down=free_port(), dead=free_port(), **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", ports["main"], timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["x@elsewhere.test"], b"Subject: s\r\n\r\nx\r\n")
        db = sqlite3.connect(tmp_path / "var" / "queue.sqlite3")
        try:
            deadline = time.monotonic() + 25
            left = None
            while time.monotonic() < deadline:
                (left,) = db.execute("SELECT COUNT(*) FROM journal").fetchone()
                (queued,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
                if queued == 1 and left == 0:
                    break
                time.sleep(0.5)
            assert (queued, left) == (1, 0)
        finally:
            db.close()
        assert not (tmp_path / "var" / "history.sqlite3").exists()
    finally:
        relay.stop()
