"""The DATA reader: message content in, de-stuffed content out (RFC 5321 4.1.1.4, 4.5.2).

It works on whole chunks with bytes.find/count/replace instead of one Python step per
line: the only per-line work in Python is for lines that start with a dot.

Only <CRLF>.<CRLF> ends the data (RFC 5321 4.1.1.4). "\\n.\\n", "\\r.\\r", "\\n.\\r\\n" and their
kin are content: treating any of them as the end is what SMTP smuggling exploits
(CVE-2023-51764, CVE-2023-51765, CVE-2023-51766). The start of the data counts as the start
of a line, so ".\\r\\n" right after the 354 is an empty message.
"""

from __future__ import annotations

import enum
from io import IncrementalNewlineDecoder

from .reply import BARE_LF, MESSAGE_TOO_BIG, NUL_IN_DATA, TEXT_LINE_TOO_LONG, Reply

__all__ = ["BareLineEnds", "DataReader", "find_dot_line"]

_CR, _LF, _DOT = 0x0D, 0x0A, 0x2E
_END = b".\r\n"          # at a line start: the end of the data

#: Octets after a dot inside a line that the substring search takes in one go, at first
#: (see find_dot_line).
_WINDOW = 2048


def find_dot_line(data: bytes, start: int = 0) -> int:
    r"""``data.find(b"\r\n.", start)``, faster where the content has no dots.

    The substring search costs ~0.7 ns per octet here (Python 3.11 steps through the text
    a few octets at a time for a short pattern); the search for one octet is memchr, some
    fifty times faster. The bulk of a large message is base64, which has no dot: the next
    dot is found first, and only from a dot inside a line on (a header, text) does the
    substring search take a window of the content, then the dots are looked for again. The
    window doubles while dots keep coming (text: a few windows per message, not one per
    sentence) and starts small again after content without dots (issue 15).

    Every match that starts at ``start`` or later is seen, whatever the windows: a dot
    before the window is the one just checked, the window holds the matches that start
    before its end minus two, and the next dot search begins where those have their dot."""
    find = data.find
    pos = start
    window = _WINDOW
    while True:
        i = find(b".", pos + 2)
        if i < 0:
            return -1
        if data.startswith(b"\r\n", i - 2):
            return i - 2
        if i - pos > window:
            window = _WINDOW          # came through content without dots
        # From i + 1: the octet at i is this dot, neither the CR nor the LF of a match.
        j = find(b"\r\n.", i + 1, i + window)
        if j >= 0:
            return j
        pos = i + window - 2
        window *= 2


class BareLineEnds(enum.Enum):
    """What to do with a CR or LF that is not part of a CRLF pair (RFC 5321 2.3.8)."""

    REJECT = "reject"          # refuse the message (550 5.6.0) / the command (501 5.5.2);
                               # a message with NUL characters too
    NORMALIZE = "normalize"    # turn it into CRLF, drop NULs (for known broken senders only)


class DataReader:
    """State of one DATA phase; `scan()` is called with whatever input is buffered."""

    __slots__ = ("mode", "max_line", "max_size", "line_start", "line_len", "size", "problem")

    def __init__(self, *, mode: BareLineEnds, max_line: int, max_size: int) -> None:
        self.mode = mode
        self.max_line = max_line          # octets including CRLF, 0: no limit
        self.max_size = max_size          # 0: no limit
        self.line_start = True            # just after a CRLF (or at the start of the data)
        self.line_len = 0                 # octets of the current, unfinished line
        self.size = 0                     # de-stuffed content octets so far
        self.problem: Reply | None = None

    def scan(self, buf: bytes | bytearray) -> tuple[bytes, int, bool]:
        """Consume what can be decided from `buf`.

        Returns (content, octets consumed, end seen). Octets that cannot be decided yet (a
        trailing CR, or a line start "." / ".\\r") are left unconsumed for the next call.
        Once `problem` is set, no more content is returned but the end is still looked for.
        """
        data = bytes(buf)
        n = len(data)
        out: list[bytes] = []
        pos = 0
        while pos < n:
            if self.line_start:
                if data[pos] == _DOT:
                    head = data[pos:pos + 3]
                    if head == _END:
                        return self._join(out), pos + 3, True
                    if len(head) < 3 and _END.startswith(head):
                        break                      # ".", ".\r": wait for the next octet
                    pos += 1                       # 4.5.2: delete the stuffed dot
                self.line_start = False
                continue
            # Everything up to the next CRLF that starts a dot line is plain content.
            i = find_dot_line(data, pos)
            if i >= 0:
                end, self.line_start = i + 2, True
            elif data.endswith(b"\r\n", pos):
                end, self.line_start = n, True
            elif data.endswith(b"\r", pos):
                end = n - 1                        # CR or CRLF? decided by the next octet
            else:
                end = n
            if end == pos:
                break
            self._take(data[pos:end], out)
            pos = end
        return self._join(out), pos, False

    def _join(self, out: list[bytes]) -> bytes:
        return b"".join(out) if self.problem is None else b""

    def _take(self, seg: bytes, out: list[bytes]) -> None:
        """Check and collect one segment; CRLF pairs are never split between segments."""
        if self.problem is not None:
            self.size += len(seg)
            return
        # One memchr: free for clean mail. find(), not `in`: bytes.__contains__ tries
        # its argument as an int first, and the TypeError it drops costs ~1,800
        # instructions (CPython 3.11; issue 15, callgrind).
        if seg.find(b"\0") >= 0:
            if self.mode is BareLineEnds.REJECT:
                self.problem = NUL_IN_DATA
                self.size += len(seg)
                return
            seg = seg.replace(b"\0", b"")     # NORMALIZE (legacy senders): dropped
        if not seg:
            return
        if _bare(seg):
            if self.mode is BareLineEnds.REJECT:
                self.problem = BARE_LF
                self.size += len(seg)
                return
            # NORMALIZE: every bare CR and bare LF becomes CRLF. Dots after them were
            # not de-stuffed (scan() only treats a real CRLF as a line start).
            seg = seg.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.size += len(seg)
        if self.max_line and self._too_long(seg):
            self.problem = TEXT_LINE_TOO_LONG      # RFC 5321 4.5.3.1.6
            return
        if self.max_size and self.size > self.max_size:
            self.problem = MESSAGE_TOO_BIG         # RFC 1870 6.4 / RFC 5321 4.5.3.1.7
            return
        out.append(seg)

    def _too_long(self, seg: bytes) -> bool:
        """The text line limit (octets with the CRLF) over a segment without a bare CR or
        LF: its first line ends the one the previous segment left unfinished, its last is
        the unfinished one the next segment goes on with. The lines between are checked a
        window of ``limit`` octets at a time (the last LF in each: every line before it is
        short enough; none: the line is too long), not one Python step per line."""
        limit = self.max_line
        first = seg.find(b"\r")              # no bare CR: the first CRLF (memchr)
        if first < 0:
            self.line_len += len(seg)
            # The line is not finished, but it cannot fit any more: its CRLF is still due.
            return self.line_len + 2 > limit
        if self.line_len + first + 2 > limit:
            return True
        end = seg.rfind(b"\n") + 1            # after the last CRLF
        pos = first + 2                       # the lines in seg[pos:end] are whole
        rfind = seg.rfind
        while end - pos > limit:
            # A line of c octets before its CRLF is too long when c + 2 > limit, that is
            # when its LF is not among the ``limit`` octets from its start.
            last = rfind(b"\n", pos, pos + limit)
            if last < 0:
                return True
            pos = last + 1
        self.line_len = len(seg) - end
        return self.line_len + 2 > limit


def _bare(seg: bytes) -> bool:
    """Whether ``seg`` has a CR or an LF that is not half of a CRLF (RFC 5321 2.3.8).

    The newline decoder of io notes which line ends it met (a lone CR, a lone LF, CRLF) in
    one pass in C, ~0.6 ns per octet with the latin-1 decoding (one octet per character,
    any octet); bytes.splitlines made an object for every line, ~1.3 ns per octet of
    80-column text (issue 15)."""
    if seg.find(b"\r") < 0:                  # memchr: without CR, any LF is bare
        return seg.find(b"\n") >= 0           # (find(), not `in`: see _take)
    decoder = IncrementalNewlineDecoder(None, translate=False)
    decoder.decode(seg.decode("latin-1"), final=True)
    return decoder.newlines not in (None, "\r\n")
