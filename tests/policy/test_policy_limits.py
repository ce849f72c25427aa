"""The limit bookkeeping (policy/limits.py) and the hop counter (policy/hops.py), from tables:
facts in (a clock, a sequence of takes, bytes), verdict out."""

from __future__ import annotations

import pytest

from relaywarden.policy.hops import ReceivedCounter
from relaywarden.policy.limits import ConnectionCounter, FreeSpaceGuard, WindowLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# (limit, window, [(time offset, key, expected take_all result)])
WINDOW_CASES = {
    "unlimited": (0, 60, [(0, "a", True)] * 50),
    "limit reached": (3, 60, [(0, "a", True), (1, "a", True), (2, "a", True), (3, "a", False)]),
    "keys are separate": (1, 60, [(0, "a", True), (0, "b", True), (0, "a", False), (0, "b", False)]),
    "refused takes are not counted": (2, 60, [(0, "a", True), (0, "a", True), (1, "a", False),
                                              (2, "a", False), (120, "a", True), (120, "a", True)]),
    # 3 in the window starting at 0; at 60 + 30 the previous window still weighs half: 1.5.
    "sliding: half of the previous window": (3, 60, [(0, "a", True), (0, "a", True), (0, "a", True),
                                                     (90, "a", True), (90, "a", False)]),
    "sliding: no burst at the boundary": (3, 60, [(59, "a", True), (59, "a", True), (59, "a", True),
                                                  (61, "a", False)]),
    "two windows later everything is forgotten": (1, 10, [(0, "a", True), (5, "a", False),
                                                          (20, "a", True)]),
}


@pytest.mark.parametrize("limit,window,steps", WINDOW_CASES.values(), ids=WINDOW_CASES.keys())
def test_window_limiter(limit, window, steps):
    clock = Clock()
    start = clock.now
    limiter = WindowLimiter(limit=limit, window=window, clock=clock)
    got = []
    for offset, key, _ in steps:
        clock.now = start + offset
        got.append(limiter.take_all([("ip", key)]))
    assert got == [expected for _, _, expected in steps]


def test_window_limiter_ip_and_user_both_count():
    clock = Clock()
    limiter = WindowLimiter(limit=2, window=60, clock=clock)
    assert limiter.take_all([("ip", "10.0.0.1"), ("user", "alice")])
    assert limiter.take_all([("ip", "10.0.0.2"), ("user", "alice")])
    # alice is at her limit from any address; the address itself is not.
    assert not limiter.take_all([("ip", "10.0.0.3"), ("user", "alice")])
    assert limiter.take_all([("ip", "10.0.0.3")])
    assert limiter.used(("ip", "10.0.0.3")) == 1


def test_window_limiter_reconfigure_and_prune():
    clock = Clock()
    limiter = WindowLimiter(limit=1, window=10, clock=clock)
    for i in range(100):
        limiter.take(("ip", str(i)))
    assert len(limiter) == 100
    limiter.configure(limit=5, window=10)          # same window: counts kept
    assert limiter.used(("ip", "1")) == 1 and limiter.limit == 5
    clock.now += 25
    limiter.take(("ip", "new"))
    assert len(limiter) == 1                       # the idle keys were forgotten
    limiter.configure(limit=5, window=30)          # a new window: counts start again
    assert len(limiter) == 0
    with pytest.raises(ValueError):
        WindowLimiter(limit=-1, window=1, clock=clock)


# (max_total, max_per_ip, open connections [(ip, n)], asking ip, refused?)
CONNECTION_CASES = [
    (0, 0, [("a", 5000)], "a", None),
    (3, 0, [("a", 2)], "b", None),
    (3, 0, [("a", 2), ("b", 1)], "c", "listener"),
    (10, 2, [("a", 2)], "a", "from a"),
    (10, 2, [("a", 2)], "b", None),
]


@pytest.mark.parametrize("max_total,max_per_ip,opened,ip,refused", CONNECTION_CASES)
def test_connection_counter(max_total, max_per_ip, opened, ip, refused):
    counter = ConnectionCounter()
    for who, n in opened:
        for _ in range(n):
            counter.opened(who)
    verdict = counter.check(ip, max_total=max_total, max_per_ip=max_per_ip)
    if refused is None:
        assert verdict is None
    else:
        assert refused in verdict


def test_connection_counter_closes():
    counter = ConnectionCounter()
    counter.opened("a")
    counter.opened("a")
    counter.closed("a")
    assert (counter.total, counter.of("a")) == (1, 1)
    counter.closed("a")
    assert (counter.total, counter.of("a")) == (0, 0)


def test_free_space_guard_caches_and_tolerates_errors():
    clock = Clock()
    readings = [500, 50, OSError("gone")]
    calls = []

    def free() -> int:
        calls.append(clock.now)
        value = readings.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    guard = FreeSpaceGuard(min_free=100, free_bytes=free, clock=clock, ttl=1.0)
    assert guard.ok() and guard.ok()
    assert len(calls) == 1                        # cached within the second
    clock.now += 1.0
    assert not guard.ok()                         # 50 < 100
    clock.now += 1.0
    assert guard.ok()                             # cannot tell: do not stop the relay
    guard.min_free = 0
    clock.now += 5
    assert guard.ok() and len(calls) == 3         # disabled: not even read


RECEIVED = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"

# (name, message, expected count)
HOP_CASES = [
    ("none", b"Subject: x\r\n\r\nbody\r\n", 0),
    ("three", RECEIVED * 3 + b"Subject: x\r\n\r\n", 3),
    ("case and space before colon", b"RECEIVED: a\r\nreceived : b\r\nReceived-SPF: pass\r\n\r\n", 2),
    ("folded", b"Received: from a\r\n\tby b\r\n  with c;\r\n d\r\nReceived: x\r\n\r\n", 2),
    ("body not counted", RECEIVED + b"\r\n" + RECEIVED * 5, 1),
    ("no header section", b"hello world\r\n" + RECEIVED * 4, 0),
    ("long field names", b"X-Microsoft-Antispam-Mailbox-Delivery-Long-Name: 1\r\n" + RECEIVED, 1),
    ("X-Received is another field", b"X-Received: a\r\nReceived: b\r\n\r\n", 1),
    # The one-search path (no "received" before the blank line) and its edges.
    ("received in the body only", b"Subject: x\r\nFrom: <a@b>\r\n\r\n" + RECEIVED * 3, 0),
    ("received in a value", b"Subject: received\r\nReceived: a\r\n\r\n" + RECEIVED, 1),
    ("bare LF blank line first", b"Subject: x\n\nReceived: a\r\n\r\n", 0),
    ("empty header section", b"\r\n" + RECEIVED + b"\r\n", 0),
]


@pytest.mark.parametrize("message,expected", [c[1:] for c in HOP_CASES], ids=[c[0] for c in HOP_CASES])
def test_received_counter_any_chunking(message, expected):
    # Whole, byte by byte, and in every two-piece split: a chunk may end anywhere.
    splits = [[message], [message[i:i + 1] for i in range(len(message))]]
    splits += [[message[:i], message[i:]] for i in range(1, len(message))]
    for chunks in splits:
        counter = ReceivedCounter()
        for chunk in chunks:
            counter.feed(chunk)
        assert counter.count == expected, chunks


def test_received_counter_stops_at_the_blank_line():
    counter = ReceivedCounter()
    counter.feed(RECEIVED * 2 + b"\r\n")
    assert counter.done and counter.count == 2
    counter.feed(RECEIVED * 100)
    assert counter.count == 2
