"""Several named listeners in one process, and reloading the config with SIGHUP."""

from __future__ import annotations

import signal
import smtplib
import time

from support.configs import HERMETIC
from support.relay import free_port, start_relay, write_config
from support.raw import RawClient
from support.smtp import MSG

TWO = HERMETIC + """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
banner = "inbound ready"
[listeners.inbound.relay]
networks = []

[listeners.outbound]
address = "127.0.0.1"
port = {outbound}
banner = "outbound ready"
[listeners.outbound.access]
default = "deny"
allow = ["127.0.0.1/32"]
[listeners.outbound.relay]
networks = ["127.0.0.1/32"]
"""


def test_each_listener_applies_its_own_policy(tmp_path):
    ports = {"inbound": free_port(), "outbound": free_port()}
    config = write_config(tmp_path, TWO, **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        # The same client, two doors: inbound accepts only the hosted domain...
        with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as c:
            code, banner = c.ehlo("x")
            assert c.mail("app@example.com")[0] == 250
            assert c.rcpt("user@example.com")[0] == 250
            assert c.rcpt("someone@gmail.test")[0] == 550
            assert c.data(MSG.encode())[0] == 250
        # ...outbound relays anywhere for 127.0.0.1 and refuses other clients outright.
        with smtplib.SMTP("127.0.0.1", ports["outbound"], timeout=10) as c:
            assert c.sendmail("app@example.com", ["someone@gmail.test"], MSG.encode()) == {}
        other = RawClient(type("R", (), {"port": ports["outbound"]}), "127.0.0.2")
        code, text = other.reply()
        assert code == 554
        other.close()
        listeners = sorted(m["listener"] for m in relay.messages())
        assert listeners == ["inbound", "outbound"]
    finally:
        relay.stop()


def test_sighup_reloads_policy_and_a_bad_config_is_refused(tmp_path):
    ports = {"inbound": free_port(), "outbound": free_port()}
    config = write_config(tmp_path, TWO, **ports)
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as c:
            c.ehlo("x")
            c.mail("a@internet.test")
            assert c.rcpt("user@example.org")[0] == 550
        config.write_text(config.read_text().replace(
            'hosted_domains = ["example.com"]', 'hosted_domains = ["example.com", "example.org"]'))
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as c:
                c.ehlo("x")
                c.mail("a@internet.test")
                if c.rcpt("user@example.org")[0] == 250:
                    break
            assert time.monotonic() < deadline, "reload did not take effect"
            time.sleep(0.1)
        # A broken config is refused on reload; the relay keeps the last good one.
        config.write_text(config.read_text() + "\n[relay.oops]\n")
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_log(r"event=reload result=refused")
        with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as c:
            c.ehlo("x")
            c.mail("a@internet.test")
            assert c.rcpt("user@example.org")[0] == 250
        assert relay.proc.poll() is None
    finally:
        relay.stop()
    assert "reload refused" in relay.proc.stderr.read()
