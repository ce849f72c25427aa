"""A message answered 250 survives kill -9 of the relay."""

from __future__ import annotations

import re
import signal
import smtplib
import threading
import time

from conftest import start_relay


def test_every_acknowledged_message_survives_kill_9(relay):
    acknowledged: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def sender(n: int) -> None:
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as c:
                    c.ehlo("load")
                    for i in range(1000):
                        c.mail("a@example.com")
                        c.rcpt("b@example.com")
                        body = f"Subject: {n}-{i}\r\n\r\nbody {n}-{i}\r\n".encode()
                        code, text = c.data(body)
                        if code == 250:
                            qid = re.search(rb"queued as (\S+)", text).group(1).decode()
                            acknowledged.append((qid, body))
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    relay.proc.send_signal(signal.SIGKILL)   # mid-stream: sessions are in every state
    relay.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acknowledged) >= 200

    again = start_relay(relay.config, relay.data_dir, relay.ports)
    try:
        stored = {m["id"] for m in again.messages()}
        missing = [qid for qid, _ in acknowledged if qid not in stored]
        assert missing == []
        for qid, body in acknowledged:
            assert again.body(qid).endswith(b"\r\n" + body)
    finally:
        again.stop()
