"""The mail log: one line per event in a message's life, keyed by queue ID.

Event names are fixed (DESIGN.md): connect, auth, reject, queued, attempt, delivered, deferred,
bounced, badmail (plus disconnect, and etrn / atrn for a queue a client started or collected). Format: an ISO timestamp, then logfmt ``key=value`` pairs,
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


class MailLog:
    def __init__(self, out: RotatingFile | None, *, clock=time.time,
                 observer: Callable[[MailEvent, dict], None] | None = None) -> None:
        """``observer(event, fields)`` is called for every event, also when ``out`` is
        None (the mail log file is off): the metrics count events there. It must be cheap
        and must not raise; ``fields`` is not to be changed."""
        self._out = out
        self._clock = clock
        self._observer = observer
        self._stamp = SecondStamp(
            lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        if out is not None:
            out.lost_notice = self._lost_notice

    def event(self, event: MailEvent, /, *, at: float | None = None, **fields: object) -> None:
        """One line. ``at``: when the event happened, if that was before now (epoch
        seconds); the line's stamp, so that sorting by stamp gives the order of events."""
        if self._observer is not None:
            self._observer(event, fields)
        if self._out is None:
            return
        now = self._clock()
        self._out.write(self._line(event, fields, now if at is None else at), now)

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

    def _lost_notice(self, count: int, name: str, now: float) -> str:
        fields = {"count": count, "file": name}
        if self._observer is not None:
            self._observer(MailEvent.LOG_LOST, fields)
        return self._line(MailEvent.LOG_LOST, fields, now)

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
