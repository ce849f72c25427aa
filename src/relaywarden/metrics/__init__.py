"""Prometheus metrics of the relay (docs/admin.md, "metrics").

The receiving, the delivery and the admin process each write their own counters and live
gauges to mmap files in <data_dir>/metrics (prometheus-client's multiprocess mode); the
admin process merges them for GET /metrics and adds gauges it computes at scrape time
(queue by state, oldest queued message, free disk).

Counters come from the mail log: ``MailLog(out, observer=metrics.observe)`` hands every
event to :func:`observe`, also when the mail log file is off.

API:

- ``setup(data_dir, *, role, fresh=False)``: at process start (the receiving process with
  fresh=True, which wipes the directory before its children start);
- ``observe(event, fields)``: the mail log's observer;
- ``in_flight(destination)``: (async) context manager around one delivery transaction;
- ``log_lines_lost(log, lines)``: log lines a full disk did not take (RotatingFile.on_lost);
- ``inflow_delayed(listener, seconds)``: a 250 that back-pressure held back (Store.inflow);
- ``exposition(data_dir) -> (bytes, content_type)``: the text for /metrics;
- ``snapshot(data_dir) -> dict``: the live gauges (connections, deliveries in flight);
- ``run_sampler(cfg, stop)``: the admin process's per-minute sampler;
- ``series(data_dir, window) -> dict``: the per-minute counts for the dashboard.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from relaywarden.metrics._collect import EPOCH_FILE, exposition, metrics_dir, snapshot
from relaywarden.metrics._events import in_flight, inflow_delayed, log_lines_lost, observe
from relaywarden.metrics._series import run_sampler, sample_once, series

__all__ = ["setup", "observe", "in_flight", "inflow_delayed", "log_lines_lost", "exposition",
           "snapshot", "run_sampler", "series", "sample_once", "metrics_dir"]

ROLES = ("receiving", "delivery", "admin")


def setup(data_dir: Path | str, *, role: str, fresh: bool = False) -> Path:
    """Put this process's metrics in <data_dir>/metrics (sets PROMETHEUS_MULTIPROC_DIR).

    ``fresh``: remove what earlier runs left there first and start a new epoch (the
    receiving process, before it starts the delivery and admin processes). Returns the
    directory."""
    from relaywarden.metrics import _events
    path = metrics_dir(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    if fresh:
        for entry in path.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
    epoch = path / EPOCH_FILE
    if fresh or not epoch.exists():
        tmp = path / f".{EPOCH_FILE}.{os.getpid()}"
        tmp.write_text(uuid.uuid4().hex + "\n")
        os.replace(tmp, epoch)
    _events.start(path, role)
    return path
