"""SIGHUP through the real relay (issue 14 item 4): every changed setting is applied or
listed as needing a restart, on stdout and in the mail log (event=reload), and a changed
delivery.per_destination takes effect in the delivery process: more connections to a slow
next hop at once after the reload. The table itself: tests/config/test_reload_table.py."""

from __future__ import annotations

import re
import signal
import smtplib
import time

from support.relay import free_port, start_relay, write_config
from downstream import Downstream

CONFIG = """
[relay]
hostname = "relay.test"

[log]
keep = 30

[delivery]
per_destination = {per}
connect_timeout = 2
command_timeout = 10
data_timeout = 20
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""

MSG = b"From: app@example.com\r\nTo: x@example.net\r\nSubject: reload\r\n\r\nbody\r\n"


def send(port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        for i in range(count):
            c.mail("app@example.com")
            assert c.rcpt(f"user{i}@example.net")[0] == 250
            assert c.data(MSG)[0] == 250


def reload_lines(relay) -> list[str]:
    relay.flush_logs()
    return [line for line in relay.logs("mail", ".log").splitlines() if "event=reload" in line]


def test_sighup_applies_per_destination_and_lists_what_needs_a_restart(tmp_path):
    main, down_port, noport = free_port(), free_port(), free_port()
    config = write_config(tmp_path, CONFIG.replace("{per}", "1"), main=main, down=down_port,
                          noport=noport)
    down = Downstream(down_port).start()
    down.behaviour.data_delay = 1.0
    relay = start_relay(config, tmp_path / "var", {"main": main})
    try:
        send(main, 3)
        down.wait_for(3)
        assert down.max_open == 1          # per_destination = 1: one at a time

        # One change applied, two that need a restart (the relay goes on listening on
        # the old port, and keeps its log settings).
        new_port = free_port()
        text = config.read_text()
        config.write_text(text.replace("per_destination = 1", "per_destination = 3")
                          .replace("keep = 30", "keep = 5")
                          .replace(f"port = {main}", f"port = {new_port}"))
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not reload_lines(relay):
            assert time.monotonic() < deadline, "no event=reload in the mail log"
        [line] = reload_lines(relay)
        assert "result=ok" in line
        assert "applied=delivery.per_destination" in line, line
        assert "restart=listeners.main.port,log.keep" in line, line

        # The delivery process got its SIGHUP from the receiving one before the SIGUSR1 of
        # the flush that found the reload line, and takes its signals in order: it has
        # reloaded (a flush it confirms now would say the same).
        send(main, 6)      # still on the old port
        down.wait_for(9)
        assert down.max_open == 3, down.max_open   # the new per_destination

        # A file that does not load: refused, and said so in the mail log too.
        config.write_text(text + "\n[delivery.nonsense]\n")
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(reload_lines(relay)) < 2:
            assert time.monotonic() < deadline, "no second event=reload in the mail log"
        assert "result=refused" in reload_lines(relay)[1]
    finally:
        relay.stop()
        down.stop()
    out, err = relay.proc.stdout.read(), relay.proc.stderr.read()
    assert "relaywarden: reload: applied: delivery.per_destination\n" in out, out
    assert "relaywarden: reload: needs a restart: listeners.main.port, log.keep\n" in out, out
    assert "reload refused" in err, err


def test_a_reload_lists_what_needs_a_restart_until_the_restart(tmp_path):
    """A setting that needs a restart is listed at every reload until the relay restarts,
    not only at the first one after the change; with nothing changed, nothing is applied."""
    main, down_port, noport = free_port(), free_port(), free_port()
    config = write_config(tmp_path, CONFIG.replace("{per}", "2"), main=main, down=down_port,
                          noport=noport)
    relay = start_relay(config, tmp_path / "var", {"main": main})
    try:
        config.write_text(config.read_text().replace("keep = 30", "keep = 7"))
        for n in (1, 2):
            relay.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while len(reload_lines(relay)) < n:
                assert time.monotonic() < deadline, f"no event=reload number {n}"
        first, second = reload_lines(relay)
        assert re.search(r"applied=- restart=log.keep$", second), second
        assert "restart=log.keep" in first
    finally:
        relay.stop()
    out = relay.proc.stdout.read()
    assert out.count("relaywarden: reload: needs a restart: log.keep\n") == 2, out


def test_a_reloaded_helo_name_greets_the_next_hop_on_the_next_message(tmp_path):
    """The delivery process keeps how it talks to each next hop between messages (the
    client policy, delivery.engine Engine._policy); a SIGHUP that changes it must not leave
    the next message on the old one, nor on a pooled connection opened under it."""
    main, down_port, noport = free_port(), free_port(), free_port()
    config = write_config(tmp_path, CONFIG.replace("{per}", "1").replace(
        "[delivery]\n", '[delivery]\nhelo_name = "old.relay.test"\n'),
        main=main, down=down_port, noport=noport)
    down = Downstream(down_port).start()
    relay = start_relay(config, tmp_path / "var", {"main": main})
    try:
        send(main, 2)
        assert [m.helo for m in down.wait_for(2)] == ["old.relay.test"] * 2
        config.write_text(config.read_text().replace("old.relay.test", "new.relay.test"))
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not reload_lines(relay):
            assert time.monotonic() < deadline, "no event=reload in the mail log"
        assert "applied=delivery.helo_name" in reload_lines(relay)[0]
        send(main, 2)
        later = down.wait_for(4)[2:]
        assert [m.helo for m in later] == ["new.relay.test"] * 2
        assert {m.connection for m in later}.isdisjoint({m.connection for m in down.messages[:2]})
    finally:
        relay.stop()
        down.stop()
