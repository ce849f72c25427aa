"""Command line framing: the next command line from the input buffer (RFC 5321 2.3.8, 4.5.3.1).

Only CRLF ends a line (RFC 5321 2.3.8): a bare CR or LF inside a command line is refused
(501 5.5.2), never taken as a line end, so a line cannot be smuggled past the framing
(CVE-2023-51764). With `BareLineEnds.NORMALIZE` (known broken senders only) a bare LF ends
a line too. A line longer than its limit (4.5.3.1.4) is dropped up to its CRLF without being
kept in memory and is reported once, as LINE_TOO_LONG with the verb it started with.

Message content after DATA is framed by `_data.DataReader` (dot-stuffing and the
<CRLF>.<CRLF> end, RFC 5321 4.1.1.4, 4.5.2), not here.
"""

from __future__ import annotations

import re

from ._data import BareLineEnds
from .reply import BARE_LINE_END_IN_COMMAND, LINE_TOO_LONG, NUL_IN_COMMAND, Reply

__all__ = ["AUTH_LINE_LIMIT", "LineReader", "verb_of"]

# RFC 4954 4: AUTH lines (the command with its initial response, and the responses to
# challenges) may be up to 12288 octets, more than the 512 of other commands.
AUTH_LINE_LIMIT = 12288

_VERB_PREFIX = re.compile(rb"[A-Za-z]{0,16}")
_NORMALIZE = BareLineEnds.NORMALIZE


class LineReader:
    """Reads command lines off a connection's input buffer, one at a time.

    Its own state is only that of an over-long line being dropped: the buffer belongs to
    the connection, which also feeds it to the DATA reader.
    """

    __slots__ = ("_discarding", "_discard_verb", "_discarded")

    def __init__(self) -> None:
        self._discarding = False                 # inside an over-long command line
        self._discard_verb = ""
        self._discarded = 0                      # octets of the over-long line so far

    def read(self, buf: bytearray, limit: int, mode: BareLineEnds, *,
             sasl: bool) -> tuple[bytes, Reply | None, int] | None:
        """Take the next line from `buf`: (line without CRLF, line-level problem, octets
        it took on the wire), or None when no whole line is buffered yet.

        `limit` counts octets including the CRLF; `sasl` says a SASL response line is due
        (state AUTH), which, like an AUTH command, may have AUTH_LINE_LIMIT octets.
        """
        # The common case first: a whole line within the normal limit, ended by CRLF. Any
        # larger limit (AUTH) would read the same line, so the AUTH test is not needed.
        if not self._discarding and mode is not _NORMALIZE:
            i = buf.find(b"\r\n", 0, limit)
            if i >= 0:
                raw = bytes(buf[:i])
                del buf[:i + 2]
                # find(), not `in`: CPython 3.11's bytes.__contains__ first tries its
                # argument as an int (`10 in raw`), and the TypeError it formats and drops
                # for a bytes argument cost ~1,800 instructions per test, three a command
                # (issue 15, callgrind).
                if raw.find(b"\r") >= 0 or raw.find(b"\n") >= 0 or raw.find(b"\0") >= 0:
                    return raw, _line_problem(raw), i + 2
                return raw, None, i + 2
        # While the input is shorter than the normal limit, both limits read the same
        # line (see below): no need to look for "AUTH " before that.
        if sasl or (len(buf) >= limit and buf[:5].upper() == b"AUTH "):
            limit = max(limit, AUTH_LINE_LIMIT)
        normalize = mode is _NORMALIZE
        if not self._discarding:
            found = _find_line_end(buf, limit, normalize)
            if found is not None:
                content_end, next_start = found
                raw = bytes(buf[:content_end])
                del buf[:next_start]
                if content_end + 2 > limit:     # a bare LF just past the limit
                    return raw, LINE_TOO_LONG, next_start
                return raw, _line_problem(raw), next_start
            if len(buf) < limit:
                return None
            # 4.5.3.1.4: too long. Drop it up to its CRLF; it is never read as a command.
            self._discarding = True
            self._discard_verb = verb_of(bytes(buf[:16]))
            self._discarded = 0
        found = _find_line_end(buf, None, normalize)
        if found is None:
            keep = 1 if buf.endswith(b"\r") else 0   # maybe the CR of a CRLF
            self._discarded += len(buf) - keep
            del buf[:len(buf) - keep]
            return None
        del buf[:found[1]]
        self._discarding = False
        return self._discard_verb.encode(), LINE_TOO_LONG, self._discarded + found[1]


def _find_line_end(buf: bytearray, end: int | None,
                   normalize: bool) -> tuple[int, int] | None:
    """(end of line content, start of next line) of the first line in buf[:end], or None.

    Only CRLF ends a line (RFC 5321 2.3.8). With NORMALIZE a bare LF does too.
    """
    if normalize:
        i = buf.find(b"\n", 0, end)
        if i < 0:
            return None
        return (i - 1 if i > 0 and buf[i - 1] == 0x0D else i), i + 1
    i = buf.find(b"\r\n", 0, end)
    return None if i < 0 else (i, i + 2)


def _line_problem(raw: bytes) -> Reply | None:
    """A bare CR or LF, or a NUL, inside a command line (RFC 5321 2.3.8, 4.1.1)."""
    if raw.find(b"\r") >= 0 or raw.find(b"\n") >= 0:     # find(): see read()
        return BARE_LINE_END_IN_COMMAND
    if raw.find(b"\0") >= 0:
        return NUL_IN_COMMAND
    return None


def verb_of(raw: bytes) -> str:
    """The leading letters of a raw line, for the Handled event of a malformed line."""
    match = _VERB_PREFIX.match(raw)
    return match.group().decode("ascii").upper() if match else ""
