"""queue/compact.py: the queue's JSON is json's, text for text and value for value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywarden.queue import compact

_SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
            | st.floats(allow_nan=True, allow_infinity=True))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(st.text(), inner, max_size=5), max_leaves=20)


def _same(a, b) -> bool:
    """Equal, NaN included (NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=2000, deadline=None)
@given(_VALUES)
def test_dumps_writes_what_json_dumps_writes_and_loads_reads_it_back(value):
    text = compact.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert _same(compact.loads(text), json.loads(text))
    assert _same(compact.loads(text.encode()), json.loads(text))


@pytest.mark.parametrize("text", [' {"a":1}', '{"a":1} ', "\n[1,2]\n", '"x"', "1.5", "null"])
def test_loads_takes_whitespace_around_the_value_as_json_does(text):
    assert compact.loads(text) == json.loads(text)
    assert compact.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", '{"a":1}x', "[1,]", '{"a":1}{"b":2}', "nul",
                                  b"\xff\xfe", b'{"a":"\xff"}'])
def test_loads_refuses_what_json_refuses_with_its_error(text):
    with pytest.raises(ValueError) as ours:
        compact.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
