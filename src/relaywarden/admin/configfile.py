"""The config every command uses: which file (--config, $RELAYWARDEN_CONFIG, the default
path, the embedded default) and loading it for a command (problems on stderr, exit 2)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from relaywarden.config import config_warnings
from relaywarden.config.load import ConfigError, load_config

#: Where the config is looked for when neither --config nor RELAYWARDEN_CONFIG names one.
DEFAULT_CONFIG = Path("/etc/relaywarden/relaywarden.toml")
CONFIG_HELP = (f"TOML config file (default: $RELAYWARDEN_CONFIG, else {DEFAULT_CONFIG} if it "
               "exists, else the embedded default config)")


def config_file(path: str | None) -> Path | None:
    """The config every command uses: --config, else $RELAYWARDEN_CONFIG, else the
    documented default path when it exists; None: the embedded default config. The same
    rule for the relay and the queue commands, so that both see one data directory."""
    if path:
        return Path(path)
    env = os.environ.get("RELAYWARDEN_CONFIG", "").strip()
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_config_or_exit(path: str | None):
    """The config `path` (or the default, see config_file) names; its problems on stderr and
    exit status 2 when it cannot be used; its warnings on stderr."""
    try:
        cfg = load_config(config_file(path))
    except ConfigError as exc:
        for msg in exc.messages:
            click.echo(msg, err=True)
        sys.exit(2)
    for warning in config_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
    return cfg
