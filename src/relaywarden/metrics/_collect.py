"""Reading the metrics: the counters and live gauges of every process (their mmap files in
<data_dir>/metrics), and the gauges computed at scrape time from the queue and the disk.

Everything here only reads: it runs in the admin process (or a test, or the CLI) and never
makes the receiving or the delivery process wait.
"""

from __future__ import annotations

import glob
import os
import re
import sqlite3
import time
from pathlib import Path

from relaywarden.queue import log as qlog
from relaywarden.queue.store import queue_summary

METRICS_DIR = "metrics"
EPOCH_FILE = "epoch"
#: The states a queue recipient can be in that are always reported (0 when none).
QUEUE_STATES = ("queued", "held", "badmail")

_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def metrics_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / METRICS_DIR


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead(path: Path) -> None:
    """Drop the live gauges of processes that are gone (a killed delivery process must not
    show its in-flight deliveries for ever)."""
    from prometheus_client.multiprocess import mark_process_dead
    seen: set[int] = set()
    for name in os.listdir(path):
        m = _LIVE_FILE.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid in seen:
            continue
        seen.add(pid)
        if pid != os.getpid() and not _alive(pid):
            try:
                mark_process_dead(pid, str(path))
            except OSError:
                pass


def _merged(path: Path, pattern: str = "*.db"):
    from prometheus_client.multiprocess import MultiProcessCollector
    files = []
    for name in glob.glob(os.path.join(str(path), pattern)):
        try:
            # A file still being made (or left so by a crash, a full disk) has not even
            # its header: reading it would fail the whole scrape.
            if os.path.getsize(name) >= 8:
                files.append(name)
        except OSError:
            pass
    if not files:
        return []
    try:
        return list(MultiProcessCollector.merge(files, accumulate=True))
    except FileNotFoundError:      # removed meanwhile (a restart wiping the directory)
        return []


class _ProcessMetrics:
    """The merged files of all processes, without the in-flight gauges of destinations
    that have nothing under way (a relay talks to many hosts over its life)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def collect(self):
        for metric in _merged(self._path):
            if metric.name == "relaywarden_deliveries_in_flight":
                metric.samples = [s for s in metric.samples if s.value]
            yield metric


def queue_state(data_dir: Path, now: float | None = None) -> dict | None:
    """``{"by_state": {state: recipients}, "oldest_age": seconds}`` read from the queue
    database (read-only), or None when there is no queue or it cannot be read now."""
    path = Path(data_dir) / "queue.sqlite3"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return None
    try:
        by_state = dict.fromkeys(QUEUE_STATES, 0)
        counts, oldest = queue_summary(db, qlog.directory(Path(data_dir)))
        by_state.update(counts)
    except sqlite3.Error:
        return None
    finally:
        db.close()
    now = time.time() if now is None else now
    return {"by_state": by_state, "oldest_age": 0.0 if oldest is None else max(0.0, now - oldest)}


def disk_free(data_dir: Path) -> int | None:
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class StateCollector:
    """Gauges computed at scrape time: the queue by state, its oldest message, free disk."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        queue = queue_state(self.data_dir)
        if queue is not None:
            family = GaugeMetricFamily("relaywarden_queue_recipients",
                                       "Recipients in the queue, by state", labels=["state"])
            for state, count in sorted(queue["by_state"].items()):
                family.add_metric([state], count)
            yield family
            yield GaugeMetricFamily(
                "relaywarden_queue_oldest_message_age_seconds",
                "Age of the oldest message with a recipient waiting for delivery (0: none)",
                value=queue["oldest_age"])
        free = disk_free(self.data_dir)
        if free is not None:
            yield GaugeMetricFamily("relaywarden_disk_free_bytes",
                                    "Free bytes for the relay in the data directory",
                                    value=free)


def exposition(data_dir: Path | str) -> tuple[bytes, str]:
    """The text for GET /metrics: all processes' counters and gauges, merged, and the
    scrape-time gauges. Returns (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    data_dir = Path(data_dir)
    registry = CollectorRegistry(auto_describe=False)
    path = metrics_dir(data_dir)
    if path.is_dir():
        reap_dead(path)
        registry.register(_ProcessMetrics(path))
    registry.register(StateCollector(data_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def snapshot(data_dir: Path | str) -> dict:
    """The live gauges: ``{"listeners": {name: connections_now}, "delivery": {"in_flight":
    n, "destinations": [{"destination": d, "in_flight": n}]}}``."""
    listeners: dict[str, int] = {}
    destinations: dict[str, int] = {}
    path = metrics_dir(data_dir)
    if path.is_dir():
        reap_dead(path)
        for metric in _merged(path, "gauge_live*.db"):
            for s in metric.samples:
                if metric.name == "relaywarden_connections_open":
                    name = s.labels.get("listener", "")
                    listeners[name] = listeners.get(name, 0) + int(s.value)
                elif metric.name == "relaywarden_deliveries_in_flight" and s.value:
                    name = s.labels.get("destination", "")
                    destinations[name] = destinations.get(name, 0) + int(s.value)
    items = [{"destination": d, "in_flight": n}
             for d, n in sorted(destinations.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"listeners": listeners,
            "delivery": {"in_flight": sum(destinations.values()), "destinations": items}}


def counter_totals(data_dir: Path | str, names: dict[str, str]) -> dict[str, float]:
    """The sums over all labels and processes of the counters in ``names`` (key -> metric
    name without _total)."""
    totals = dict.fromkeys(names, 0.0)
    wanted = {name: key for key, name in names.items()}
    path = metrics_dir(data_dir)
    if not path.is_dir():
        return totals
    for metric in _merged(path, "counter_*.db"):
        key = wanted.get(metric.name)
        if key is None:
            continue
        totals[key] += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return totals


def read_epoch(data_dir: Path | str) -> str | None:
    try:
        return (metrics_dir(data_dir) / EPOCH_FILE).read_text().strip() or None
    except OSError:
        return None
