"""The API with hand-off (delivery.handoff): a message on its first attempt is in the log,
not in the SQLite queue, and the API lists and shows it from there."""

from __future__ import annotations

import time

import pytest

from downstream import Downstream
from support.relay import free_port

from .conftest import start_console


@pytest.fixture
def slow(tmp_path):
    """A console whose relay hands off, and routes slow.example to a downstream server that
    holds its answer to the final dot back for a few seconds."""
    down = Downstream(free_port()).start()
    down.behaviour.data_delay = 4.0
    console = start_console(tmp_path, f"""
[delivery]
handoff = true
tls = "none"

[routes."slow.example"]
next_hops = ["[127.0.0.1]:{down.port}"]
""")
    yield console, down
    console.relay.stop()
    down.stop()


def test_a_message_on_its_first_attempt_is_listed_and_shown_by_the_api(slow):
    console, down = slow
    queued = console.send("user@example.net")             # to a closed port: deferred, indexed
    on_way = console.send("user@slow.example", subject="on its way")
    api = console.bearer("vera")
    deadline = time.monotonic() + 20
    while True:
        items = api.get("/api/v1/queue").json()["items"]
        ids = [m["id"] for m in items]
        if queued in ids and on_way in ids:
            break
        assert time.monotonic() < deadline, items
        time.sleep(0.05)
    item = next(m for m in items if m["id"] == on_way)
    assert item["handoff"] is True
    assert [(r["address"], r["status"]) for r in item["recipients"]] == [
        ("user@slow.example", "queued")]
    # Filters apply to it as to the index's messages; a page of one walks on to it.
    assert [m["id"] for m in api.get("/api/v1/queue", params={"domain": "slow.example"})
            .json()["items"]] == [on_way]
    assert api.get("/api/v1/queue", params={"status": "held"}).json()["items"] == []
    first = api.get("/api/v1/queue", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next"]
    second = api.get("/api/v1/queue", params={"limit": 1, "after": first["next"]}).json()
    assert {first["items"][0]["id"], second["items"][0]["id"]} == {queued, on_way}
    shown = api.get(f"/api/v1/queue/{on_way}").json()
    assert shown["handoff"] is True and ["Subject", "on its way"] in shown["headers"]
    down.wait_for(1, timeout=30)
    deadline = time.monotonic() + 20
    while on_way in [m["id"] for m in api.get("/api/v1/queue").json()["items"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
