"""The `relaywarden` command as an admin uses it."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.configs import BASIC
from support.relay import free_port, start_relay, write_config

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaywarden", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_config_check_accepts_the_shipped_example():
    out = cli("config", "check", str(ROOT / "examples" / "relay.example.toml"))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_config_check_accepts_the_exchange_inbound_example():
    """README "An internet-facing relay in front of Exchange": validation, DNS lists,
    rspamd and ClamAV, as shipped."""
    out = cli("config", "check", str(ROOT / "examples" / "exchange-inbound.example.toml"))
    assert out.returncode == 0, out.stderr
    assert "exchange-inbound.example.toml: ok; listeners: inbound (0.0.0.0:25)" in out.stdout


def test_config_check_names_file_and_key_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listeners.main]\naddress = "127.0.0.1"\nport = 70000\nprot = 1\n')
    out = cli("config", "check", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert any(l.startswith(f"{bad}: listeners.main.port: ") for l in lines), lines
    assert any(l.startswith(f"{bad}: listeners.main.prot: ") for l in lines), lines


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay\n")
    out = cli("serve", "--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.startswith(f"{bad}: ") and "Traceback" not in out.stderr


def test_policy_explain_shows_decision_and_rule(tmp_path):
    config = write_config(tmp_path, BASIC, main=2525)
    cases = [
        (["--client", "127.0.0.3", "--from", "scan@example.com", "--to", "me@gmail.test"],
         "badmail", "groups.scanners.recipient_domains"),
        (["--client", "127.0.0.2", "--from", "x@internet.test", "--to", "v@gmail.test"],
         "reject", "550"),
        (["--client", "127.0.0.2", "--from", "x@internet.test", "--to", "u@example.com"],
         "accept", "hosted"),
        (["--client", "127.0.0.66", "--from", "x@internet.test", "--to", "u@example.com"],
         "reject", "554"),
    ]
    for args, verdict, detail in cases:
        out = cli("policy", "explain", "--config", str(config), "--listener", "main", *args)
        assert out.returncode == 0, out.stderr
        # The deciding line is the last one that was reached.
        lines = [l for l in out.stdout.strip().splitlines() if not l.endswith("not reached")]
        last = lines[-1].lower()
        assert verdict in last and detail.lower() in last, out.stdout


def test_policy_explain_rejects_bad_arguments_clearly(tmp_path):
    config = write_config(tmp_path, BASIC, main=2525)
    out = cli("policy", "explain", "--config", str(config), "--listener", "nope",
              "--client", "1.2.3.4", "--from", "a@b.c", "--to", "d@e.f")
    assert out.returncode == 2 and "no listener 'nope'" in out.stderr
    out = cli("policy", "explain", "--config", str(config), "--listener", "main",
              "--client", "not-an-ip", "--from", "a@b.c", "--to", "d@e.f")
    assert out.returncode == 2 and "--client" in out.stderr


def test_queue_list_and_show(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as c:
        c.sendmail("a@example.com", ["b@example.com"], b"Subject: q\r\n\r\nqueued body\r\n")
    out = cli("queue", "list", "--config", str(relay.config), "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    out = cli("queue", "show", row["id"], "--config", str(relay.config), "--body")
    assert out.returncode == 0
    assert "b@example.com [queued]" in out.stdout and "queued body" in out.stdout
    out = cli("queue", "list", "--config", str(relay.config))
    assert row["id"] in out.stdout and "a@example.com -> b@example.com [queued]" in out.stdout


def test_default_config_listens_on_2525_relays_for_localhost_only_data_in_cwd(tmp_path):
    """The README's first command: `relaywarden serve` with the embedded default config."""
    proc = subprocess.Popen([sys.executable, "-m", "relaywarden", "serve"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from support.relay import RelayProcess, wait_port
    relay = RelayProcess(proc=proc, config=Path("-"), data_dir=tmp_path / "var",
                         ports={"default": 2525})
    try:
        wait_port("127.0.0.1", 2525, proc)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as c:
            # An address literal: delivery goes to [127.0.0.1]:25 (nothing listens there, so
            # it is deferred) without any DNS lookup: the test stays on loopback.
            assert c.sendmail("app@localhost.test", ["someone@[127.0.0.1]"], b"x\r\n") == {}
        assert (tmp_path / "var" / "queue.sqlite3").exists()
        assert len(relay.messages()) == 1
    finally:
        assert relay.stop() == 0
    # Anyone but localhost is refused (no network here reaches the relay from elsewhere, so
    # the policy is asked directly).
    out = cli("policy", "explain", "--listener", "default", "--client", "10.1.2.3",
              "--from", "a@b.test", "--to", "someone@example.net")
    assert out.returncode == 0 and "550" in out.stdout.strip().splitlines()[-1]


def test_config_check_takes_the_file_as_every_command_does(tmp_path):
    good = tmp_path / "relay.toml"
    good.write_text('[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n')
    for args in (("config", "check", str(good)), ("config", "check", "--config", str(good))):
        out = cli(*args)
        assert out.returncode == 0 and f"{good}: ok" in out.stdout, (args, out.stderr)
    out = cli("config", "check", str(good), "--config", str(tmp_path / "other.toml"))
    assert out.returncode == 2 and "once" in out.stderr


def test_relaywarden_config_names_the_config_of_every_command(tmp_path, relay):
    """The queue commands find a running relay's queue through RELAYWARDEN_CONFIG, with
    no --config, from another directory (they fell back to ./var of the embedded config)."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.sendmail("", ["b@example.com"], b"Subject: null sender\r\n\r\nx\r\n")
    env = dict(__import__("os").environ, RELAYWARDEN_CONFIG=str(relay.config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args):
        return subprocess.run([sys.executable, "-m", "relaywarden", *args], capture_output=True,
                              text=True, timeout=60, cwd=elsewhere, env=env)
    listed = json.loads(run("queue", "list", "--json").stdout)
    assert len(listed) == 1
    qid = listed[0]["id"]
    # Held after its first attempt (to a closed port) is over: an attempt under way writes
    # its outcome over a hold.
    deadline = time.monotonic() + 15
    while json.loads(run("queue", "show", qid, "--json").stdout)["recipients"][0]["attempts"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    held = run("queue", "hold", qid)
    assert held.returncode == 0, held.stderr
    assert [m["id"] for m in json.loads(run("queue", "list", "--status", "held", "--json").stdout)] == [qid]
    shown = run("queue", "show", qid).stdout
    # Dates as `queue list` prints them, and the null sender as <>.
    assert re.search(r"received_at:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown), shown
    assert re.search(r"sender:\s+<>", shown), shown
    assert run("config", "check").stdout.startswith(f"{relay.config}: ok")


def test_every_queue_command_has_help():
    for name in ("list", "show", "flush", "retry", "hold", "release", "delete"):
        out = cli("queue", name, "--help")
        assert out.returncode == 0
        summary = out.stdout.split("\n\n")[1].strip()
        assert summary and not summary.startswith("Options"), (name, out.stdout)
    assert "one process" not in cli("serve", "--help").stdout
