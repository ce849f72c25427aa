"""An SMTP client as the receiving tests use it: smtplib against a relay on loopback, the
message they send, the queue ID in a 250 reply."""

from __future__ import annotations

import re
import smtplib

__all__ = ["MSG", "queued_id", "smtp"]

MSG = (
    "From: app@example.com\r\nTo: user@example.com\r\nSubject: hello\r\n\r\n"
    "line one\r\n.starts with a dot\r\n..two dots\r\nlast line\r\n"
)


def smtp(relay, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", relay.port, source_address=(source, 0), timeout=10)


def queued_id(reply_text: bytes) -> str:
    m = re.search(rb"queued as (\S+)", reply_text)
    assert m, reply_text
    return m.group(1).decode()
