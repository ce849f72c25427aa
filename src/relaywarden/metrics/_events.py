"""The counters of a relay process, derived from its mail-log events.

Every event of the receiving and the delivery process goes through ``MailLog.event``, which
hands it to :func:`observe` (also with ``log.mail = false``). The hot path stays cheap: a
dict lookup per event, and for a counted event an addition to an in-process dict. Once a
second (a timer on the process's event loop; at exit; at once when there is no loop) the
sums go to the process's own mmap file (prometheus-client multiprocess mode), which the
admin process reads. Nothing here does I/O on the hot path or waits on another process.

Before :func:`start` (a process that never called ``metrics.setup``, the unit tests of other
parts) :func:`observe` does nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import os
from pathlib import Path
from typing import Any

#: Attempt latency buckets (seconds): a LAN smart host answers in milliseconds, a slow
#: remote MX with a big message takes minutes (data_timeout).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: At most this many destinations are tracked by name per process; the rest are "other".
MAX_DESTINATIONS = 1000
#: How often the sums of the hot path go to the mmap file.
FLUSH_SECONDS = 1.0

# name (without _total for counters) -> (kind, help, labels)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "relaywarden_connections": (
        "counter", "SMTP connections ended, by listener and result (accepted: greeted with "
        "220; rejected: refused at connect by access rules, limits or reverse DNS)",
        ("listener", "result")),
    "relaywarden_connections_open": (
        "gauge", "SMTP connections open now, by listener", ("listener",)),
    "relaywarden_commands_rejected": (
        "counter", "SMTP commands (and connections) answered with a refusal, by listener, "
        "stage and reply code", ("listener", "stage", "code")),
    "relaywarden_messages_received": (
        "counter", "Messages accepted (250 after DATA) and queued, by listener", ("listener",)),
    "relaywarden_messages_quarantined": (
        "counter", "Messages accepted with at least one recipient kept in badmail, by listener",
        ("listener",)),
    "relaywarden_recipients_delivered": (
        "counter", "Recipients delivered to the next hop, by route", ("route",)),
    "relaywarden_recipients_deferred": (
        "counter", "Recipient delivery attempts that failed temporarily (retry scheduled), "
        "by route", ("route",)),
    "relaywarden_recipients_bounced": (
        "counter", "Recipients that failed permanently (a DSN goes to the sender), by route",
        ("route",)),
    "relaywarden_delivery_attempt_duration_seconds": (
        "histogram", "Time of one delivery attempt of a message (next-hop lookup, connection, "
        "transaction), observed once per recipient outcome", ("outcome",)),
    "relaywarden_deliveries_in_flight": (
        "gauge", "Delivery transactions under way now, by next-hop host", ("destination",)),
    "relaywarden_auth": (
        "counter", "SMTP AUTH attempts, by listener and result (ok, fail)",
        ("listener", "result")),
    "relaywarden_tls_inbound_connections": (
        "counter", "SMTP connections that ended with TLS up (implicit or STARTTLS), by "
        "listener and TLS version", ("listener", "version")),
    "relaywarden_tls_inbound_handshake_failures": (
        "counter", "Inbound TLS handshakes that failed, by listener", ("listener",)),
    "relaywarden_tls_outbound_recipients": (
        "counter", "Recipients delivered, by route and the TLS version of the connection "
        "that carried them (none: plaintext)", ("route", "version")),
    "relaywarden_inflow_delayed": (
        "counter", "250s after the final dot (and Pickup batches, listener pickup) held "
        "back while delivery was behind (back-pressure, delivery.in_flow_delay), by "
        "listener", ("listener",)),
    "relaywarden_inflow_delay_seconds": (
        "counter", "Seconds they waited, in all, by listener", ("listener",)),
    "relaywarden_log_lines_lost": (
        "counter", "Log lines that could not be written (the disk was full), by log "
        "(mail.log, ex.log, ex.jsonl, out.log, out.jsonl)", ("log",)),
}

_metrics: dict[str, Any] = {}      # prometheus_client Counter / Gauge / Histogram
_children: dict[tuple, Any] = {}
_HANDLERS: dict = {}
_state: dict = {"path": None, "role": None, "previous_value_class": None}
# (listener, client) -> connections refused at connect whose disconnect is still to come
_pending_rejects: dict[tuple, int] = {}
_last_badmail: list = [None]     # the queue id of the last badmail recipient line
_destinations: set[str] = set()
# (metric name, label values) -> amount not yet written; histogram observations
_pending: dict[tuple, float] = {}
_observations: list[tuple[str, float]] = []
_timer: list = [None]            # the flush timer's handle, when there is a loop


def _add(key: tuple, amount: float = 1) -> None:
    _pending[key] = _pending.get(key, 0) + amount


def flush() -> None:
    """Write what the hot path summed up to this process's mmap file."""
    if _pending:
        items = list(_pending.items())
        _pending.clear()
        for n, ((name, labels), amount) in enumerate(items):
            try:
                child = _child(name, *labels)   # also at 0: the series exists from now on
            except Exception:
                # A new series on a full disk (see _reserved_mmap): what is not written yet
                # waits for the next flush, so nothing counted meanwhile is lost.
                for key, rest in items[n:]:
                    _add(key, rest)
                raise
            if amount:
                child.inc(amount)
    if _observations:
        observed = list(_observations)
        _observations.clear()
        by_outcome: dict[str, list[float]] = {}
        for outcome, seconds in observed:
            by_outcome.setdefault(outcome, []).append(seconds)
        for outcome, amounts in by_outcome.items():
            observe_many(_child("relaywarden_delivery_attempt_duration_seconds", outcome),
                         amounts)


def observe_many(histogram, amounts: list[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, written as one addition to the sum
    and one per bucket that got any. Each observe() is two writes to the mmap file (the sum
    and a bucket), each with its getpid(), lock and struct packing: ~30 Python calls per
    delivered recipient in the delivery process (issue 15). It counts into the histogram's
    own values (prometheus-client's Histogram keeps ``_upper_bounds``, ``_buckets`` and
    ``_sum``; ``observe`` takes the first bucket whose bound is not below the amount); a
    Histogram without them (another version) is given its observe() calls instead."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (bounds is None or buckets is None or total is None or len(bounds) != len(buckets)
            or any([a != a for a in amounts])):          # NaN: as observe() files it
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect.bisect_left(bounds, amount)] += 1     # the last bound is +Inf
    total.inc(sum(amounts))
    for bucket, count in zip(buckets, counts):
        if count:
            bucket.inc(count)


def _tick(loop) -> None:
    try:
        flush()
    except Exception:  # noqa: BLE001 - a full disk: the sums are lost, the relay is not
        pass
    _timer[0] = loop.call_later(FLUSH_SECONDS, _tick, loop)


def _child(name: str, *labels: str):
    key = (name, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = _metrics[name].labels(*labels)
    return child


# -- the event handlers (one per mail-log event name) ------------------------------------

def _on_connect(f: dict) -> None:
    _add(("relaywarden_connections_open", (str(f.get("listener")),)))


def _on_disconnect(f: dict) -> None:
    # A session writes exactly one disconnect line with messages=; the others (timeout,
    # internal error) are notes before it.
    if "messages" not in f:
        return
    listener = str(f.get("listener"))
    _add(("relaywarden_connections_open", (listener,)), -1)
    key = (listener, f.get("client"))
    pending = _pending_rejects.get(key)
    if pending:
        if pending == 1:
            del _pending_rejects[key]
        else:
            _pending_rejects[key] = pending - 1
        result = "rejected"
    else:
        result = "accepted"
    _add(("relaywarden_connections", (listener, result)))
    tls = f.get("tls")
    if tls:
        _add(("relaywarden_tls_inbound_connections", (listener, str(tls))))


def _on_reject(f: dict) -> None:
    listener = str(f.get("listener"))
    stage = f.get("stage")
    if stage == "tls":
        _add(("relaywarden_tls_inbound_handshake_failures", (listener,)))
        return
    if f.get("action") == "badmail":      # answered 250 and quarantined (a mail loop)
        return
    code = f.get("code")
    if code is None:
        return
    _add(("relaywarden_commands_rejected", (listener, str(stage), str(code))))
    if stage == "connect":
        key = (listener, f.get("client"))
        _pending_rejects[key] = _pending_rejects.get(key, 0) + 1


def _on_badmail(f: dict) -> None:
    # The session writes the badmail lines of a message just before its queued line.
    _last_badmail[0] = f.get("id")


def _on_queued(f: dict) -> None:
    listener = f.get("listener")
    if listener is None or listener == "-":     # DSNs and notices the relay writes itself
        return
    listener = str(listener)
    _add(("relaywarden_messages_received", (listener,)))
    if _last_badmail[0] is not None and _last_badmail[0] == f.get("id"):
        _last_badmail[0] = None
        _add(("relaywarden_messages_quarantined", (listener,)))


_route_labels: dict[object, str] = {}


def _route(f: dict) -> str:
    """The route label: the route's config key, 'routes."example.com"' shortened to
    'example.com' (sender_routes.NAME stays as it is); '-' when the line has none."""
    name = f.get("route")
    label = _route_labels.get(name)
    if label is None:
        text = str(name or "-")
        if text.startswith('routes."') and text.endswith('"'):
            text = text[len('routes."'):-1]
        if len(_route_labels) < MAX_DESTINATIONS:
            _route_labels[name] = text
        label = text
    return label


def _latency(outcome: str, f: dict) -> None:
    ms = f.get("ms")
    if ms is not None:
        _observations.append((outcome, ms / 1000.0))


def _on_delivered(f: dict) -> None:
    route = _route(f)
    _add(("relaywarden_recipients_delivered", (route,)))
    tls = f.get("tls")
    version = "none" if not tls or tls == "none" else str(tls).split(" ", 1)[0]
    _add(("relaywarden_tls_outbound_recipients", (route, version)))
    _latency("delivered", f)


def _on_deferred(f: dict) -> None:
    # Only a recipient's outcome with a retry: not the per-hop notes (no to=), nor held.
    if "to" not in f or f.get("action") == "held" or f.get("reason") == "held":
        return
    _add(("relaywarden_recipients_deferred", (_route(f),)))
    _latency("deferred", f)


def _on_bounced(f: dict) -> None:
    _add(("relaywarden_recipients_bounced", (_route(f),)))
    _latency("bounced", f)


def _on_auth(f: dict) -> None:
    result = "ok" if f.get("result") == "ok" else "fail"
    _add(("relaywarden_auth", (str(f.get("listener")), result)))


_BY_NAME = {
    "connect": _on_connect, "disconnect": _on_disconnect, "reject": _on_reject,
    "badmail": _on_badmail, "queued": _on_queued, "delivered": _on_delivered,
    "deferred": _on_deferred, "bounced": _on_bounced, "auth": _on_auth,
}


def observe(event, fields: dict) -> None:
    """The mail log's observer: counts what ``event`` (a MailEvent) with ``fields`` (the
    keyword arguments of ``MailLog.event``) says. Never raises: a metrics fault must not
    cost a message."""
    handler = _HANDLERS.get(event)
    if handler is not None:
        try:
            handler(fields)
            if _timer[0] is None:      # no event loop to flush from: write at once
                flush()
        except Exception:  # noqa: BLE001
            pass


def inflow_delayed(listener: str, seconds: float) -> None:
    """A 250 of ``listener`` waited ``seconds`` for delivery to catch up (back-pressure,
    Store.inflow)."""
    if _HANDLERS:
        _add(("relaywarden_inflow_delayed", (listener,)))
        _add(("relaywarden_inflow_delay_seconds", (listener,)), seconds)


def log_lines_lost(log: str, lines: int) -> None:
    """``lines`` lines of ``log`` could not be written (RotatingFile.on_lost)."""
    if _HANDLERS:
        _add(("relaywarden_log_lines_lost", (log,)), lines)


# -- in-flight deliveries (no event marks the end of a transaction) ------------------------

class _Untracked:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


_UNTRACKED = _Untracked()


class _Tracked:
    """One delivery under way: +1 on the destination's gauge, -1 when it ends. Summed up on
    the hot path like the counters and written by the next flush (the gauge is at most a
    second behind): an inc() and a dec() on the mmap file per transaction cost the delivery
    process ~25 Python calls and 4 getpid() system calls per message (issue 15)."""
    __slots__ = ("_key",)

    def __init__(self, key: tuple) -> None:
        self._key = key

    def __enter__(self):
        _count(self._key, 1)
        return self

    def __exit__(self, *exc) -> None:
        _count(self._key, -1)

    # The async forms add to the sum themselves (not through __enter__ and _count): two
    # calls fewer each, once per delivery transaction (issue 15).
    async def __aenter__(self):
        key = self._key
        _pending[key] = _pending.get(key, 0) + 1
        if _timer[0] is None:
            _flush_now()
        return self

    async def __aexit__(self, *exc) -> None:
        key = self._key
        _pending[key] = _pending.get(key, 0) - 1
        if _timer[0] is None:
            _flush_now()


def _count(key: tuple, amount: int) -> None:
    _add(key, amount)
    if _timer[0] is None:      # no event loop to flush from: write at once
        _flush_now()


def _flush_now() -> None:
    try:
        flush()
    except Exception:  # noqa: BLE001 - a full disk: written by a later flush
        pass


def in_flight(destination: str):
    """A (sync or async) context manager that counts one delivery to ``destination`` while
    it runs; a no-op before ``setup``."""
    if not _HANDLERS:
        return _UNTRACKED
    if destination not in _destinations:
        if len(_destinations) >= MAX_DESTINATIONS:
            destination = "other"
        _destinations.add(destination)
    return _Tracked(("relaywarden_deliveries_in_flight", (destination,)))


def _reserved_mmap():
    """prometheus-client's MmapedDict, with every byte of its file allocated before it is
    mapped. The library makes and grows the file with truncate(), which leaves it sparse;
    on a full disk the first store to a page with no block behind it kills the process with
    SIGBUS (seen on tmpfs: the receiving process died mid-session). posix_fallocate reserves
    the blocks first, so a full disk is an OSError here, which the callers catch: the
    metric is not counted, the process lives."""
    from prometheus_client import mmap_dict

    class ReservedMmapedDict(mmap_dict.MmapedDict):
        def __init__(self, filename, read_mode=False):
            if not read_mode:
                fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    try:
                        os.posix_fallocate(fd, 0, size or mmap_dict._INITIAL_MMAP_SIZE)
                    except OSError:
                        if size == 0:        # no empty file left for the scrape to read
                            os.unlink(filename)
                        raise
                finally:
                    os.close(fd)
            super().__init__(filename, read_mode)

        def _init_value(self, key):
            # An entry takes at most len(key) + 28 bytes (length, key padded to 8, two
            # doubles); the library doubles the file until it fits: reserve that first.
            capacity = self._capacity
            while self._used + len(key.encode("utf-8")) + 32 > capacity:
                capacity *= 2
            if capacity != self._capacity:
                os.posix_fallocate(self._f.fileno(), 0, capacity)
            super()._init_value(key)

    return ReservedMmapedDict


# -- life cycle ----------------------------------------------------------------------------

def _forget() -> None:
    if _timer[0] is not None:
        _timer[0].cancel()
        _timer[0] = None
    _HANDLERS.clear()
    _metrics.clear()
    _children.clear()
    _pending.clear()
    _observations.clear()
    _pending_rejects.clear()
    _destinations.clear()
    _route_labels.clear()
    _last_badmail[0] = None


def _at_exit() -> None:
    try:
        flush()
    except Exception:  # noqa: BLE001
        pass


def start(path: Path, role: str) -> None:
    """Multiprocess mode into ``path`` for this process, and the metric objects. Called
    from the process's event loop, it starts the once-a-second flush there."""
    if _state["path"] == str(path) and _HANDLERS:
        return
    _forget()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus_client chooses its value class when it is first imported, from the
    # environment. It may have been imported before (without the variable, or for another
    # directory): a new multiprocess value class, whose files go to ``path``, in any case.
    from prometheus_client import values
    if _state["previous_value_class"] is None:
        _state["previous_value_class"] = values.ValueClass
    values.close_all_multiprocess_files()
    values.MmapedDict = _reserved_mmap()  # type: ignore[misc]  # patched on purpose: what MultiProcessValue's files are made with
    values.ValueClass = values.MultiProcessValue()
    from prometheus_client import Counter, Gauge, Histogram
    for name, (kind, doc, labels) in DEFINITIONS.items():
        if kind == "counter":
            _metrics[name] = Counter(name, doc, labels, registry=None)
        elif kind == "gauge":
            _metrics[name] = Gauge(name, doc, labels, registry=None, multiprocess_mode="livesum")
        else:
            _metrics[name] = Histogram(name, doc, labels, registry=None, buckets=LATENCY_BUCKETS)
    from relaywarden.logs.maillog import MailEvent
    _HANDLERS.update({MailEvent(name): fn for name, fn in _BY_NAME.items()})
    _state["path"] = str(path)
    _state["role"] = role
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        _timer[0] = loop.call_later(FLUSH_SECONDS, _tick, loop)
    if not _state.get("atexit"):
        atexit.register(_at_exit)
        _state["atexit"] = True


def stop() -> None:
    """Write what is pending and go back to the state before :func:`start` (for tests
    that run in one process)."""
    if _state["path"] is not None and _HANDLERS:
        _at_exit()
    _forget()
    if _state["path"] is None:
        return
    from prometheus_client import mmap_dict, values
    values.close_all_multiprocess_files()
    values.MmapedDict = mmap_dict.MmapedDict  # type: ignore[misc]  # put back
    if _state["previous_value_class"] is not None:
        values.ValueClass = _state["previous_value_class"]
    _state.update(path=None, role=None, previous_value_class=None)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
