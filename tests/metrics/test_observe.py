"""The event -> metric mapping of relaywarden.metrics.observe, through the real mmap files
and the real exposition (parsed with prometheus-client's own parser)."""

from __future__ import annotations

import asyncio
import os
import timeit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaywarden import metrics
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.metrics import _events

E = MailEvent


@pytest.fixture
def mdir(tmp_path):
    metrics.setup(tmp_path, role="test", fresh=True)
    yield tmp_path
    _events.stop()


def scrape(data_dir) -> dict[tuple[str, tuple], float]:
    body, ctype = metrics.exposition(data_dir)
    assert ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def session(log, listener="main", client="10.0.0.1", *, tls=None, rejected=False):
    log.event(E.CONNECT, listener=listener, client=client, port=4000)
    if rejected:
        log.event(E.REJECT, stage="connect", listener=listener, client=client, code=554,
                  rule="access", reason="denied")
    log.event(E.DISCONNECT, listener=listener, client=client, messages=0, tls=tls)


def test_mail_log_hands_every_event_to_the_observer_with_the_file_on_or_off(tmp_path):
    from relaywarden.logs.files import RotatingFile, Rotation
    seen = []
    off = MailLog(None, observer=lambda event, fields: seen.append((event, dict(fields))))
    off.event(E.QUEUED, id="Q1", listener="main", user=None)
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=3)
    on = MailLog(f, observer=lambda event, fields: seen.append((event, dict(fields))))
    on.event(E.DELIVERED, id="Q1", to="a@b", ms=5)
    on.close()
    assert seen == [(E.QUEUED, {"id": "Q1", "listener": "main", "user": None}),
                    (E.DELIVERED, {"id": "Q1", "to": "a@b", "ms": 5})]
    [log] = tmp_path.glob("mail*.log")
    assert log.read_text().endswith("event=delivered id=Q1 to=a@b ms=5\n")


def test_connections_by_listener_and_result_and_tls(mdir):
    log = MailLog(None, observer=metrics.observe)
    session(log)
    session(log, tls="TLSv1.3")
    session(log, listener="sub", tls="TLSv1.2")
    session(log, client="10.0.0.66", rejected=True)
    # Notes before the session's own last line (timeout, internal error) do not count.
    log.event(E.CONNECT, listener="main", client="10.0.0.2", port=1)
    log.event(E.DISCONNECT, listener="main", client="10.0.0.2", reason="timeout",
              in_transaction=False)
    s = scrape(mdir)
    assert value(s, "relaywarden_connections_open", listener="main") == 1
    log.event(E.DISCONNECT, listener="main", client="10.0.0.2", messages=0, tls=None)
    s = scrape(mdir)
    assert value(s, "relaywarden_connections_total", listener="main", result="accepted") == 3
    assert value(s, "relaywarden_connections_total", listener="main", result="rejected") == 1
    assert value(s, "relaywarden_connections_total", listener="sub", result="accepted") == 1
    assert value(s, "relaywarden_connections_open", listener="main") == 0
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="connect",
                 code="554") == 1
    assert value(s, "relaywarden_tls_inbound_connections_total", listener="main",
                 version="TLSv1.3") == 1
    assert value(s, "relaywarden_tls_inbound_connections_total", listener="sub",
                 version="TLSv1.2") == 1


def test_rejects_received_quarantined_auth(mdir):
    log = MailLog(None, observer=metrics.observe)
    for _ in range(3):
        log.event(E.REJECT, stage="rcpt", listener="main", client="10.0.0.5", code=550,
                  rule="relay", reason="relay denied")
    log.event(E.REJECT, stage="mail", listener="main", client="10.0.0.5", code=452,
              rule="disk", reason="full")
    # A mail loop is answered 250 and kept in badmail: not a refusal.
    log.event(E.REJECT, stage="data", listener="main", client="10.0.0.5", id="Q1", code=554,
              rule="relay.max_hops", reason="loop", action="badmail")
    log.event(E.REJECT, stage="tls", listener="sub", client="10.0.0.5",
              reason="TLS handshake failed: x")
    log.event(E.QUEUED, id="Q0", listener="main", client="10.0.0.1", sender="a@b", to="c@d",
              size=10)
    log.event(E.BADMAIL, id="Q1", sender="a@b", to="x@y", rule="g", reason="r")
    log.event(E.BADMAIL, id="Q1", sender="a@b", to="z@y", rule="g", reason="r")
    log.event(E.QUEUED, id="Q1", listener="main", client="10.0.0.3", sender="a@b",
              to="x@y,z@y", size=10)
    log.event(E.QUEUED, id="Q2", listener="main", client="10.0.0.3", sender="a@b", to="c@d",
              size=10)
    log.event(E.QUEUED, id="D1", listener="-", sender="<>", to="a@b", size=10,
              reason="DSN for Q0")
    log.event(E.AUTH, listener="sub", client="10.0.0.1", mechanism="PLAIN", result="ok",
              code=235, detail="ok", user="alice")
    for _ in range(2):
        log.event(E.AUTH, listener="sub", client="10.0.0.1", mechanism="PLAIN",
                  result="fail", code=535, detail="refused", user="alice")
    s = scrape(mdir)
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="rcpt",
                 code="550") == 3
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="mail",
                 code="452") == 1
    assert value(s, "relaywarden_commands_rejected_total", listener="main", stage="data",
                 code="554") == 0
    assert value(s, "relaywarden_tls_inbound_handshake_failures_total", listener="sub") == 1
    assert value(s, "relaywarden_messages_received_total", listener="main") == 3
    assert value(s, "relaywarden_messages_received_total", listener="-") == 0
    assert value(s, "relaywarden_messages_quarantined_total", listener="main") == 1
    assert value(s, "relaywarden_auth_total", listener="sub", result="ok") == 1
    assert value(s, "relaywarden_auth_total", listener="sub", result="fail") == 2


def test_delivery_outcomes_latency_and_tls_out(mdir):
    log = MailLog(None, observer=metrics.observe)
    log.event(E.ATTEMPT, id="Q", route="smart", relay="h [1.2.3.4]:25", to="a@b")
    log.event(E.DELIVERED, id="Q", to="a@b", relay="h", route="smart",
              tls="TLSv1.3 TLS_AES_256_GCM_SHA384", reply="250 ok", ms=120)
    log.event(E.DELIVERED, id="Q", to="c@b", relay="h", route="smart", tls="none",
              reply="250 ok", ms=3000)
    log.event(E.DEFERRED, id="Q", to="d@b", relay="h", reply="451", attempts=1,
              route="smart", ms=40, next="2026-01-01T00:00:00Z")
    # Not recipient outcomes: a hop's failure, held recipients, a failed queue scan.
    log.event(E.DEFERRED, id="Q", relay="h", stage="connect", reply="451 timeout")
    log.event(E.DEFERRED, id="Q", to="e@b", route="smart", reason="held")
    log.event(E.DEFERRED, id="Q", to="e@b", relay="h", reply="451", attempts=1,
              route="hold", action="held")
    log.event(E.DEFERRED, error="queue scan failed: locked")
    log.event(E.BOUNCED, id="Q", to="f@b", relay="h", reply="550 no", route='routes."mx"',
              ms=700)
    log.event(E.BOUNCED, id="Q", to="g@b", relay="h", reply="550 no",
              route="sender_routes.apps")
    s = scrape(mdir)
    assert value(s, "relaywarden_recipients_delivered_total", route="smart") == 2
    assert value(s, "relaywarden_recipients_deferred_total", route="smart") == 1
    assert value(s, "relaywarden_recipients_deferred_total", route="hold") == 0
    assert value(s, "relaywarden_recipients_bounced_total", route="mx") == 1
    assert value(s, "relaywarden_recipients_bounced_total", route="sender_routes.apps") == 1
    assert value(s, "relaywarden_tls_outbound_recipients_total", route="smart",
                 version="TLSv1.3") == 1
    assert value(s, "relaywarden_tls_outbound_recipients_total", route="smart",
                 version="none") == 1
    h = "relaywarden_delivery_attempt_duration_seconds"
    assert value(s, h + "_count", outcome="delivered") == 2
    assert value(s, h + "_sum", outcome="delivered") == pytest.approx(3.12)
    assert value(s, h + "_bucket", outcome="delivered", le="0.25") == 1
    assert value(s, h + "_bucket", outcome="delivered", le="5.0") == 2
    assert value(s, h + "_count", outcome="deferred") == 1
    assert value(s, h + "_count", outcome="bounced") == 1


def test_in_flight_and_snapshot(mdir):
    async def run():
        async with metrics.in_flight("mx1.example.net"):
            with metrics.in_flight("mx1.example.net"):
                with metrics.in_flight("smart.example.net"):
                    snap = metrics.snapshot(mdir)
                    assert snap["delivery"]["in_flight"] == 3
                    assert snap["delivery"]["destinations"] == [
                        {"destination": "mx1.example.net", "in_flight": 2},
                        {"destination": "smart.example.net", "in_flight": 1}]
                    s = scrape(mdir)
                    assert value(s, "relaywarden_deliveries_in_flight",
                                 destination="mx1.example.net") == 2
            # An exception inside still gives the slot back.
            with pytest.raises(RuntimeError):
                async with metrics.in_flight("smart.example.net"):
                    raise RuntimeError("boom")
        snap = metrics.snapshot(mdir)
        assert snap["delivery"] == {"in_flight": 0, "destinations": []}
        # Destinations with nothing under way are left out of the exposition.
        assert not any(k[0] == "relaywarden_deliveries_in_flight" for k in scrape(mdir))

    asyncio.run(run())


def test_live_gauges_of_a_dead_process_are_dropped(mdir):
    log = MailLog(None, observer=metrics.observe)
    log.event(E.CONNECT, listener="main", client="10.0.0.1", port=1)
    assert metrics.snapshot(mdir)["listeners"] == {"main": 1}
    # What a killed process leaves behind: its live gauge file under a pid that is gone.
    pid = os.getpid()
    dead = 2 ** 22 + 12345   # above pid_max on common systems
    mdir_metrics = metrics.metrics_dir(mdir)
    for f in mdir_metrics.glob(f"gauge_livesum_{pid}.db"):
        (mdir_metrics / f"gauge_livesum_{dead}.db").write_bytes(f.read_bytes())
    assert metrics.snapshot(mdir)["listeners"] == {"main": 1}
    assert not (mdir_metrics / f"gauge_livesum_{dead}.db").exists()


def test_without_setup_observe_and_in_flight_do_nothing(tmp_path):
    assert not _events._HANDLERS
    metrics.observe(E.QUEUED, {"listener": "main", "id": "Q"})
    with metrics.in_flight("x"):
        pass
    assert not (tmp_path / "metrics").exists()
    body, _ = metrics.exposition(tmp_path)
    assert b"relaywarden_messages_received" not in body


def test_fresh_setup_wipes_counters_and_starts_a_new_epoch(tmp_path):
    metrics.setup(tmp_path, role="test", fresh=True)
    try:
        metrics.observe(E.QUEUED, {"listener": "main", "id": "Q"})
        epoch = (metrics.metrics_dir(tmp_path) / "epoch").read_text()
        assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                     listener="main") == 1
        _events.stop()
        metrics.setup(tmp_path, role="test")          # a child: keeps what is there
        assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                     listener="main") == 1
        assert (metrics.metrics_dir(tmp_path) / "epoch").read_text() == epoch
        _events.stop()
        metrics.setup(tmp_path, role="test", fresh=True)
        assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                     listener="main") == 0
        assert (metrics.metrics_dir(tmp_path) / "epoch").read_text() != epoch
    finally:
        _events.stop()


def test_a_broken_event_never_raises(mdir):
    log = MailLog(None, observer=metrics.observe)
    log.event(E.DELIVERED, id="Q", to="a@b", ms="not a number")   # the histogram fails
    log.event(E.QUEUED, id="Q", listener="main")
    assert value(scrape(mdir), "relaywarden_messages_received_total", listener="main") == 1


def test_in_a_process_with_a_loop_sums_are_written_once_a_second(tmp_path):
    async def run():
        metrics.setup(tmp_path, role="test", fresh=True)
        try:
            log = MailLog(None, observer=metrics.observe)
            for _ in range(3):
                log.event(E.QUEUED, id="Q", listener="main")
            # Not written yet: the hot path only adds to a dict.
            assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                         listener="main") == 0
            await asyncio.sleep(_events.FLUSH_SECONDS + 0.3)     # the flush timer under test
            assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                         listener="main") == 3
            log.event(E.QUEUED, id="Q", listener="main")
        finally:
            _events.stop()          # as at exit: what is pending is written
        assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                     listener="main") == 4

    asyncio.run(run())


def test_in_a_process_with_a_loop_in_flight_deliveries_are_written_by_the_flush(tmp_path):
    """The in-flight gauge is summed like the counters (no mmap write per transaction) and
    reaches the file with the next flush; a transaction that ended by then counts 0."""
    async def run():
        metrics.setup(tmp_path, role="test", fresh=True)
        try:
            async with metrics.in_flight("mx1.example.net"):
                async with metrics.in_flight("mx1.example.net"):
                    pass
                assert metrics.snapshot(tmp_path)["delivery"]["in_flight"] == 0  # not yet
                await asyncio.sleep(_events.FLUSH_SECONDS + 0.3)  # the flush timer under test
                assert metrics.snapshot(tmp_path)["delivery"] == {
                    "in_flight": 1,
                    "destinations": [{"destination": "mx1.example.net", "in_flight": 1}]}
        finally:
            _events.stop()          # as at exit: what is pending is written
        assert metrics.snapshot(tmp_path)["delivery"] == {"in_flight": 0, "destinations": []}

    asyncio.run(run())


def test_per_event_cost_is_a_few_microseconds(tmp_path):
    """The hot path as the relay runs it (a loop, so the flush is the timer's): MailLog.event
    with the file off, with and without the observer."""
    fields = {
        E.CONNECT: dict(listener="main", client="10.0.0.1", port=4000),
        E.DISCONNECT: dict(listener="main", client="10.0.0.1", messages=1, tls="TLSv1.3"),
        E.QUEUED: dict(id="Q", listener="main", client="10.0.0.1", helo="h", user=None,
                       sender="a@b", to="c@d", size=100, stripped=None),
        E.DELIVERED: dict(id="Q", to="a@b", relay="h", route='routes."x"', tls="TLSv1.3 X",
                          reply="250 ok", ms=12),
    }
    n = 20000
    costs = {}

    async def run():
        metrics.setup(tmp_path, role="test", fresh=True)
        try:
            log = MailLog(None, observer=metrics.observe)
            plain = MailLog(None)
            for event, f in fields.items():
                with_obs = min(timeit.repeat(lambda: log.event(event, **f), number=n,
                                             repeat=3)) / n
                without = min(timeit.repeat(lambda: plain.event(event, **f), number=n,
                                            repeat=3)) / n
                costs[event.value] = with_obs - without
        finally:
            _events.stop()

    asyncio.run(run())
    print("\nobserver cost per event: " + ", ".join(f"{k} {v * 1e6:.2f} us"
                                                    for k, v in costs.items()))
    # The counts arrived (the whole timing loop's worth), and each event stayed cheap.
    assert value(scrape(tmp_path), "relaywarden_messages_received_total",
                 listener="main") == 3 * n
    assert max(costs.values()) < 10e-6     # generous: 2 shared cores; measured ~1 us


def _samples(histogram) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in histogram.collect() for s in family.samples
            if not s.name.endswith("_created")}


@pytest.mark.parametrize("amounts", [
    [0.003, 0.05, 0.05000001, 0.1, 0.7, 2.5, 599.9, 600.0, 600.1, 1e9, 0.0, -1.0],
    [0.2] * 500,
    [],
])
def test_observations_written_per_bucket_count_as_one_observe_each(amounts):
    """The flush adds a batch of latencies to the histogram once per bucket (observe_many):
    the same buckets, count and sum as an observe() for each, bounds included."""
    from prometheus_client import Histogram
    one = Histogram("h_one", "one by one", registry=None, buckets=_events.LATENCY_BUCKETS)
    bulk = Histogram("h_bulk", "in bulk", registry=None, buckets=_events.LATENCY_BUCKETS)
    for a in amounts:
        one.observe(a)
    _events.observe_many(bulk, amounts)
    expected = {(n.replace("h_one", "h_bulk"), labels): v
                for (n, labels), v in _samples(one).items()}
    got = _samples(bulk)
    assert got.keys() == expected.keys()
    for key, v in expected.items():
        assert got[key] == pytest.approx(v), key


def test_a_histogram_without_the_known_insides_is_given_observe_calls():
    class Plain:
        def __init__(self):
            self.seen = []

        def observe(self, amount):
            self.seen.append(amount)

    plain = Plain()
    _events.observe_many(plain, [0.1, 5.0])
    assert plain.seen == [0.1, 5.0]
