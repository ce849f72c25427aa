"""A full disk under the queue is told as one (issue 14 item 1): 452 4.3.1 after the final
dot (RFC 5321 4.3.2; RFC 3463 X.3.1 "mail system full"), where another disk fault is 451
4.3.0; DATA is read to its end, nothing half-stored is kept, and the relay goes on when
there is space again.

The in-process relay of tests/test_disk_faults.py on a FileOps that fails on demand
(tests/faultfs.py), real SMTP clients, a real downstream server. The same through a really
full file system: tests/logs/test_full_disk.py (slow).
"""

from __future__ import annotations

import errno
import os
import sqlite3

from test_disk_faults import (  # noqa: F401 - site and handoff_site are fixtures
    LARGE,
    assert_nothing_kept,
    handoff_site,
    healthy_again,
    send,
    site,
)
from relaywarden.queue import log as qlog


def enospc(what: str) -> OSError:
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected: {what})")


def sqlite_full() -> sqlite3.OperationalError:
    """What COMMIT raises when SQLite cannot grow the WAL (SQLITE_FULL)."""
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL
    exc.sqlite_errorname = "SQLITE_FULL"
    return exc


def assert_full(reply: tuple[int, bytes]) -> None:
    code, text = reply
    assert (code, text[:5]) == (452, b"4.3.1"), reply


def test_a_spool_file_the_full_disk_refuses_is_answered_452_after_data(site):
    relay, files, down = site
    files.fail_write = enospc("spool write")
    assert_full(send(relay.port, "full-spool", LARGE))
    assert_nothing_kept(relay)
    files.fail_write = None
    healthy_again(relay, down, "after-full-spool", LARGE)


def test_a_commit_sqlite_cannot_write_for_want_of_space_is_answered_452(site):
    relay, files, down = site
    files.fail_commit = sqlite_full()
    assert_full(send(relay.port, "full-commit"))
    assert_nothing_kept(relay)
    files.fail_commit = None
    healthy_again(relay, down, "after-full-commit", 0)


def test_a_log_segment_the_full_disk_cannot_hold_is_answered_452(handoff_site):
    """Hand-off: a segment's space is reserved when it is made (posix_fallocate), so a full
    disk shows there, before any entry is written: the message is refused with 452 4.3.1,
    nothing is kept or recoverable, and mail flows again once there is space."""
    relay, files, down = handoff_site
    files.fail_allocate = enospc("log segment fallocate")
    assert_full(send(relay.port, "full-log"))
    assert files.calls["allocate"] >= 1
    assert_nothing_kept(relay)
    assert qlog.scan(qlog.directory(relay.data_dir))[0] == {}
    files.fail_allocate = None
    healthy_again(relay, down, "after-full-log", 0)
