"""Console logins from LDAP: a directory group listed in admin.ldap_roles gives the role
(the highest one wins); a user in no listed group may not log in. Real slapd on loopback
(tests/ldapserver.py)."""

from __future__ import annotations

import httpx
import pytest

from ldapserver import LdapServer

from .conftest import problem, start_console


@pytest.fixture(scope="module")
def directory():
    with LdapServer(tls=False) as server:
        yield server


def test_ldap_groups_map_to_roles(tmp_path, directory):
    c = start_console(tmp_path, users={"ada": "admin"}, extra=f"""
[auth.ldap]
url = "{directory.url}"
mode = "bind"
user_dn_template = "uid={{user}},ou=people,dc=example,dc=test"
timeout = 3
""", admin_table="""
[admin.ldap_roles]
operator = ["scanners"]
admin = ["APPS"]
""")
    try:
        def login(user: str, password: str) -> httpx.Response:
            return httpx.post(f"{c.base}/api/v1/session",
                              json={"username": user, "password": password}, timeout=15)

        r = login("alice", "alice-pw")                 # in scanners
        assert r.status_code == 200, r.text
        assert (r.json()["user"], r.json()["role"]) == ("alice", "operator")
        r = login("carol", "carol-pw")                 # in scanners and apps: the higher role
        assert r.status_code == 200 and r.json()["role"] == "admin"
        problem(login("bob", "bob-pw"), 401)           # right password, no console group
        problem(login("alice", "wrong"), 401)
        # The session works like a local user's; the users file still works beside LDAP.
        session = httpx.Client(base_url=c.base, timeout=15)
        r = session.post("/api/v1/session", json={"username": "alice", "password": "alice-pw"})
        csrf = r.json()["csrf_token"]
        queue_id = c.send("ldap@example.net")
        r = session.post(f"/api/v1/queue/{queue_id}/hold", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        problem(session.post("/api/v1/queue/bulk", json={"action": "hold", "status": "queued"},
                             headers={"X-CSRF-Token": csrf}), 403)
        assert login("ada", "correct horse battery staple").json()["role"] == "admin"
    finally:
        c.relay.stop()
