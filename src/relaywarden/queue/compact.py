"""JSON for the queue's own records (the hand-off log's envelopes, the journal's rows).

``dumps(x)`` is ``json.dumps(x, separators=(",", ":"))`` and ``loads(s)`` is
``json.loads(s)``, the same text and the same values, with less of the json module's Python
around its C parts (issue 15: three encodings and two decodings per relayed message):

- ``json.JSONEncoder.encode`` makes a new C encoder, and a dict for circular references,
  on every call (5.5 us for a message's envelope); here one C encoder is made once and
  reused (2.9 us). It does not look for circular references: what is encoded here is made
  of dicts, lists and scalars built for the record, never a cycle (one would end in
  RecursionError, not in a loop).
- ``json.loads`` finds the text's encoding, then skips whitespace before and after the
  value with a regular expression; here the C scanner reads the value directly, and only
  text it does not take whole (whitespace around it, an error) goes to ``json.loads``, so
  errors are json's own.
"""

from __future__ import annotations

import json
import json.decoder
import json.encoder
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"))

# The arguments JSONEncoder.iterencode passes for _ENCODER's settings (ensure_ascii,
# allow_nan, no indent, unsorted keys), markers None: no circular check. None in a Python
# built without _json.
_make = getattr(json.encoder, "c_make_encoder", None)       # (not in the type stubs)
_c_encode = None if _make is None else _make(
    None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
    _ENCODER.key_separator, _ENCODER.item_separator, False, False, True)


def dumps(value: Any) -> str:
    if _c_encode is None:
        return _ENCODER.encode(value)
    return "".join(_c_encode(value, 0))


_scan = json.decoder.JSONDecoder().scan_once      # type: ignore[attr-defined]


def loads(data: str | bytes) -> Any:
    try:
        text = data.decode() if type(data) is bytes else data
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError):
        pass
    return json.loads(data)            # whitespace around the value, or json's own error
