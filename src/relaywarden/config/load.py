"""Load and validate a TOML config file.

Every problem becomes one line `FILE: dotted.key: what is wrong`, all of them at once
(an admin fixing a config should not have to run the check once per mistake). FILE is
the path as given on the command line, or "<default>" for the embedded default.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from relaywarden.config.errors import ConfigError, dotted_key
from relaywarden.config.schema import BASE_DIR, Config

DEFAULT_SOURCE = "<default>"

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _describe(error: Mapping[str, Any]) -> str:
    """pydantic's error -> our short "what is wrong" text."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing (required)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {_type_name(value)}"
    if kind == "list_type":
        return f"expected an array, got {_type_name(value)}"
    if kind in ("string_type", "str_type"):
        return f"expected a string, got {_type_name(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_type_name(value)} {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_type_name(value)} {value!r}"
    if kind == "greater_than_equal":
        return f"{value!r} is too small (minimum {ctx.get('ge')})"
    if kind == "less_than_equal":
        return f"{value!r} is too large (maximum {ctx.get('le')})"
    if kind == "too_short":
        return "must not be empty"
    return str(error["msg"])


def messages_from(exc: ValidationError, source: str) -> list[str]:
    messages: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "relaywarden_problems":
            for path, message in error["ctx"]["problems"]:
                messages.append(f"{source}: {dotted_key(loc + tuple(path))}: {message}")
        else:
            messages.append(f"{source}: {dotted_key(loc)}: {_describe(error)}")
    return messages


def parse_config(data: dict[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate already parsed TOML data (tests and `load_config` share this)."""
    try:
        cfg = Config.model_validate(data, context={BASE_DIR: base_dir})
    except ValidationError as exc:
        raise ConfigError(messages_from(exc, source)) from None
    cfg._source = source
    return cfg


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise ConfigError([f"{source}: {message}"]) from None
        line, column = position.groups()
        reason = message[: position.start()]
        raise ConfigError([f"{source}: line {line}: {reason} (column {column})"]) from None


def default_config_text() -> str:
    return resources.files("relaywarden.config").joinpath("default.toml").read_text("utf-8")


def load_config(path: Path | str | None) -> Config:
    """Load `path`, or the embedded default config when `path` is None.

    Relative paths in the file are resolved against the file's directory (the embedded
    default: the current directory), so the result does not depend on where the relay
    was started from.
    """
    if path is None:
        data = _parse_toml(default_config_text(), DEFAULT_SOURCE)
        return parse_config(data, source=DEFAULT_SOURCE, base_dir=Path.cwd())
    source = str(path)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        # utf-8-sig: Windows Notepad writes a byte order mark that TOML does not allow.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: cannot read: not UTF-8 text (byte {exc.start})"]) from None
    data = _parse_toml(text, source)
    return parse_config(data, source=source, base_dir=path.parent.absolute())
