"""The reload table (relaywarden.config.reload): every setting of the schema is classified as
applied on reload or needing a restart, and `changes` sorts what differs between two
configs into the two (issue 14 item 4). The relay's own reload is tested in
tests/test_reload.py."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
import trustme
from pydantic import BaseModel

from relaywarden.config.load import parse_config
from relaywarden.config.reload import (APPLIED, IMPLICIT_TLS, RESTART, SETTINGS, TABLES,
                                       changes, classify)
from relaywarden.config.schema import Config


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()):
    """Every setting of a schema model as a dotted key; the entries of a table of named
    models (routes, listeners, ...) as ``*``."""
    for name, field in model.model_fields.items():
        yield from _of_type(field.annotation, path + (name,))


def _of_type(t, path):
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        yield from _of_type(args[0], path)
    elif origin in (typing.Union, types.UnionType) and any(
            isinstance(a, type) and issubclass(a, BaseModel) for a in args):
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                yield from _leaves(a, path)
    elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        assert path[-1] in TABLES, f"{'.'.join(path)}: a table of named entries not in TABLES"
        yield from _leaves(args[1], path + ("*",))
    elif isinstance(t, type) and issubclass(t, BaseModel):
        yield from _leaves(t, path)
    else:
        yield ".".join(path)


def test_every_setting_of_the_schema_is_classified():
    leaves = set(_leaves(Config))
    assert len(leaves) > 100           # the walk found the schema, not a fraction of it
    missing = sorted(leaves - set(SETTINGS))
    assert not missing, f"settings a reload does not classify (add them to SETTINGS): {missing}"
    stale = sorted(set(SETTINGS) - leaves)
    assert not stale, f"SETTINGS names settings the schema does not have: {stale}"
    assert set(SETTINGS.values()) <= {APPLIED, RESTART, IMPLICIT_TLS}


def test_the_walk_sees_a_new_setting():
    """The check above fails for a setting added without a classification: in a section,
    in a table's entries, in a new section."""
    from relaywarden.config import schema

    class Delivery(schema.DeliveryConfig):
        brand_new: int = 1

    class Listener(schema.ListenerConfig):
        also_new: bool = False

    class Bigger(Config):
        delivery: Delivery = Delivery()
        listeners: dict[str, Listener] = {}
        section: schema.HistoryConfig = schema.HistoryConfig()

    assert set(_leaves(Bigger)) - set(SETTINGS) == {
        "delivery.brand_new", "listeners.*.also_new", "section.enabled", "section.keep_days"}


def test_classify():
    assert classify("listeners.*.address") == RESTART
    assert classify("listeners.*.limits.window") == APPLIED
    assert classify("delivery.per_destination") == APPLIED
    assert classify("auth.ldap") == APPLIED            # a sub-table as a whole
    assert classify("auth.throttle") == RESTART
    with pytest.raises(KeyError):
        classify("delivery.no_such_setting")


BASE = {
    "relay": {"hostname": "relay.test", "data_dir": "var"},
    "delivery": {"per_destination": 1},
    "routes": {"example.com": {"next_hops": ["[127.0.0.1]:2526"]}},
    "listeners": {"main": {"address": "127.0.0.1", "port": 2525}},
}


def _cfg(tmp_path: Path, **sections) -> Config:
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, source="relay.toml", base_dir=tmp_path)


def test_changes_sorts_what_differs(tmp_path):
    old = _cfg(tmp_path)
    assert not changes(old, _cfg(tmp_path))
    new = _cfg(tmp_path, delivery={"per_destination": 3}, log={"keep": 5},
               relay={"min_free_space": 0},
               listeners={"main": {"address": "127.0.0.1", "port": 2599}},
               routes={"example.com": {"next_hops": ["[127.0.0.1]:2528"]},
                       "example.org": {"next_hops": ["[127.0.0.1]:2527"]}},
               auth={"throttle": {"lockout": 60}})
    c = changes(old, new)
    assert c.applied == ["routes.example.org", "delivery.per_destination",
                         "relay.min_free_space", "routes.example.com.next_hops"], c
    assert c.restart == ["auth.throttle.lockout", "listeners.main.port", "log.keep"], c


def test_a_listener_added_or_removed_needs_a_restart(tmp_path):
    old = _cfg(tmp_path)
    new = _cfg(tmp_path, listeners={"second": {"address": "127.0.0.1", "port": 2600}})
    assert changes(old, new).restart == ["listeners.second"]
    assert changes(new, old).restart == ["listeners.second"]
    assert changes(old, new).applied == []


@pytest.mark.parametrize("before, after, kind", [
    ("none", "starttls", "applied"), ("starttls", "required", "applied"),
    ("starttls", "implicit", "restart"), ("implicit", "none", "restart")])
def test_listener_tls_mode_needs_a_restart_only_to_or_from_implicit(tmp_path, before, after,
                                                                    kind):
    cert = trustme.CA().issue_cert("relay.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))

    def cfg(mode: str) -> Config:
        return _cfg(tmp_path, listeners={"main": {
            "address": "127.0.0.1", "port": 2525,
            "tls": {"mode": mode, "cert_file": "relay.crt", "key_file": "relay.key"}}})

    c = changes(cfg(before), cfg(after))
    assert (c.restart if kind == "restart" else c.applied) == ["listeners.main.tls.mode"], c
    assert (c.applied if kind == "restart" else c.restart) == [], c
