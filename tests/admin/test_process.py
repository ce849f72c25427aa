"""The admin process and the settings around it: throttling, session timeout, /metrics,
the config check, the lifeline, the history and the live log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.configs import BASIC
from support.relay import free_port, write_config

from .conftest import PASSWORD, problem, start_console


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A relay whose login throttle locks after 3 failures, whose sessions time out after
    2 s, and whose /metrics needs a token."""
    tmp = tmp_path_factory.mktemp("strict")
    (tmp / "metrics.token").write_text("scrape-me-please\n")
    c = start_console(tmp, extra="""
[auth.throttle]
delays = [0]
client_limit = 3
user_limit = 3
window = 60
lockout = 60
""", users={"ada": "admin", "sam": "viewer"}, admin_table="""
session_timeout = 2
metrics_token_file = "metrics.token"
""")
    yield c
    c.relay.stop()


def test_login_throttle(strict):
    c = httpx.Client(base_url=strict.base, timeout=15)
    for _ in range(2):
        problem(c.post("/api/v1/session", json={"username": "ada", "password": "guess"}), 401)
    r = c.post("/api/v1/session", json={"username": "ada", "password": "guess"})
    body = problem(r, 429)
    assert "too many" in body["detail"] and int(r.headers["retry-after"]) > 0
    # Locked: even the right password is refused now, for this client and this user.
    problem(c.post("/api/v1/session", json={"username": "ada", "password": PASSWORD}), 429)
    problem(c.post("/api/v1/session", json={"username": "sam", "password": PASSWORD}), 429)
    # API tokens are not logins: they still work.
    assert strict.bearer("ada").get("/api/v1/session").status_code == 200


def test_session_times_out(strict):
    # A throttle lock from the test above covers 127.0.0.1: log in from another loopback
    # address (the throttle counts per client address).
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    c = httpx.Client(base_url=strict.base, transport=transport, timeout=15)
    r = c.post("/api/v1/session", json={"username": "sam", "password": PASSWORD})
    if r.status_code == 429:
        pytest.fail("the user name is locked by the throttle test; use another user")
    assert r.status_code == 200, r.text
    # session_timeout = 2 (above): the idle timer is what this test is about.
    time.sleep(1.2)
    assert c.get("/api/v1/session").status_code == 200      # a request keeps it alive
    time.sleep(1.2)
    assert c.get("/api/v1/session").status_code == 200
    time.sleep(2.5)
    problem(c.get("/api/v1/session"), 401)


def test_metrics_token(strict, console):
    problem(httpx.get(f"{strict.base}/metrics"), 401)
    problem(httpx.get(f"{strict.base}/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    r = httpx.get(f"{strict.base}/metrics", headers={"Authorization": "Bearer scrape-me-please"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    # Without a token file: open to loopback clients.
    r = httpx.get(f"{console.base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_public_address_without_tls_is_a_config_error(tmp_path):
    port = free_port()
    config = write_config(tmp_path, BASIC + """
[admin]
enabled = true
address = "0.0.0.0"
""", main=port)
    for args in (["config", "check", str(config)], ["serve", "--config", str(config)]):
        proc = subprocess.run([sys.executable, "-m", "relaywarden", *args], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2, proc
        assert f"{config}: admin.address: 0.0.0.0 is not a loopback address" in proc.stderr


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_admin_process_exits_when_the_relay_is_killed(tmp_path):
    c = start_console(tmp_path, users={"ada": "admin"})
    try:
        admin = [pid for pid, cmd in _children(c.relay.proc.pid).items() if "admin-worker" in cmd]
        assert len(admin) == 1, _children(c.relay.proc.pid)
        assert c.bearer("ada").get("/api/v1/status").status_code == 200
        c.relay.proc.send_signal(signal.SIGKILL)
        c.relay.proc.wait()
        deadline = time.monotonic() + 15
        while not _gone(admin[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(admin[0]), "the admin process outlived its relay"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{c.base}/api/v1/openapi.json", timeout=2)
    finally:
        c.relay.stop(signal.SIGKILL)


def test_relay_stops_its_admin_process(tmp_path):
    """SIGTERM stops the admin process too, promptly, even with a live log view open."""
    import threading

    c = start_console(tmp_path, users={"ada": "admin"})
    admin = [pid for pid, cmd in _children(c.relay.proc.pid).items() if "admin-worker" in cmd]
    assert len(admin) == 1
    opened = threading.Event()

    def watch() -> None:
        try:
            with c.bearer("ada").stream("GET", "/api/v1/log/stream") as r:
                opened.set()
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert opened.wait(10)
    started = time.monotonic()
    assert c.relay.stop() == 0
    assert time.monotonic() - started < 8
    assert _gone(admin[0])
    thread.join(5)
    assert not thread.is_alive()       # the stream was ended by the server


# ------------------------------------------------------------------- history, live log


def test_history_search_and_timeline(console):
    tag = f"hist{time.time_ns()}"
    queue_id = console.send(f"someone@{tag}.example.net", subject=f"history {tag}")
    c = console.bearer("vera")
    deadline = time.monotonic() + 20
    items = []
    while time.monotonic() < deadline:
        r = c.get("/api/v1/history", params={"recipient": f"{tag}.example.net"})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if items:
            break
        time.sleep(0.3)
    assert [i["queue_id"] for i in items] == [queue_id]
    assert items[0]["subject"] == f"history {tag}"
    r = c.get(f"/api/v1/history/{queue_id}")
    assert r.status_code == 200, r.text
    timeline = r.json()
    assert timeline["queue_id"] == queue_id
    assert timeline["events"][0]["kind"] == "received"
    problem(c.get("/api/v1/history/NOSUCHID"), 404)
    problem(c.get("/api/v1/history", params={"status": "lost"}), 400, "status")
    problem(c.get("/api/v1/history", params={"limit": "0"}), 400, "limit")
    problem(c.get("/api/v1/history", params={"since": "yesterday-ish"}), 400, "since")
    problem(c.get("/api/v1/history", params={"before": "garbage"}), 400, "before")
    # An admin action shows up in the timeline with who did it.
    assert console.bearer("otto").post(f"/api/v1/queue/{queue_id}/hold").status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = c.get(f"/api/v1/history/{queue_id}").json()["events"]
        admin = [e for e in events if e["kind"] == "admin"]
        if admin:
            break
        time.sleep(0.3)
    assert admin and admin[0]["data"]["by"] == "otto" and admin[0]["data"]["action"] == "hold"


def test_log_stream(console):
    tag = f"stream{time.time_ns()}"
    lines: list[str] = []
    with httpx.Client(base_url=console.base, timeout=httpx.Timeout(15, read=15),
                      headers={"Authorization": f"Bearer {console.tokens['vera']}"}) as c:
        with c.stream("GET", "/api/v1/log/stream", params={"log": "mail"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            queue_id = console.send(f"a@{tag}.example.net")
            deadline = time.monotonic() + 12
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                if any(f"id={queue_id}" in x and "event=queued" in x for x in lines):
                    break
                if time.monotonic() > deadline:
                    break
    assert any(f"id={queue_id}" in x and "event=queued" in x for x in lines), lines
    stamps = [x.split(" ", 1)[0] for x in lines]
    assert stamps == sorted(stamps)
    problem(console.bearer("vera").get("/api/v1/log/stream", params={"log": "secret"}), 400, "log")


def test_log_stream_protocol(console):
    import json

    lines: list[dict] = []
    with console.bearer("vera") as c:
        with c.stream("GET", "/api/v1/log/stream", params={"log": "protocol"},
                      timeout=httpx.Timeout(15, read=15)) as r:
            assert r.status_code == 200
            console.send("proto@example.net")
            deadline = time.monotonic() + 12
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(json.loads(line[6:]))
                if any(x.get("cs-method") == "QUIT" for x in lines) or time.monotonic() > deadline:
                    break
    methods = [x.get("cs-method") for x in lines]
    assert "EHLO" in methods and "QUIT" in methods, methods
    assert [x["ts"] for x in lines] == sorted(x["ts"] for x in lines)


def test_log_stream_outbound(console):
    """The outbound protocol log (outYYMMDD.jsonl) is a live series too: the attempt on the
    route's next hop (nothing listens on port 1: the CONNECT line with status 0) carries
    the queue ID."""
    import json

    lines: list[dict] = []
    with console.bearer("vera") as c:
        with c.stream("GET", "/api/v1/log/stream", params={"log": "outbound"},
                      timeout=httpx.Timeout(15, read=15)) as r:
            assert r.status_code == 200
            queue_id = console.send("out@secret.example")
            deadline = time.monotonic() + 12
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(json.loads(line[6:]))
                if any(x.get("x-queue-id") == queue_id for x in lines) or time.monotonic() > deadline:
                    break
    mine = [x for x in lines if x.get("x-queue-id") == queue_id]
    assert mine and mine[0]["cs-method"] == "CONNECT" and mine[0]["s-port"] == 1, lines


def test_log_tail_reorders_lines_of_two_writers(tmp_path):
    """Two processes flush their buffers a second apart: the file holds lines out of time
    order; the tail sends them in time order once they are 2 s old."""
    from relaywarden.admin.server import LogTail

    now = [1_800_000_000.0]
    path = tmp_path / "mail261204.log"
    path.write_text("2027-01-15T08:00:00.000Z event=connect old=1\n")
    tail = LogTail(tmp_path, "mail", clock=lambda: now[0])
    assert tail.poll() == []                     # starts at the end of the current file

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"

    t0 = now[0]
    with path.open("a") as f:        # writer B flushed first, then writer A's older lines
        f.write(f"{stamp(t0 - 0.2)} event=delivered who=B\n")
        f.write(f"{stamp(t0 - 0.9)} event=queued who=A1\n")
        f.write(f"{stamp(t0 - 0.5)} event=attempt who=A2\n")
        f.write(f"{stamp(t0 - 0.5)} event=attempt who=A3\n")
    assert tail.poll() == []                     # too young: a third writer may still flush
    now[0] = t0 + 1.55
    assert [line.split()[-1] for line in tail.poll()] == ["who=A1", "who=A2", "who=A3"]
    now[0] = t0 + 2.0
    assert [line.split()[-1] for line in tail.poll()] == ["who=B"]
    # Rotation: the rest of the old file, then the new file from its start.
    with path.open("a") as f:
        f.write(f"{stamp(t0 + 0.5)} event=queued who=C\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))     # older than the new file
    newer = tmp_path / "mail261205.log"
    newer.write_text(f"{stamp(t0 + 0.6)} event=queued who=D\n")
    now[0] = t0 + 5
    assert [line.split()[-1] for line in tail.poll()] == ["who=C"]
    assert [line.split()[-1] for line in tail.poll()] == ["who=D"]


def test_tls_console_sets_secure_cookie(tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "admin.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "admin.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    import ssl

    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    c = start_console(tmp_path, users={"ada": "admin"}, scheme="https", verify=trust, admin_table="""
cert_file = "admin.crt"
key_file = "admin.key"
""")
    try:
        r = httpx.post(f"{c.base}/api/v1/session", verify=trust,
                       json={"username": "ada", "password": PASSWORD})
        assert r.status_code == 200, r.text
        flags = {part.strip().lower() for part in r.headers["set-cookie"].split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict"} <= flags
        with pytest.raises(httpx.HTTPError):
            httpx.get(c.base.replace("https:", "http:") + "/api/v1/openapi.json", timeout=3)
    finally:
        c.relay.stop()


def test_sighup_reloads_the_admin_process(tmp_path):
    c = start_console(tmp_path, users={"ada": "admin"})
    try:
        v = c.bearer("ada")
        before = v.get("/api/v1/status").json()["config"]["loaded_at"]
        text = c.relay.config.read_text().replace('hostname = "relay.test"', 'hostname = "reloaded.test"')
        c.relay.config.write_text(text)
        c.relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cfg = v.get("/api/v1/config").json()
            if cfg["config"]["relay"]["hostname"] == "reloaded.test":
                break
            time.sleep(0.2)
        assert cfg["config"]["relay"]["hostname"] == "reloaded.test"
        assert cfg["loaded_at"] > before
        assert v.get("/api/v1/session").status_code == 200     # tokens and users still work
    finally:
        c.relay.stop()
