"""The mail log shared by the receiving and the delivering process, with size rotation:
through the real relay (two processes) and a real downstream server."""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from support.relay import free_port, start_relay, write_config
from downstream import Downstream

CONFIG = """
[relay]
hostname = "relay.test"

[log]
rotate = "size"
max_size = 4096
keep = 1000

[delivery]
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
networks = ["127.0.0.0/8"]
"""


@pytest.mark.slow   # a soak of both processes' writes; logs/test_logs.py covers size rotation
def test_size_rotation_of_the_shared_mail_log_loses_and_repeats_nothing(tmp_path):
    ports = {"main": free_port()}
    down_port = free_port()
    config = write_config(tmp_path, CONFIG, main=ports["main"], down=down_port,
                          noport=free_port())
    down = Downstream(down_port).start()
    relay = start_relay(config, tmp_path / "var", ports)
    try:
        for n in range(80):
            with smtplib.SMTP("127.0.0.1", ports["main"], timeout=30) as c:
                assert c.sendmail("app@example.com", [f"user{n}@example.net"],
                                  b"Subject: log\r\n\r\nhello\r\n") == {}
            # Both processes write while the log rotates: the receiving one (connect,
            # queued, disconnect) and the delivering one (delivered).
            if n % 20 == 19:
                time.sleep(1.1)
        down.wait_for(80)
        deadline = time.monotonic() + 20
        while True:
            relay.flush_logs()
            files = sorted((tmp_path / "var" / "log").glob("mail.log*"))
            text = "".join(p.read_text() for p in files)
            if text.count("event=delivered") >= 80 or time.monotonic() > deadline:
                break
    finally:
        relay.stop()
        down.stop()
    queued = re.findall(r"event=queued id=(\S+)", text)
    delivered = re.findall(r"event=delivered id=(\S+)", text)
    assert len(queued) == 80 and len(set(queued)) == 80
    assert sorted(delivered) == sorted(queued)           # every line once, none lost
    # 80 sessions and start_relay's probe that waited for the greeting.
    assert text.count("event=connect") == text.count("event=disconnect") == 81
    # The log did rotate, and each shift happened to a full file (two processes never
    # both shifted the same file: no rotated file below max_size).
    rotated = [p for p in files if p.name != "mail.log"]
    assert len(rotated) >= 3
    assert all(p.stat().st_size >= 4096 for p in rotated), [p.stat().st_size for p in rotated]
    assert {p.name for p in rotated} == {f"mail.log.{n}" for n in range(1, len(rotated) + 1)}
