"""Counting Received: header fields as DATA streams in: the mail loop detector.

RFC 5321 6.3: a server "SHOULD" detect loops by counting the Received header fields; a
message with more than ``relay.max_hops`` of them is taken to loop (5.4.6) and goes to
badmail. The count is made on the content chunks as they arrive (no second pass over a
spooled body): only the header section is looked at, and a chunk may end anywhere,
including in the middle of a field name.

Pure: bytes in, a number out.
"""

from __future__ import annotations

import re

# Enough of a line's start to decide: "Received" + optional WSP + ":".
_PREFIX = 32
_NAME = b"received"
# RFC 5322 2.2 ftext without ":" (printable US-ASCII, 33 to 126).
_FTEXT = re.compile(rb"[\x21-\x7e]+")
_ANY_RECEIVED = re.compile(rb"received", re.IGNORECASE)


def _field_name(start: bytes) -> bytes | None:
    """The field name of a header line from its first bytes, or None when the line is not
    a header field (RFC 5322 2.2: ftext = printable US-ASCII except ":").

    ``start`` may be cut before the colon (a long name such as Microsoft's X- fields): a
    cut name that is all ftext still counts as a field, only it is not "Received".
    """
    colon = start.find(b":")
    if colon == -1:
        name = start.rstrip(b"\r\n")
        if len(start) >= _PREFIX and _FTEXT.fullmatch(name):
            return b""
        return None
    name = start[:colon].rstrip(b" \t")   # obs-optional: WSP before the colon (RFC 5322 4.5)
    if not _FTEXT.fullmatch(name):
        return None
    return name


class ReceivedCounter:
    """Feed the de-stuffed DATA stream; ``count`` is the number of Received: fields seen in
    the header section. Counting stops at the blank line that ends the header section, or
    at the first line that is neither a field nor a continuation (a message without
    headers, or a broken one: what follows is body, whatever it looks like)."""

    __slots__ = ("count", "done", "_head")

    def __init__(self) -> None:
        self.count = 0
        self.done = False
        self._head = b""     # the start of the line that is not complete yet

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if not self._head:
            # At a line's start, with the rest of the header section in this chunk and no
            # "received" anywhere before its blank line (an app's or a scanner's message):
            # nothing more to count, and counting ends at that blank line at the latest.
            # One search instead of the walk line by line below.
            blank = data.find(b"\n\r\n")
            if blank != -1 and _ANY_RECEIVED.search(data, 0, blank) is None:
                self.done = True
                return
        pos = 0
        size = len(data)
        while pos < size:
            end = data.find(b"\n", pos)
            if end == -1:
                if len(self._head) < _PREFIX:
                    self._head += data[pos:pos + _PREFIX - len(self._head)]
                return
            # At most _PREFIX bytes of the line: enough to decide, however long it is.
            head = self._head
            line = head + data[pos:min(end + 1, pos + max(_PREFIX - len(head), 0))]
            whole = len(self._head) + (end + 1 - pos)
            self._head = b""
            pos = end + 1
            self._line(line, whole)
            if self.done:
                return

    def _line(self, start: bytes, length: int) -> None:
        if length <= 2 and start in (b"\r\n", b"\n"):
            self.done = True                      # the blank line: the body begins
            return
        if start[:1] in (b" ", b"\t"):
            return                                # a folded continuation line
        name = _field_name(start)
        if name is None:
            self.done = True
            return
        if name.lower() == _NAME:
            self.count += 1
