"""The admin HTTP API over real HTTP against a running relay (docs/admin.md)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .conftest import PASSWORD, cli, problem


def _status(console, queue_id: str) -> list[str]:
    r = console.bearer("vera").get(f"/api/v1/queue/{queue_id}")
    assert r.status_code == 200, r.text
    return [rc["status"] for rc in r.json()["recipients"]]


def _wait_attempts(console, queue_id: str, n: int) -> None:
    """Until every recipient's attempt number n is over (its outcome recorded): no attempt
    holds them (a retry or flush during one names its lease instead, tests/test_lease.py)."""
    deadline = time.monotonic() + 20
    while True:
        r = console.bearer("vera").get(f"/api/v1/queue/{queue_id}")
        if all(rc["attempts"] >= n for rc in r.json()["recipients"]):
            return
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.05)


# ------------------------------------------------------------------- sessions and cookies


def test_login_logout_and_cookie_flags(console):
    c = httpx.Client(base_url=console.base, timeout=15)
    problem(c.post("/api/v1/session", json={"username": "ada", "password": "wrong"}), 401)
    problem(c.post("/api/v1/session", json={"username": "nobody", "password": PASSWORD}), 401)
    problem(c.get("/api/v1/session"), 401)
    r = c.post("/api/v1/session", json={"username": "ADA", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["user"], body["role"]) == ("ada", "admin")
    assert len(body["csrf_token"]) >= 32
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("rw_session=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags                  # plain HTTP on loopback
    assert c.get("/api/v1/session").json() == body
    # Logging out is a state change: it needs the CSRF token too.
    problem(c.delete("/api/v1/session"), 403)
    r = c.delete("/api/v1/session", headers={"X-CSRF-Token": body["csrf_token"]})
    assert r.status_code == 204
    problem(c.get("/api/v1/session"), 401)
    # The old cookie is dead on the server, not only in this client.
    stale = httpx.Client(base_url=console.base, cookies={"rw_session": cookie.split(";")[0].split("=", 1)[1]})
    problem(stale.get("/api/v1/queue"), 401)


def test_login_needs_fields(console):
    c = console.bearer()
    problem(c.post("/api/v1/session", json={"password": "x"}), 400, "username")
    problem(c.post("/api/v1/session", json={"username": "ada"}), 400, "password")
    problem(c.post("/api/v1/session", json={"username": 5, "password": "x"}), 400, "username")
    problem(c.post("/api/v1/session", content=b"{not json", headers={"Content-Type": "application/json"}),
            400, "body")
    problem(c.post("/api/v1/session", json=["ada", PASSWORD]), 400, "body")
    # A cross-site form can post text/plain without a preflight: only JSON is read.
    problem(c.post("/api/v1/session", content=json.dumps({"username": "ada", "password": PASSWORD}),
                   headers={"Content-Type": "text/plain"}), 415, "body")


def test_csrf(console):
    queue_id = console.send("someone@example.net")
    c, csrf = console.login("otto")
    problem(c.post(f"/api/v1/queue/{queue_id}/hold"), 403)
    problem(c.post(f"/api/v1/queue/{queue_id}/hold", headers={"X-CSRF-Token": "x" + csrf}), 403)
    other, other_csrf = console.login("otto")         # another session's token does not fit
    problem(c.post(f"/api/v1/queue/{queue_id}/hold", headers={"X-CSRF-Token": other_csrf}), 403)
    assert _status(console, queue_id) == ["queued"]
    r = c.post(f"/api/v1/queue/{queue_id}/hold", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert _status(console, queue_id) == ["held"]
    # A GET needs no token; an API token needs none either (no ambient credential).
    assert c.get("/api/v1/queue").status_code == 200
    r = console.bearer("otto").post(f"/api/v1/queue/{queue_id}/release")
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------- roles


ROLE_CASES = [
    # (method, path template, minimum role, body)
    ("GET", "/api/v1/queue", "viewer", None),
    ("GET", "/api/v1/queue/{id}", "viewer", None),
    ("GET", "/api/v1/queue/{id}/eml", "viewer", None),
    ("GET", "/api/v1/badmail", "viewer", None),
    ("GET", "/api/v1/status", "viewer", None),
    ("GET", "/api/v1/config", "viewer", None),
    ("POST", "/api/v1/explain", "viewer",
     {"listener": "main", "client": "127.0.0.1", "from": "a@example.com", "to": "b@example.com"}),
    ("POST", "/api/v1/queue/{id}/hold", "operator", None),
    ("POST", "/api/v1/queue/{id}/retry", "operator", None),
    ("DELETE", "/api/v1/queue/{id}", "operator", None),
    ("POST", "/api/v1/queue/flush", "operator", {"domain": "nowhere.invalid"}),
    ("POST", "/api/v1/queue/bulk", "admin", {"action": "retry", "recipient": "nobody@nowhere.invalid"}),
]
RANK = {"viewer": 1, "operator": 2, "admin": 3}


@pytest.mark.parametrize("method,path,needed,body", ROLE_CASES,
                         ids=[f"{m} {p}" for m, p, _, _ in ROLE_CASES])
def test_permission_matrix(console, method, path, needed, body):
    queue_id = console.send("matrix@example.net")
    url = path.format(id=queue_id)
    problem(console.bearer().request(method, url, json=body), 401)
    problem(console.bearer(token="rwt_not-a-real-token").request(method, url, json=body), 401)
    for user, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        url = path.format(id=console.send("matrix@example.net"))     # a fresh one for each
        r = console.bearer(user).request(method, url, json=body)
        if RANK[role] >= RANK[needed]:
            assert r.status_code == 200, (user, r.status_code, r.text)
        else:
            assert "needs the" in problem(r, 403)["detail"]
    # The same with a cookie session (and its CSRF token) for the lowest role allowed.
    user = {"viewer": "vera", "operator": "otto", "admin": "ada"}[needed]
    queue_id = console.send("matrix2@example.net")
    c, csrf = console.login(user)
    r = c.request(method, path.format(id=queue_id), json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------- problems


def test_problem_details(console):
    c = console.bearer("ada")
    problem(c.get("/api/v1/queue", params={"limit": "0"}), 400, "limit")
    problem(c.get("/api/v1/queue", params={"limit": "ten"}), 400, "limit")
    problem(c.get("/api/v1/queue", params={"status": "lost"}), 400, "status")
    problem(c.get("/api/v1/queue", params={"after": "garbage"}), 400, "after")
    problem(c.get("/api/v1/stats", params={"window": "week"}), 400, "window")
    problem(c.delete("/api/v1/queue/X", params={"dsn": "maybe"}), 400, "dsn")
    problem(c.post("/api/v1/queue/bulk", json={"action": "explode", "status": "queued"}), 400, "action")
    problem(c.post("/api/v1/queue/bulk", json={"action": "hold"}), 400, "status")
    problem(c.post("/api/v1/queue/flush", json={"domain": 7}), 400, "domain")
    assert "no message" in problem(c.get("/api/v1/queue/NOSUCHID"), 404)["detail"]
    problem(c.get("/api/v1/queue/NOSUCHID/eml"), 404)
    problem(c.post("/api/v1/queue/NOSUCHID/hold"), 404)
    problem(c.get("/api/v1/badmail/NOSUCHID"), 404)
    problem(c.get("/api/v1/no/such/thing"), 404)
    # 409: an action that no longer applies.
    queue_id = console.send("conflict@example.net")
    problem(c.post(f"/api/v1/queue/{queue_id}/release"), 409)       # not held
    assert c.post(f"/api/v1/queue/{queue_id}/hold").status_code == 200
    problem(c.post(f"/api/v1/queue/{queue_id}/hold"), 409)          # already held
    problem(c.post(f"/api/v1/queue/{queue_id}/retry"), 409)         # held: nothing to retry
    problem(c.post(f"/api/v1/badmail/{queue_id}/release"), 409)     # nothing in badmail
    # 413: bodies over 64 KiB, declared or streamed without a length.
    big = json.dumps({"domain": "x" * (70 * 1024)})
    problem(c.post("/api/v1/queue/flush", content=big, headers={"Content-Type": "application/json"}), 413)

    def chunks():
        for _ in range(80):
            yield b" " * 1024
        yield b"{}"
    problem(c.post("/api/v1/explain", content=chunks(), headers={"Content-Type": "application/json"}), 413)
    # An exactly-fitting body is fine.
    body = json.dumps({"listener": "main", "client": "127.0.0.1", "from": "", "to": "a@example.com",
                       "name": ""}).encode()
    assert c.post("/api/v1/explain", content=body + b" " * (64 * 1024 - len(body)),
                  headers={"Content-Type": "application/json"}).status_code == 200


# ------------------------------------------------------------------- the queue


def test_queue_list_filters_and_keyset_pagination(console):
    tag = f"page{time.time_ns()}"
    ids = [console.send(f"{tag}-{i}@{tag}.example.net", sender=f"{tag}@sender{i % 2}.example")
           for i in range(5)]
    c = console.bearer("vera")
    seen, after, pages = [], None, 0
    while True:
        params = {"domain": f"{tag}.example.net", "limit": 2}
        if after:
            params["after"] = after
        r = c.get("/api/v1/queue", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert seen == ids and pages == 3
    item = c.get("/api/v1/queue", params={"recipient": f"{tag}-3@{tag}.example.net"}).json()["items"]
    assert [i["id"] for i in item] == [ids[3]]
    assert item[0]["recipients"][0]["status"] == "queued"
    assert item[0]["sender"] == f"{tag}@sender1.example"
    by_domain = c.get("/api/v1/queue", params={"sender": "sender0.example", "domain": f"{tag}.example.net"})
    assert [i["id"] for i in by_domain.json()["items"]] == [ids[0], ids[2], ids[4]]
    by_address = c.get("/api/v1/queue", params={"sender": f"{tag}@SENDER1.example"})
    assert [i["id"] for i in by_address.json()["items"]] == [ids[1], ids[3]]
    assert console.bearer("otto").post(f"/api/v1/queue/{ids[2]}/hold").status_code == 200
    held = c.get("/api/v1/queue", params={"status": "held", "domain": f"{tag}.example.net"}).json()
    assert [i["id"] for i in held["items"]] == [ids[2]] and held["next"] is None


def test_show_and_eml(console):
    queue_id = console.send("show@example.net", "show2@example.net", subject="Quarterly =?")
    c = console.bearer("vera")
    r = c.get(f"/api/v1/queue/{queue_id}")
    assert r.status_code == 200
    msg = r.json()
    assert msg["id"] == queue_id and msg["sender"] == "app@example.com"
    assert [rc["address"] for rc in msg["recipients"]] == ["show@example.net", "show2@example.net"]
    for rc in msg["recipients"]:
        assert {"status", "attempts", "next_attempt", "last_error", "remote_mta", "held_by"} <= set(rc)
    headers = dict(msg["headers"])
    assert headers["Subject"] == "Quarterly =?"
    assert "Received" in headers and headers["To"] == "show@example.net, show2@example.net"
    r = c.get(f"/api/v1/queue/{queue_id}/eml")
    assert r.status_code == 200
    assert r.headers["content-type"] == "message/rfc822"
    assert r.headers["content-disposition"] == f'attachment; filename="{queue_id}.eml"'
    assert r.content == console.relay.body(queue_id)
    assert b"Hello from the admin tests." in r.content


def test_hold_release_retry_delete_are_journaled_and_logged(console):
    queue_id = console.send("actions@example.net")
    _wait_attempts(console, queue_id, 1)
    c = console.bearer("otto")
    assert c.post(f"/api/v1/queue/{queue_id}/hold").json() == {"id": queue_id, "recipients": 1}
    assert _status(console, queue_id) == ["held"]
    assert console.bearer("vera").get(f"/api/v1/queue/{queue_id}").json()["recipients"][0]["held_by"] == "admin"
    assert c.post(f"/api/v1/queue/{queue_id}/release").json() == {"id": queue_id, "recipients": 1}
    assert _status(console, queue_id) == ["queued"]
    _wait_attempts(console, queue_id, 2)     # the one the release started (due at once)
    assert c.post(f"/api/v1/queue/{queue_id}/retry").json() == {"id": queue_id, "recipients": 1,
                                                               "leased": []}
    r = c.delete(f"/api/v1/queue/{queue_id}")
    assert r.status_code == 200 and r.json()["recipients"] == 1 and r.json()["dsn_id"] is None
    problem(console.bearer("vera").get(f"/api/v1/queue/{queue_id}"), 404)
    problem(c.delete(f"/api/v1/queue/{queue_id}"), 404)
    console.relay.flush_logs()
    log = console.mail_log()
    for action in ("hold", "release", "retry", "delete"):
        # Each action under its own event name (issue 14 item 10), with who made it.
        assert any(f"event={action} id={queue_id}" in line and "by=otto" in line
                   for line in log.splitlines()), (action, log[-2000:])


def test_delete_with_dsn_bounces_to_the_sender(console):
    queue_id = console.send("dsn@example.net", sender="owner@example.com")
    r = console.bearer("otto").delete(f"/api/v1/queue/{queue_id}", params={"dsn": "true"})
    assert r.status_code == 200, r.text
    dsn_id = r.json()["dsn_id"]
    assert dsn_id and r.json()["recipients"] == 1
    dsn = console.bearer("vera").get(f"/api/v1/queue/{dsn_id}").json()
    assert dsn["sender"] == "" and [rc["address"] for rc in dsn["recipients"]] == ["owner@example.com"]
    assert b"deleted by the administrator (otto)" in console.relay.body(dsn_id)


def test_flush_and_bulk(console):
    tag = f"bulk{time.time_ns()}"
    ids = [console.send(f"x{i}@{tag}.example.net") for i in range(3)]
    for i in ids:
        _wait_attempts(console, i, 1)
    r = console.bearer("otto").post("/api/v1/queue/flush", json={"domain": f"{tag}.example.net"})
    assert r.status_code == 200 and r.json() == {"recipients": 3, "leased": []}
    r = console.bearer("ada").post("/api/v1/queue/bulk", json={"action": "hold", "domain": f"{tag}.example.net"})
    assert r.json() == {"messages": 3, "recipients": 3}
    assert all(_status(console, i) == ["held"] for i in ids)
    # Nothing left to hold: the bulk action matches messages but changes none.
    r = console.bearer("ada").post("/api/v1/queue/bulk", json={"action": "hold", "domain": f"{tag}.example.net"})
    assert r.json() == {"messages": 0, "recipients": 0}
    r = console.bearer("ada").post("/api/v1/queue/bulk", json={"action": "delete", "status": "held",
                                                               "domain": f"{tag}.example.net"})
    assert r.json() == {"messages": 3, "recipients": 3}
    assert console.bearer("vera").get("/api/v1/queue", params={"domain": f"{tag}.example.net"}).json()["items"] == []


# ------------------------------------------------------------------- badmail


def test_badmail_show_release_delete(console):
    # The scanners group (127.0.0.3) may mail example.com only: gmail.com goes to badmail.
    first = console.send("someone@gmail.com", sender="scan@example.com", source="127.0.0.3")
    second = console.send("other@gmail.com", sender="scan@example.com", source="127.0.0.3")
    v = console.bearer("vera")
    listed = {item["id"]: item for item in v.get("/api/v1/badmail", params={"limit": 1000}).json()["items"]}
    assert first in listed and second in listed
    assert listed[first]["recipients"][0]["status"] == "badmail"
    msg = v.get(f"/api/v1/badmail/{first}").json()
    assert msg["recipients"][0]["rule"] == "groups.scanners.recipient_domains"
    assert "gmail.com" in msg["recipients"][0]["reason"]
    assert v.get(f"/api/v1/badmail/{first}/eml").content == console.relay.body(first)
    problem(v.post(f"/api/v1/badmail/{first}/release"), 403)
    o = console.bearer("otto")
    r = o.post(f"/api/v1/badmail/{first}/release")
    assert r.status_code == 200 and r.json() == {"id": first, "recipients": ["someone@gmail.com"]}
    assert _status(console, first) == ["queued"]
    problem(o.post(f"/api/v1/badmail/{first}/release"), 409)
    problem(v.get(f"/api/v1/badmail/{first}"), 404)        # no longer in badmail
    r = o.delete(f"/api/v1/badmail/{second}")
    assert r.status_code == 200 and r.json()["recipients"] == ["other@gmail.com"]
    problem(v.get(f"/api/v1/badmail/{second}"), 404)
    problem(o.delete(f"/api/v1/badmail/{second}"), 404)    # the message is gone
    console.relay.flush_logs()
    assert any(f"id={first}" in line and "event=badmail-release" in line and "by=otto" in line
               for line in console.mail_log().splitlines())


# ------------------------------------------------------------------- explain, config, status


def test_explain(console):
    c = console.bearer("vera")
    r = c.post("/api/v1/explain", json={"listener": "main", "client": "127.0.0.3",
                                        "from": "scan@example.com", "to": "me@gmail.com"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["connect"]["decision"] == "accept"
    assert body["sender"]["decision"] == "accept"
    assert body["recipient"] == {"decision": "badmail", "code": 250, "enhanced": "2.1.5",
                                 "rule": "groups.scanners.recipient_domains",
                                 "reason": body["recipient"]["reason"]}
    assert "recipient: badmail 250 2.1.5 (groups.scanners.recipient_domains)" in body["text"]
    denied = c.post("/api/v1/explain", json={"listener": "main", "client": "127.0.0.66",
                                             "from": "", "to": "me@example.com"}).json()
    assert denied["connect"]["decision"] == "reject" and denied["recipient"] is None
    problem(c.post("/api/v1/explain", json={"listener": "nope", "client": "127.0.0.1", "to": "a@b.c"}),
            400, "listener")
    problem(c.post("/api/v1/explain", json={"listener": "main", "client": "not-an-ip", "to": "a@b.c"}),
            400, "client")
    problem(c.post("/api/v1/explain", json={"listener": "main", "client": "127.0.0.1", "to": "a b@c"}),
            400, "to")
    problem(c.post("/api/v1/explain", json={"listener": "main", "client": "127.0.0.1"}), 400, "to")


def test_config_is_redacted(console):
    r = console.bearer("vera").get("/api/v1/config")
    assert r.status_code == 200
    assert "hunter2-route-secret" not in r.text
    cfg = r.json()["config"]
    assert cfg["routes"]["secret.example"]["password"] == "***"
    assert cfg["routes"]["secret.example"]["username"] == "relayuser"
    assert cfg["listeners"]["main"]["port"] == console.relay.port
    assert cfg["admin"]["enabled"] is True


def test_status(console):
    console.send("status@example.net")
    r = console.bearer("vera").get("/api/v1/status")
    assert r.status_code == 200
    s = r.json()
    assert s["listeners"][0]["name"] == "main" and s["listeners"][0]["port"] == console.relay.port
    assert s["disk"]["free_bytes"] > 0 and s["disk"]["min_free"] == 100_000_000
    assert s["queue"]["by_state"].get("queued", 0) >= 1
    assert s["queue"]["oldest_age"] >= 0
    assert s["config"]["path"] == str(console.relay.config)
    assert isinstance(s["delivery"]["in_flight"], int)
    for window in ("hour", "day"):
        r = console.bearer("vera").get("/api/v1/stats", params={"window": window})
        assert r.status_code == 200, r.text
        assert {"minutes", "received", "delivered", "deferred", "top_deferred"} <= set(r.json())


# ------------------------------------------------------------------- tokens and users


def test_bearer_tokens_and_revocation(tmp_path, console):
    config = str(console.relay.config)
    cli("admin-user", "add", "tok", "--role", "operator", "--config", config, "--password-stdin",
        stdin=PASSWORD + "\n")
    token = cli("admin-user", "token", "tok", "--config", config).stdout.strip()
    assert token.startswith("rwt_")
    assert token not in (console.relay.config.parent / "admin-users").read_text()   # only its hash
    c = console.bearer(token=token)
    r = c.get("/api/v1/session")
    assert r.json() == {"user": "tok", "role": "operator", "csrf_token": None}
    problem(console.bearer(token=token[:-1]).get("/api/v1/session"), 401)
    problem(httpx.get(f"{console.base}/api/v1/session", headers={"Authorization": f"Basic {token}"}), 401)
    listed = json.loads(cli("admin-user", "list", "--config", config, "--json").stdout)
    assert {"name": "tok", "role": "operator", "tokens": 1} in listed
    # A session of the same user ends when the user is removed; the token at revocation.
    session, _ = console.login("tok")
    assert cli("admin-user", "revoke-token", "tok", "--config", config).stdout.startswith("revoked 1")
    problem(c.get("/api/v1/session"), 401)
    assert session.get("/api/v1/session").status_code == 200
    cli("admin-user", "remove", "tok", "--config", config)
    problem(session.get("/api/v1/session"), 401)


def test_admin_user_cli(tmp_path):
    path = str(tmp_path / "users.json")
    cli("admin-user", "add", "bob", "--role", "viewer", "--file", path, "--password-stdin", stdin="pw1\n")
    dup = cli("admin-user", "add", "BOB", "--role", "admin", "--file", path, "--password-stdin",
              stdin="pw\n", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = cli("admin-user", "add", "b:ob", "--role", "admin", "--file", path, "--password-stdin",
              stdin="pw\n", check=False)
    assert bad.returncode == 2
    bad_role = cli("admin-user", "add", "carl", "--role", "root", "--file", path, "--password-stdin",
                   stdin="pw\n", check=False)
    assert bad_role.returncode == 2
    cli("admin-user", "passwd", "bob", "--role", "operator", "--file", path, "--password-stdin", stdin="pw2\n")
    from relaywarden.admin.accounts import AdminAccounts

    accounts = AdminAccounts(path)
    assert accounts.verify("bob", "pw1") is None
    assert accounts.verify("Bob", "pw2").role == "operator"
    assert "pw2" not in (tmp_path / "users.json").read_text()
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o600"
    assert cli("admin-user", "list", "--file", path).stdout.split() == ["bob", "operator"]
    missing = cli("admin-user", "token", "nobody", "--file", path, check=False)
    assert missing.returncode == 1 and "no such user" in missing.stderr
    cli("admin-user", "remove", "bob", "--file", path)
    assert cli("admin-user", "list", "--file", path).stdout.strip() == "no users"


# ------------------------------------------------------------------- console, openapi


def test_console_and_openapi(console):
    r = httpx.get(f"{console.base}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    doc = httpx.get(f"{console.base}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for method, path, _, _ in ROLE_CASES:
        assert (method, path) in paths
    for extra in [("DELETE", "/api/v1/session"), ("GET", "/api/v1/history/{id}"),
                  ("GET", "/api/v1/log/stream"), ("GET", "/metrics"),
                  ("POST", "/api/v1/badmail/{id}/release"), ("GET", "/api/v1/stats")]:
        assert extra in paths
