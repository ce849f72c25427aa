"""SQLite parameters bound without the sqlite3 module's slow path (imported for its effect).

CPython 3.11's sqlite3 binds ``int``, ``float``, ``str`` and ``bytes`` directly; anything
else, ``None`` and ``bool`` included, goes through its adapter protocol (PEP 246): a look-up
in the adapter registry, then ``PrepareProtocol.__adapt__``, which a type does not have, so
the type's attribute hook formats an AttributeError only for it to be dropped, then
``__conform__``. Measured under callgrind, that was 5% of the admin process's
instructions per message (the history binds a ``None`` for every column a message does
not have; issue 15). A registered adapter is found by the first look-up and called.

Nothing bound changes: ``None`` is still bound as NULL (the adapter returns it, and the
module binds ``None`` with sqlite3_bind_null), ``True``/``False`` as the integers 1 and 0
(what the module made of them before). The registry is the process's, so every connection
gets this, whoever opened it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import cast

# ``{}.get``: a C function of one argument that returns None (no Python frame per value).
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))
sqlite3.register_adapter(bool, int)
