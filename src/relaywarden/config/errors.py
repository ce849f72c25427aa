"""What a config problem looks like: `ConfigError` and the `dotted.key` that names where it
is. Its own module so that the schema (which names keys in its warnings) and the loader
(which imports the schema) need not import each other."""

from __future__ import annotations

import re

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(Exception):
    """The config cannot be used; `messages` holds one `FILE: key: problem` line each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def dotted_key(loc: tuple[str | int, ...]) -> str:
    """('listeners', 'internal', 'relay', 'networks', 1) -> listeners.internal.relay.networks[1]

    Keys that are not TOML bare keys are quoted the TOML way: routes."example.com".next_hops.
    """
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
        text += f".{key}" if text else key
    return text or "(top level)"
