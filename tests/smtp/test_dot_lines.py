"""find_dot_line (smtp/_data.py): the search for a line that starts with a dot, which the
DATA reader (the end of the data, stuffed dots, RFC 5321 4.1.1.4 and 4.5.2) and the
outbound DotStuffer share. It looks for single dots first and takes windows of the
content with the substring search (issue 15); whatever the windows, it must find exactly
what ``bytes.find(b"\\r\\n.", start)`` finds, or a smuggled end of data could slip through
(CVE-2023-51764 and kin)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings, strategies as st

from relaywarden.smtp import _data
from relaywarden.smtp._data import BareLineEnds, DataReader, find_dot_line
from relaywarden.smtp.client import DotStuffer

_PIECES = [b"X", b"XXXXXXXX", b"\r\n", b"\r", b"\n", b".", b"\r\n.", b"..", b"\r\n.\r\n"]
#: 1 and 2: windows of nothing or one octet; the default is in the list too.
_WINDOWS = [1, 2, 3, 5, 17, _data._WINDOW]

content = st.lists(st.sampled_from(_PIECES), max_size=80).map(b"".join)


@contextlib.contextmanager
def window(size: int):
    old, _data._WINDOW = _data._WINDOW, size
    try:
        yield
    finally:
        _data._WINDOW = old


@given(data=content, start=st.integers(0, 400), size=st.sampled_from(_WINDOWS))
@settings(max_examples=3000, deadline=None)
def test_it_finds_what_the_substring_search_finds(data, start, size):
    with window(size):
        assert find_dot_line(data, start) == data.find(b"\r\n.", start)


def test_a_real_shaped_message_header_dots_then_base64_then_text():
    header = b"".join(b"Received: from mx%d.example.net (mx%d.example.net [192.0.2.%d])\r\n"
                      % (i, i, i) for i in range(40))
    base64 = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    text = b"A sentence. Another one.\r\n"
    for tail in (b"", b"\r\n.hidden\r\n", b"\r\n.\r\n"):
        data = header + b"\r\n" + base64 * 700 + text * 300 + tail + text * 10
        for start in (0, 1, len(header), len(data) // 2, len(data) - 40):
            assert find_dot_line(data, start) == data.find(b"\r\n.", start)


@given(data=content, cuts=st.lists(st.integers(0, 800), max_size=6),
       size=st.sampled_from(_WINDOWS))
@settings(max_examples=1000, deadline=None)
def test_dot_stuffing_in_any_chunks_is_stuffing_the_whole(data, cuts, size):
    """The stuffer, fed in chunks, sends what stuffing the content in one piece does: a dot
    more before every dot that starts a line (RFC 5321 4.5.2)."""
    cuts = sorted(c for c in cuts if c <= len(data))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    with window(size):
        stuffer = DotStuffer()
        sent = b"".join(stuffer.feed(c) for c in chunks)
    whole = (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
    assert sent == whole


#: Content without a bare CR or LF (the reader's checks of those are tested apart).
crlf_content = st.lists(st.sampled_from([p for p in _PIECES if p not in (b"\r", b"\n")]),
                        max_size=80).map(b"".join)


@given(data=crlf_content, cuts=st.lists(st.integers(0, 800), max_size=6),
       size=st.sampled_from(_WINDOWS))
@settings(max_examples=1000, deadline=None)
def test_the_reader_ends_the_data_at_the_first_crlf_dot_crlf(data, cuts, size):
    """What the DATA reader takes as the end, and as content, with any window and any
    segments: only <CRLF>.<CRLF> ends it (the data starts at a line start, RFC 5321
    4.1.1.4), and the dot that starts a line is removed (4.5.2)."""
    wire = data + b"\r\n.\r\n"
    end = (b"\r\n" + wire).find(b"\r\n.\r\n")       # in the data's own offsets: end - 2
    expected = (b"\r\n" + wire)[:end + 2].replace(b"\r\n.", b"\r\n")[2:]
    cuts = sorted(c for c in cuts if c <= len(wire))
    got, ended, buf = [], False, b""
    with window(size):
        reader = DataReader(mode=BareLineEnds.REJECT, max_line=0, max_size=0)
        for a, b in zip([0, *cuts], [*cuts, len(wire)]):
            buf += wire[a:b]
            out, used, ended = reader.scan(buf)
            got.append(out)
            consumed = len(wire[:b]) - len(buf) + used
            buf = buf[used:]
            if ended:
                break
    assert ended and consumed == end + 3
    assert reader.problem is None
    assert b"".join(got) == expected
