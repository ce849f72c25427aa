"""The courier seam (delivery.courier): a next hop "SCHEME:REST" of a registered scheme is
not an SMTP host; the config validates it through its scheme and the router gives the
route its courier (and no SMTP hops)."""

from __future__ import annotations

import pytest

from relaywarden.config import ConfigError, build_router, load_config
from relaywarden.delivery import courier

BASE = """
[listeners.main]
address = "127.0.0.1"
port = 2525
"""


class _Courier:
    def __init__(self, rest: str, route: str) -> None:
        self.label, self.route = f"test:{rest}", route

    async def deliver(self, message, body, recipients, route, context):  # pragma: no cover
        raise AssertionError("not called here")


class _Scheme:
    def parse(self, rest: str) -> str:
        if not rest.isalpha():
            raise ValueError(f"{rest!r} is not a test name")
        return rest.lower()

    def check(self, rest, cfg, settings):
        return [] if rest != "unknown" else [(("next_hops", 0), "no such thing")]

    def build(self, rest, cfg, settings, *, route):
        return _Courier(rest, route)


SCHEME = _Scheme()


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    monkeypatch.setitem(courier.SCHEMES, "test", f"{__name__}:SCHEME")


def _load(tmp_path, text):
    path = tmp_path / "relay.toml"
    path.write_text(BASE + text)
    return load_config(path)


def _errors(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return [m.split(": ", 1)[1] for m in info.value.messages]


def test_split_knows_only_registered_schemes():
    assert courier.split("test:abc") == ("test", "abc")
    assert courier.split("TEST:abc") == ("test", "abc")
    assert courier.split("test:25") is None             # a host "test" on port 25
    assert courier.split("other:abc") is None
    assert courier.split("smtp.example.net:587") is None


def test_route_with_a_courier_has_no_smtp_hops(tmp_path):
    cfg = _load(tmp_path, '[routes."*"]\nnext_hops = ["test:Alpha"]\n'
                '[routes."smtp.test"]\nnext_hops = ["smtp.example.net:587"]\n')
    assert cfg.routes["*"].next_hops == ["test:alpha"]
    router = build_router(cfg)
    route = router.route("example.org", sender="a@b.test", group=None, user=None)
    assert route.hops == () and route.sends
    assert (route.courier.label, route.courier.route) == ("test:alpha", 'routes."*"')
    other = router.route("smtp.test", sender="", group=None, user=None)
    assert other.courier is None and [str(h) for h in other.hops] == ["smtp.example.net:587"]


def test_courier_problems_name_the_key(tmp_path):
    assert _errors(tmp_path, '[routes."*"]\nnext_hops = ["test:a1"]\n') == [
        "routes.\"*\".next_hops[0]: 'a1' is not a test name"]
    assert _errors(tmp_path, '[routes."*"]\nnext_hops = ["test:unknown"]\n') == [
        'routes."*".next_hops[0]: no such thing']
    assert _errors(tmp_path, '[routes."*"]\nnext_hops = ["mx", "test:a"]\n') == [
        "routes.\"*\".next_hops[1]: 'test:a' must be the only next hop of its route"]
