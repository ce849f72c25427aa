"""Which next hops name a courier instead of an SMTP server (see delivery/courier.py).

The names live here, apart from the couriers themselves, so that reading a config can tell
"graph:m365" from "smtp.example.net:587" without importing delivery/: a courier's module is
imported only when a config uses its scheme (docs/architecture.md: config does not pull in
delivery).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["SCHEMES", "scheme_of", "split"]

#: scheme -> "module:attribute" of its CourierScheme (imported on first use).
SCHEMES: dict[str, str] = {
    "drop": "relaywarden.delivery.drop:SCHEME",      # IIS's Drop directory (issue 16)
    "graph": "relaywarden.delivery.graph:SCHEME",    # Microsoft Graph sendMail (issue 12)
}

# RFC 3986 3.1 scheme syntax; case-insensitive, kept lower case.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)


def split(text: str) -> tuple[str, str] | None:
    """("graph", "m365") for "graph:m365" when "graph" is a registered scheme, else None
    (the text is an SMTP next hop). "host:25" stays an SMTP next hop even if a scheme
    were called "host": a port is all digits, a courier's REST never is."""
    found = _SCHEME.fullmatch(text.strip())
    if found is None or found[1].lower() not in SCHEMES or found[2].isdigit():
        return None
    return found[1].lower(), found[2]


def scheme_of(name: str) -> Any:
    """The CourierScheme (delivery.courier) of a registered scheme; imports its module."""
    module, _, attribute = SCHEMES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
