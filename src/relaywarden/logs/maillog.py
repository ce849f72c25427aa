"""The mail log: one line per event in a message's life, keyed by queue ID.

Event names are fixed (DESIGN.md): connect, auth, reject, queued, attempt, delivered, deferred,
bounced, badmail (plus disconnect). Format: an ISO timestamp, then logfmt ``key=value`` pairs,
so `grep id=XYZ` tells a message's whole story and a machine can parse it.
"""

from __future__ import annotations

import enum
import time

from relaywarden.logs.files import RotatingFile


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


def _value(v: object) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\\') and s.isprintable():
        return s
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


class MailLog:
    def __init__(self, out: RotatingFile | None, *, clock=time.time) -> None:
        self._out = out
        self._clock = clock

    def event(self, event: MailEvent, **fields: object) -> None:
        if self._out is None:
            return
        now = self._clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        parts = [stamp, f"event={event.value}"]
        parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
        self._out.write(" ".join(parts) + "\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
