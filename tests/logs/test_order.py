"""The mail log of the two processes sorts into the order of events (issue 14 item 7).

The receiving and the delivering process both write mailYYMMDD.log, each through a buffer
flushed about once a second, so the file's order is not the order of events. Each line's
stamp is (microseconds, UTC, fixed width): sorted as the README says, every message's story
reads connect, queued, attempt, delivered, disconnect, across the two processes.

Through the real relay (separate delivery process), a real downstream server, and each
message from its own client address (127.0.x.y), so that its connect and disconnect lines
are known too.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import threading
from collections import defaultdict

from support.relay import free_port, start_relay, write_config
from downstream import Downstream

CONFIG = """
[relay]
hostname = "relay.test"

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

MESSAGES = 300
CLIENTS = 6
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LINE = re.compile(r"(?P<stamp>\S+) event=(?P<event>\S+)(?P<rest>.*)")
# The life of a message relayed at the first try, in order; its session's disconnect
# comes after queued, before or after the delivery.
STORY = ["connect", "queued", "attempt", "delivered"]


def in_order(events: list[str]) -> bool:
    rest = [e for e in events if e != "disconnect"]
    return (rest == STORY and events.count("disconnect") == 1
            and events.index("disconnect") > events.index("queued"))


def address(n: int) -> str:
    return f"127.0.{1 + n // 200}.{1 + n % 200}"


def send(port: int, numbers: range, accepted: dict, errors: list) -> None:
    for n in numbers:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30,
                              source_address=(address(n), 0)) as c:
                code, text = c.ehlo("order.test")
                c.mail(f"sender{n}@example.com")
                c.rcpt(f"rcpt{n}@example.net")
                code, text = c.data(f"Subject: {n}\r\n\r\nhello {n}\r\n".encode())
                assert code == 250, (code, text)
                accepted[n] = re.search(rb"queued as (\S+)", text).group(1).decode()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"{n}: {exc!r}")


def field(rest: str, name: str) -> str | None:
    m = re.search(rf" {name}=(\S+)", rest)
    return m.group(1) if m else None


def test_sorted_mail_log_tells_each_message_in_event_order_across_both_processes(tmp_path):
    ports = {"main": free_port()}
    down_port = free_port()
    config = write_config(tmp_path, CONFIG, main=ports["main"], down=down_port,
                          noport=free_port())
    down = Downstream(down_port).start()
    relay = start_relay(config, tmp_path / "var", ports)
    accepted: dict[int, str] = {}
    errors: list[str] = []
    try:
        threads = [threading.Thread(target=send, args=(ports["main"],
                                                       range(i, MESSAGES, CLIENTS),
                                                       accepted, errors))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        down.wait_for(MESSAGES, timeout=60)
    finally:
        relay.stop()        # both processes write what they hold on the way out
        down.stop()
    assert len(accepted) == MESSAGES

    files = sorted((tmp_path / "var" / "log").glob("mail*.log"))
    raw = b"".join(p.read_bytes() for p in files).decode()
    lines = raw.splitlines()
    # Every stamp: UTC, microseconds, one width (what lets `sort` compare them as text).
    bad = [line for line in lines if not STAMP.fullmatch(line.split(" ", 1)[0])]
    assert bad == [], bad[:5]

    # Sorted as the README says (section "Logs").
    done = subprocess.run(["sort", "-s", "-k1,1"], input=raw, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C"), check=True)
    story: dict[str, list[str]] = defaultdict(list)
    id_of = {address(n): qid for n, qid in accepted.items()}
    for line in done.stdout.splitlines():
        m = LINE.fullmatch(line)
        assert m, line
        event, rest = m["event"], m["rest"]
        qid = field(rest, "id")
        if qid is None and event in ("connect", "disconnect"):
            qid = id_of.get(field(rest, "client"))     # the one message of that client
        if qid is not None:
            story[qid].append(event)
    wrong = {qid: events for qid, events in story.items()
             if qid in accepted.values() and not in_order(events)}
    assert wrong == {}, (f"{len(wrong)} of {MESSAGES} messages out of order after sort, e.g. "
                         f"{list(wrong.items())[:3]}")
    assert set(story) >= set(accepted.values())

    # Within each process, the lines stamped when written (all but queued, which carries
    # the moment its commit began) come in stamp order.
    for events in (("connect", "disconnect"), ("attempt", "delivered")):
        stamps = [m["stamp"] for m in map(LINE.fullmatch, lines) if m["event"] in events]
        assert stamps == sorted(stamps), f"{events}: stamps go back in the file"
