"""The metrics files on a full disk (issue 14 item 1): a new series waits in memory until
there is space again; the process lives. prometheus-client maps its
files, and a store to a mapped page with no block behind it is SIGBUS: the receiving
process died of it in the full-disk run (tests/logs/test_full_disk.py). Needs root (a
2 MB tmpfs); a failed mount fails the test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


METRICS_ON_A_FULL_DISK = """
import errno, os, sys
from pathlib import Path
from relaywarden import metrics
from relaywarden.metrics import _events
from relaywarden.logs.maillog import MailEvent

disk = Path(sys.argv[1])
metrics.setup(disk / "var", role="receiving", fresh=True)
metrics.observe(MailEvent.CONNECT, {"listener": "before"})
with open(disk / "filler", "wb", buffering=0) as f:     # the disk fills
    try:
        while True:
            f.write(b"\\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
# New series (new label values) need new entries in the metrics files, past their first
# pages: on a full disk, not written yet; the process lives.
for i in range(3000):
    metrics.observe(MailEvent.REJECT, {"listener": f"l{i}", "stage": "mail", "code": 452})
    with metrics.in_flight(f"host{i}.example"):
        pass
(disk / "filler").unlink()                             # space again: counted again
metrics.observe(MailEvent.REJECT, {"listener": "after", "stage": "mail", "code": 452})
_events.flush()
files = b"".join(p.read_bytes() for p in (disk / "var" / "metrics").glob("*.db"))
assert b'"after"' in files, "not counted after the disk had space again"
body, _ = metrics.exposition(disk / "var")    # the scrape reads what the full disk left
assert b'relaywarden_commands_rejected_total{code="452",listener="after",stage="mail"} 1.0' in body, body[-3000:]
# What was counted while the disk was full waited in memory: nothing of it is lost.
for i in (0, 2999):
    line = f'relaywarden_commands_rejected_total{{code="452",listener="l{i}",stage="mail"}} 1.0'
    assert line.encode() in body, line
print("alive")
"""


def test_metrics_on_a_full_disk_wait_for_space_and_do_not_kill_the_process(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`mount -t tmpfs -o size=2m tmpfs {mnt}` failed: {done.stderr} (run as root)")
    try:
        run = subprocess.run([sys.executable, "-c", METRICS_ON_A_FULL_DISK, str(mnt)],
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert run.returncode == 0 and run.stdout.strip() == "alive", (
        f"exit {run.returncode}: {run.stderr[-2000:]}")
