"""The AUTH brute-force throttle: tables of (time, event) -> verdict, with a fake clock."""

from __future__ import annotations

import pytest

from relaywarden.auth.throttle import AuthThrottle, ThrottleSettings, Verdict


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(**kw) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    return AuthThrottle(ThrottleSettings(**kw), clock=clock), clock


# Every case: delays (0, 1, 2, 4, 8), window 300 s, lockout 60 s, and the limits given.
# Each step: (seconds from start, "fail"/"ok"/"check", client, user, expected delay, locked)
CASES = {
    "delays grow and cap": ({"user_limit": 10}, [
        (0, "fail", "c1", "alice", 0, False),
        (0, "fail", "c1", "alice", 1, False),
        (0, "fail", "c1", "alice", 2, False),
        (0, "fail", "c1", "alice", 4, False),
        (0, "fail", "c1", "alice", 8, False),
        (0, "fail", "c1", "alice", 8, False),
    ]),
    "client locked at its limit, then freed after lockout": ({"client_limit": 3}, [
        (0, "fail", "c1", "u1", 0, False),
        (1, "fail", "c1", "u2", 1, False),
        (2, "fail", "c1", "u3", 2, True),            # client_limit=3
        (3, "check", "c1", "u4", 0, True),
        (3, "check", "c2", "u4", 0, False),          # another client is not affected
        (2 + 60, "check", "c1", "u4", 0, False),     # lockout=60 from the 3rd failure
    ]),
    "user locked from many clients": ({}, [
        (0, "fail", "c1", "alice", 0, False),
        (0, "fail", "c2", "alice", 1, False),
        (0, "fail", "c3", "alice", 2, False),
        (0, "fail", "c4", "Alice", 4, True),         # user_limit=4, name case-insensitive
        (1, "check", "c5", "ALICE", 0, True),
        (1, "check", "c5", "bob", 0, False),
    ]),
    "failures outside the window are forgotten": ({}, [
        (0, "fail", "c1", "alice", 0, False),
        (0, "fail", "c1", "alice", 1, False),
        (301, "fail", "c1", "alice", 0, False),      # window=300: starts again
    ]),
    "success resets the user's counter, not the client's": ({"client_limit": 3}, [
        (0, "fail", "c1", "alice", 0, False),
        (0, "fail", "c1", "alice", 1, False),
        (0, "ok", "c1", "alice", 0, False),
        (0, "fail", "c2", "alice", 0, False),        # alice's count was reset
        (0, "fail", "c1", "bob", 2, True),           # c1 still has its failures: 3rd locks
    ]),
    "no user name (AUTH garbage) counts per client only": ({}, [
        (0, "fail", "c1", None, 0, False),
        (0, "fail", "c1", None, 1, False),
        (0, "check", "c1", None, 0, False),
    ]),
}


@pytest.mark.parametrize("limits, steps", CASES.values(), ids=CASES.keys())
def test_throttle_table(limits, steps):
    settings = dict(delays=(0, 1, 2, 4, 8), client_limit=10, user_limit=4, window=300, lockout=60)
    throttle, clock = make(**(settings | limits))
    start = clock.now
    for at, event, client, user, delay, locked in steps:
        clock.now = start + at
        if event == "fail":
            v = throttle.failure(client=client, user=user)
        elif event == "ok":
            throttle.success(client=client, user=user)
            continue
        else:
            v = throttle.check(client=client, user=user)
        assert (v.delay, v.locked) == (delay, locked), (at, event, client, user, v)


def test_client_lock_table():
    # retry_after and the reason, which the table does not show.
    throttle, clock = make(client_limit=3, user_limit=100, window=300, lockout=60)
    for _ in range(2):
        assert not throttle.failure(client="192.0.2.7", user=None).locked
    v = throttle.failure(client="192.0.2.7", user="x")
    assert v.locked and v.retry_after == 60 and "192.0.2.7" in v.reason
    clock.now += 59.5
    assert throttle.check(client="192.0.2.7").locked
    assert throttle.check(client="192.0.2.7").retry_after == pytest.approx(0.5)
    clock.now += 1
    assert throttle.check(client="192.0.2.7") == Verdict()


def test_memory_is_bounded():
    throttle, clock = make(max_entries=100, window=10, lockout=10)
    for i in range(10_000):
        throttle.failure(client=f"10.0.{i // 256}.{i % 256}", user=f"user{i}")
    assert len(throttle.clients.entries) == 100 and len(throttle.users.entries) == 100
    # Everything old expires on the next look once the window and lockouts have passed.
    clock.now += 11
    throttle.check(client="198.51.100.1")
    assert len(throttle) == 0


def test_each_entry_is_small():
    throttle, _ = make(client_limit=5, user_limit=5)
    for _ in range(1000):
        throttle.failure(client="c", user="u")
    assert len(throttle.clients.entries["c"].failures) == 5


@pytest.mark.parametrize("bad", [
    dict(delays=()), dict(delays=(-1,)), dict(client_limit=0), dict(window=0), dict(max_entries=0),
])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        ThrottleSettings(**bad)
