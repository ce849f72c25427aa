"""The TOML config: schema, loading (with `FILE: dotted.key: problem` errors), policy building."""

from relaywarden.config.build import build_policy, build_router
from relaywarden.config.load import ConfigError, load_config, parse_config
from relaywarden.config.schema import Config, config_warnings, parse_next_hop

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
