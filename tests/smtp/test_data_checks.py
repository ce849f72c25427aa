"""The DATA reader's per-segment checks (smtp/_data.py DataReader._take) against a plain
line-by-line reading of RFC 5321: bare CR or LF (2.3.8), NUL, the text line limit
(4.5.3.1.6) across segments, and what NORMALIZE makes of the content. The reader does
these in a few passes of bytes methods (issue 15); this is the slow, obvious version it
must agree with, on any input (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from relaywarden.smtp._data import BareLineEnds, DataReader
from relaywarden.smtp.reply import BARE_LF, NUL_IN_DATA, TEXT_LINE_TOO_LONG

# \x0b \x0c \x1c \x85: line boundaries for str.splitlines, never for bytes (only CR, LF).
_PIECES = [b"X", b"XXXXXXXX", b"\r\n", b"\r", b"\n", b".", b"\0", b"\xc3\xa9", b"\x0b",
           b"\x0c", b"\x1c", b"\x85"]


def _reference(segments: list[bytes], mode: BareLineEnds, max_line: int):
    """(problem, size, content) the line-by-line way."""
    line = 0          # octets of the unfinished line
    size = 0
    out = []
    for seg in segments:
        if b"\0" in seg:
            if mode is BareLineEnds.REJECT:
                return NUL_IN_DATA, size + len(seg), b"".join(out)
            seg = seg.replace(b"\0", b"")
        i = 0
        bare = False
        while i < len(seg):
            if seg[i:i + 2] == b"\r\n":
                i += 2
            elif seg[i] in b"\r\n":
                bare = True
                break
            else:
                i += 1
        if bare:
            if mode is BareLineEnds.REJECT:
                return BARE_LF, size + len(seg), b"".join(out)
            seg = seg.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        size += len(seg)
        if max_line:
            for j, text in enumerate(seg.split(b"\r\n")):
                if j:           # a CRLF ended the line before: a new one starts
                    line = 0
                line += len(text)
                if line + 2 > max_line:
                    return TEXT_LINE_TOO_LONG, size, b"".join(out)
        out.append(seg)
    return None, size, b"".join(out)


@settings(max_examples=3000, deadline=None)
@given(segments=st.lists(st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join),
                         min_size=1, max_size=6),
       mode=st.sampled_from(list(BareLineEnds)),
       max_line=st.sampled_from([0, 3, 5, 9, 17, 1000]))
def test_the_checks_agree_with_reading_line_by_line(segments, mode, max_line):
    reader = DataReader(mode=mode, max_line=max_line, max_size=0)
    out: list[bytes] = []
    for seg in segments:
        reader._take(seg, out)
        if reader.problem is not None:
            break
    problem, size, content = _reference(segments, mode, max_line)
    assert reader.problem == problem
    if problem is None:
        assert b"".join(out) == content and reader.size == size


def test_a_long_line_split_over_many_segments_is_found():
    reader = DataReader(mode=BareLineEnds.REJECT, max_line=1000, max_size=0)
    out: list[bytes] = []
    reader._take(b"hello\r\n" + b"x" * 500, out)
    reader._take(b"x" * 497, out)                 # 997 octets, CRLF still to come: fits
    assert reader.problem is None
    reader._take(b"x", out)                        # 998 + CRLF = 1000: the limit
    assert reader.problem is None
    reader._take(b"x\r\n", out)
    assert reader.problem == TEXT_LINE_TOO_LONG
