"""Real third-party SMTP clients from Debian: swaks and Postfix's smtp-source."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    # Installed by scripts/test.sh; a missing tool is a broken setup, not a reason to skip.
    assert path, f"{name} is not installed: run the tests with scripts/test.sh"
    return path


def test_swaks_sends_through_the_relay(relay):
    out = subprocess.run(
        [tool("swaks"), "--server", f"127.0.0.1:{relay.port}", "--helo", "swaks.test",
         "--from", "app@example.com", "--to", "user@example.com,other@gmail.test",
         "--header", "Subject: swaks test", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout
    [msg] = relay.messages()
    assert sorted(r["address"] for r in msg["recipients"]) == ["other@gmail.test", "user@example.com"]
    assert b"hello from swaks" in relay.body(msg["id"])


def test_swaks_pipelining_with_a_refused_recipient(relay):
    out = subprocess.run(
        [tool("swaks"), "--server", f"127.0.0.1:{relay.port}", "--pipeline",
         "--local-interface", "127.0.0.2",
         "--from", "x@internet.test", "--to", "user@example.com,victim@gmail.test"],
        capture_output=True, text=True, timeout=30,
    )
    assert "550 5.7.1 Unable to relay" in out.stdout, out.stdout
    assert "queued as" in out.stdout
    [msg] = relay.messages()
    assert [r["address"] for r in msg["recipients"]] == ["user@example.com"]


def test_smtp_source_20_sessions_every_message_is_queued(relay):
    n = 400
    out = subprocess.run(
        [tool("smtp-source"), "-s", "20", "-m", str(n), "-l", "1024", "-f", "load@example.com",
         "-t", "sink@example.com", f"127.0.0.1:{relay.port}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    r = relay.reader()
    assert r.count() == n
    r.close()


def test_smtp_source_reusing_connections_with_many_recipients(relay):
    # -d: several messages per connection; -r 20: twenty recipients per message.
    out = subprocess.run(
        [tool("smtp-source"), "-s", "5", "-m", "200", "-d", "-r", "20", "-l", "512",
         "-f", "load@example.com", "-t", "sink@example.com", f"127.0.0.1:{relay.port}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    messages = relay.messages()
    assert len(messages) == 200
    assert all(len(m["recipients"]) == 20 for m in messages)
