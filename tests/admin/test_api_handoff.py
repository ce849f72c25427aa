"""The API with hand-off (delivery.handoff, the default): a message on its first attempt is
in the log, not in the SQLite queue; the API lists, shows and counts it from there.

A running delivery process takes a message out of the log within about a second (its
first attempt ends, or it goes into the index: HANDOFF_GRACE_SECONDS). To look at one that
stays there, the delivery process is stopped (SIGSTOP): mail then waits in the log as it
would while that process is down."""

from __future__ import annotations

import os
import re
import signal

import pytest

from downstream import Downstream
from support.relay import delivery_pid, free_port, until

from .conftest import problem, start_console


@pytest.fixture
def site(tmp_path):
    """A console whose relay routes fast.example to a downstream server and everything
    else to a closed port (deferred: into the index)."""
    down = Downstream(free_port()).start()
    console = start_console(tmp_path, f"""
[delivery]
tls = "none"

[routes."fast.example"]
next_hops = ["[127.0.0.1]:{down.port}"]
""")
    yield console, down
    console.relay.stop()
    down.stop()


def queued_recipients(api) -> float:
    text = api.get("/metrics").text
    found = re.search(r'^relaywarden_queue_recipients\{state="queued"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_message_in_the_log_is_listed_shown_and_counted_and_waits_for_an_action(site):
    console, down = site
    api = console.bearer("vera")
    operator = console.bearer("otto")
    queued = console.send("user@example.net")        # to a closed port: deferred, indexed
    until(lambda: [m for m in api.get("/api/v1/queue").json()["items"] if m["id"] == queued
                   and not m.get("handoff") and m["recipients"][0]["attempts"] == 1])
    pid = delivery_pid(console.relay.proc.pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        on_way = console.send("user@fast.example", subject="on its way")
        items = until(lambda: api.get("/api/v1/queue").json()["items"],
                      lambda items: on_way in [m["id"] for m in items])
        item = next(m for m in items if m["id"] == on_way)
        assert item["handoff"] is True
        assert [(r["address"], r["status"]) for r in item["recipients"]] == [
            ("user@fast.example", "queued")]
        # Filters apply to it as to the index's messages; a page of one walks on to it.
        assert [m["id"] for m in api.get("/api/v1/queue", params={"domain": "fast.example"})
                .json()["items"]] == [on_way]
        assert api.get("/api/v1/queue", params={"status": "held"}).json()["items"] == []
        first = api.get("/api/v1/queue", params={"limit": 1}).json()
        assert len(first["items"]) == 1 and first["next"]
        second = api.get("/api/v1/queue", params={"limit": 1, "after": first["next"]}).json()
        assert {first["items"][0]["id"], second["items"][0]["id"]} == {queued, on_way}
        shown = api.get(f"/api/v1/queue/{on_way}").json()
        assert shown["handoff"] is True and ["Subject", "on its way"] in shown["headers"]
        # Counted: the status page and the metrics see both waiting recipients.
        status = api.get("/api/v1/status").json()
        assert status["queue"]["by_state"]["queued"] == 2, status["queue"]
        assert queued_recipients(api) == 2
        # An action waits for the delivery process to put the message into the index; it
        # is stopped, so the answer is: not now, try again.
        r = operator.post(f"/api/v1/queue/{on_way}/hold")
        body = problem(r, 409)
        assert r.headers["retry-after"] == "5"
        assert "on its first attempt" in body["detail"], body
    finally:
        os.kill(pid, signal.SIGCONT)
    [got] = down.wait_for(1, timeout=30)
    assert got.recipients == ["user@fast.example"]
    until(lambda: [m["id"] for m in api.get("/api/v1/queue").json()["items"]],
          lambda ids: ids == [queued])
    assert queued_recipients(api) == 1
