"""The mail log: one line per event in a message's life, keyed by queue ID.

Event names are fixed (DESIGN.md): connect, auth, reject, queued, attempt, delivered, deferred,
bounced, badmail (plus disconnect, and etrn / atrn for a queue a client started or collected). Format: an ISO timestamp, then logfmt ``key=value`` pairs,
so `grep id=XYZ` tells a message's whole story and a machine can parse it.
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

    def event(self, event: MailEvent, **fields: object) -> None:
        if self._observer is not None:
            self._observer(event, fields)
        if self._out is None:
            return
        now = self._clock()
        parts = [f"{self._stamp(now)}.{int(now % 1 * 1000):03d}Z event={event.value}"]
        for k, v in fields.items():
            if v is not None:
                parts.append(f"{k}={_value(v)}")
        self._out.write(" ".join(parts) + "\n", now)

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
