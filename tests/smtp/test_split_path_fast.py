"""split_path's fast path (no quoted string before the first '>', issue 15) finds the same
path as the quote-aware scan it short-cuts, for any argument."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relaywarden.smtp.address import AddressError, split_path


def reference(text: str):
    """The quote-aware scan, as split_path did it for every argument before."""
    if not text.startswith("<"):
        return "no-brackets"
    quoted, i = False, 1
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            rest = text[i + 1:]
            if rest and not rest.startswith(" "):
                return "syntax"
            return text[: i + 1], rest.strip(" ")
        i += 1
    return "no-brackets"


def ours(text: str):
    try:
        return split_path(text)
    except AddressError as e:
        return "syntax" if "syntax" in str(e).lower() else "no-brackets"


@settings(max_examples=2000)
@given(st.text(alphabet='<>"\\ @a.=', max_size=24).map(lambda t: "<" + t)
       | st.text(alphabet='<>"\\ @a.=', max_size=24))
def test_fast_path_agrees_with_the_scan(text):
    assert ours(text) == reference(text)
