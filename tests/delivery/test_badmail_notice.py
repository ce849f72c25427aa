"""The admin's badmail notice (pure: the message it builds)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from relaywarden.config.build import build_badmail_settings
from relaywarden.config.load import load_config
from relaywarden.delivery.badmail import summary_message

ENTRY = {"id": "Q1", "sender": "scan@example.com", "address": "me@gmail.test",
         "rule": "groups.scanners.recipient_domains", "reason": "gmail.test is not allowed"}


def notice(tmp_path: Path, relay: str) -> email.message.EmailMessage:
    path = tmp_path / "relay.toml"
    path.write_text(f'[relay]\nhostname = "relay.test"\n{relay}\n[badmail]\nnotify = '
                    '"admin@example.com"\n[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n')
    data = summary_message(build_badmail_settings(load_config(path)), [ENTRY], 0.0)
    return email.message_from_bytes(data, policy=email.policy.default)


def test_the_notice_comes_from_relay_postmaster(tmp_path):
    msg = notice(tmp_path, 'postmaster = "mail-admin@example.com"')
    assert msg["From"].addresses[0].addr_spec == "mail-admin@example.com"
    assert msg["To"].addresses[0].addr_spec == "admin@example.com"
    # The commands it prints work as printed: they name the relay's config file.
    assert f"relaywarden badmail release ID --config {tmp_path / 'relay.toml'}" in msg.get_content()


def test_without_relay_postmaster_it_is_postmaster_at_the_hostname(tmp_path):
    msg = notice(tmp_path, "")
    assert msg["From"].addresses[0].addr_spec == "postmaster@relay.test"
