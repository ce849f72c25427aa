"""The mail log: one line per event in a message's life, keyed by queue ID.

Event names are fixed (docs/architecture.md): connect, auth, reject, queued, attempt, delivered,
deferred, bounced, badmail (plus disconnect, etrn / atrn for a queue a client started or
collected, and lookup for a DNS list or recipient source asked). Format: an ISO timestamp, then
logfmt ``key=value`` pairs,
so `grep id=XYZ` tells a message's whole story and a machine can parse it.

The timestamp is the moment of the event, in UTC to the microsecond, always 27 characters
(``2026-09-21T14:13:20.500000Z``). Two processes write the file, each through its own
buffer, so the file's order is the order of the writes, not quite of the events; the
stamps are. ``LC_ALL=C sort -s -k1,1`` (or plain ``sort``) restores the order of events
across the processes and across the files of a day. An event's stamp is taken when it
happens, which is not always when its line is written: ``queued`` carries the time the
commit began (``at=``), so it sorts before anything the delivery process does with the
message once the commit lets it claim it.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable

from relaywarden.logs.files import RotatingFile
from relaywarden.logs.stamp import SecondStamp


class MailEvent(enum.Enum):
    # Members are singletons compared by identity: the identity hash agrees with that, in
    # C, where Enum's own hashes the name in Python (the log and the metrics look events up
    # in dicts several times per message, issue 15).
    __hash__ = object.__hash__

    CONNECT = "connect"
    DISCONNECT = "disconnect"
    AUTH = "auth"
    REJECT = "reject"
    QUEUED = "queued"
    ATTEMPT = "attempt"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    BADMAIL = "badmail"
    ETRN = "etrn"
    ATRN = "atrn"
    # What the relay asked to decide (a DNS list at connect, a recipient validation
    # source at RCPT) and the answer: kind=, source=, answer=, cached=.
    LOOKUP = "lookup"
    # Admin actions (CLI, console, API), each under its own name with by=WHO.
    FLUSH = "flush"
    RETRY = "retry"
    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"
    BADMAIL_RELEASE = "badmail-release"
    BADMAIL_DELETE = "badmail-delete"
    # SIGHUP: what the reload applied and what needs a restart (config.reload).
    RELOAD = "reload"
    # Lines of a log file that could not be written (the disk was full): count=, file=.
    LOG_LOST = "log-lost"


_PLAIN = re.compile(r'[^ "=\\]+')


def _value(v: object) -> str:
    if type(v) is int:
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.isprintable():
        return s
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


#: Events kept as raw values before they are formatted (see MailLog): a message makes ~5,
#: so about a hundred messages' worth; the timer formats the rest once a second.
BATCH = 512

# " event=NAME" per event: an enum's .value costs a descriptor call.
_EVENT_TEXT = {e: f" event={e.value}" for e in MailEvent}


class MailLog:
    """The mail log (see the module's docstring).

    An event costs its caller the observer's call, one clock read and one tuple: the line is
    formatted later, in a batch with the others, when the batch is full or the log is
    flushed (the app's timer, once a second; close), with the stamp of its moment and into
    the file of its day, so the file reads exactly as if each line had been formatted at
    once. While the file cannot be written (a full disk), events go out one by one again,
    so what is kept and what is counted as lost is decided per line (files.RotatingFile).
    """

    def __init__(self, out: RotatingFile | None, *, clock=time.time,
                 observer: Callable[[MailEvent, dict], None] | None = None) -> None:
        """``observer(event, fields)`` is called for every event, at the event, also when
        ``out`` is None (the mail log file is off): the metrics count events there. It must
        be cheap and must not raise; ``fields`` is not to be changed (the line is formatted
        from it later)."""
        self._out = out
        self._clock = clock
        self._observer = observer
        self._stamp = SecondStamp(
            lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        # (moment of writing, event, fields, at): events not formatted yet.
        self._events: list[tuple] = []
        self._batch = BATCH       # 1 while the file is failing (see the class docstring)
        if out is not None:
            out.lost_notice = self._lost_notice

    def event(self, event: MailEvent, /, *, at: float | None = None, **fields: object) -> None:
        """One line. ``at``: when the event happened, if that was before now (epoch
        seconds); the line's stamp, so that sorting by stamp gives the order of events.
        ``fields``' values are formatted at the next flush: pass values, not objects that
        change afterwards."""
        if self._observer is not None:
            self._observer(event, fields)
        if self._out is None:
            return
        events = self._events
        events.append((self._clock(), event, fields, at))
        if len(events) >= self._batch:
            self._drain()

    def stamp(self, moment: float) -> str:
        """``moment`` as the lines' timestamp: UTC, microseconds, fixed width."""
        second, micros = divmod(round(moment * 1_000_000), 1_000_000)
        return f"{self._stamp(second)}.{micros:06d}Z"

    def _line(self, event: MailEvent, fields: dict, moment: float) -> str:
        parts = [f"{self.stamp(moment)} event={event.value}"]
        for k, v in fields.items():
            if v is not None:
                parts.append(f"{k}={_value(v)}")
        return " ".join(parts) + "\n"

    def _drain(self) -> None:
        """Format the events recorded and hand the lines to the file (its buffer)."""
        events = self._events
        if not events:
            return
        out = self._out
        assert out is not None      # events are recorded only when there is a file
        self._events = []
        out.write_lines(self._lines(events), [e[0] for e in events])
        self._batch = 1 if out.failing else BATCH

    def _lines(self, events: list[tuple]) -> list[str]:
        """The lines of ``events``: ``_line`` for each, in one tight loop."""
        stamp = self._stamp
        # Text values seen in this batch (listener, client, route... repeat) and what
        # _value makes of them: a look-up is cheaper than the check.
        seen: dict[str, str] = {}
        out: list[str] = []
        append = out.append
        last, when = None, ""    # the stamp of the last line's second (most share one)
        for now, event, fields, at in events:
            second, micros = divmod(round((now if at is None else at) * 1_000_000), 1_000_000)
            if second != last:
                last, when = second, stamp(second)
            parts = [f"{when}.{micros:06d}Z{_EVENT_TEXT[event]}"]
            for k, v in fields.items():
                if v is None:
                    continue
                if type(v) is str:
                    # get(): a queue ID or a message ID is new in every line, and a
                    # KeyError raised and caught costs several look-ups.
                    text = seen.get(v)
                    if text is None:
                        text = seen[v] = _value(v)
                else:
                    text = _value(v)
                parts.append(f"{k}={text}")
            append(" ".join(parts) + "\n")
        return out

    def _lost_notice(self, count: int, name: str, now: float) -> str:
        fields = {"count": count, "file": name}
        if self._observer is not None:
            self._observer(MailEvent.LOG_LOST, fields)
        return self._line(MailEvent.LOG_LOST, fields, now)

    def flush(self) -> None:
        if self._out is not None:
            self._drain()
            self._out.flush()
            self._batch = 1 if self._out.failing else BATCH

    def close(self) -> None:
        if self._out is not None:
            self._drain()
            self._out.close()
