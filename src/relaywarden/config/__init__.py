"""The TOML config: schema, loading (with `FILE: dotted.key: problem` errors), policy building.

Importing the package loads the schema and the loader only: `build_policy` and
`build_router` (config/build.py, which turns the config into policy/ and delivery/ objects)
are imported when first asked for, so that loading a config never imports delivery/
(docs/architecture.md).
"""

from typing import TYPE_CHECKING, Any

from relaywarden.config.errors import ConfigError
from relaywarden.config.load import load_config, parse_config
from relaywarden.config.schema import Config, config_warnings, parse_next_hop

if TYPE_CHECKING:
    from relaywarden.config.build import build_policy, build_router

__all__ = [
    "Config",
    "ConfigError",
    "build_policy",
    "build_router",
    "config_warnings",
    "load_config",
    "parse_config",
    "parse_next_hop",
]

_BUILDERS = ("build_policy", "build_router")


def __getattr__(name: str) -> Any:
    # PEP 562: `from relaywarden.config import build_router` still works, lazily.
    if name in _BUILDERS:
        from relaywarden.config import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
