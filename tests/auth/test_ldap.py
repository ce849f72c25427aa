"""LDAP AUTH against a real OpenLDAP slapd on loopback (tests/ldapserver.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from ldapserver import LdapServer
from relaywarden.auth import AUTH_INVALID, AUTH_TEMPORARY, Backend, ChainBackend
from relaywarden.auth.ldap import LdapBackend, LdapSettings, group_name_from_dn

BASE = "dc=example,dc=test"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"


@pytest.fixture(scope="module")
def ldap():
    with LdapServer() as server:
        yield server


def bind_settings(server, **kw) -> LdapSettings:
    return LdapSettings(**({"url": server.url, "mode": "bind",
                            "user_dn_template": f"uid={{user}},{PEOPLE}", "timeout": 3} | kw))


def search_settings(server, **kw) -> LdapSettings:
    return LdapSettings(**({"url": server.url, "mode": "search", "bind_dn": server.service_dn,
                            "bind_password": server.service_password, "search_base": PEOPLE,
                            "search_filter": "(uid={user})", "timeout": 3} | kw))


def verify(settings: LdapSettings, name: str, password: str):
    backend = LdapBackend(settings)
    try:
        return asyncio.run(backend.verify(name, password))
    finally:
        backend.close()


# -- bind mode ---------------------------------------------------------------------------

def test_bind_mode_ok_with_groups_from_memberof(ldap):
    r = verify(bind_settings(ldap), "alice", "alice-pw")
    assert r.ok and r.user == "alice" and r.groups == frozenset({"scanners"}) and r.backend == "ldap"
    r = verify(bind_settings(ldap), "carol", "carol-pw")
    assert r.groups == frozenset({"scanners", "apps"})
    r = verify(bind_settings(ldap), "bob", "bob-pw")
    assert r.ok and r.groups == frozenset()


def test_bind_mode_wrong_password_and_unknown_user(ldap):
    for name, pw in [("alice", "bob-pw"), ("alice", "ALICE-PW"), ("nobody", "alice-pw")]:
        r = verify(bind_settings(ldap), name, pw)
        assert not r.ok and not r.temporary, (name, r)
        assert r.reply == AUTH_INVALID


def test_empty_password_refused_before_any_bind(ldap):
    # RFC 4513 5.1.2: a DN with an empty password is an "unauthenticated bind".
    for settings in (bind_settings(ldap), search_settings(ldap)):
        r = verify(settings, "alice", "")
        assert (r.ok, r.temporary, r.detail) == (False, False, "empty password")


@pytest.mark.parametrize("name", [
    "*", "*)(uid=*", "alice)(uid=*", "alice*", "*)(|(uid=*", "alice,ou=people", "alice+cn=x",
    "uid=alice," + PEOPLE, "\\61lice", "alice\x00", " alice",
])
def test_injection_attempts_fail(ldap, name):
    for settings in (bind_settings(ldap), search_settings(ldap)):
        r = verify(settings, name, "alice-pw")
        assert not r.ok, (settings.mode, name, r)


def test_upn_template_refuses_metacharacters(ldap):
    # An AD-style template: the name is not in a DN, so metacharacters are refused outright.
    settings = bind_settings(ldap, user_dn_template="{user}@example.test")
    assert not settings.dn_template
    r = verify(settings, "*)(uid=*", "x")
    assert (r.ok, r.temporary, r.detail) == (False, False, "bad user name")


# -- search mode -------------------------------------------------------------------------

def test_search_mode_groups_from_memberof(ldap):
    r = verify(search_settings(ldap), "carol", "carol-pw")
    assert r.ok and r.groups == frozenset({"scanners", "apps"})
    assert r.detail == f"uid=carol,{PEOPLE}"


def test_search_mode_groups_from_group_search(ldap):
    settings = search_settings(ldap, group_attribute=None, group_search_base=GROUPS,
                               group_filter="(&(objectClass=groupOfNames)(member={dn}))")
    assert verify(settings, "alice", "alice-pw").groups == frozenset({"scanners"})
    assert verify(settings, "bob", "bob-pw").groups == frozenset()


def test_search_mode_failures(ldap):
    r = verify(search_settings(ldap), "alice", "wrong")
    assert not r.ok and not r.temporary
    r = verify(search_settings(ldap), "nobody", "x")
    assert (r.ok, r.temporary, r.detail) == (False, False, "no such user")
    # A filter that matches several entries must not pick one of them.
    r = verify(search_settings(ldap, search_filter="(|(uid={user})(objectClass=inetOrgPerson))"),
               "alice", "alice-pw")
    assert not r.ok and "more than one" in r.detail


def test_search_mode_bad_service_password_is_temporary(ldap):
    # Our configuration is wrong, not the user's password: 454, and the log says why.
    r = verify(search_settings(ldap, bind_password="not-it"), "alice", "alice-pw")
    assert not r.ok and r.temporary and "service account" in r.detail


# -- the directory unavailable -----------------------------------------------------------

def test_connection_refused_is_temporary():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    settings = LdapSettings(url=f"ldap://127.0.0.1:{port}", user_dn_template=f"uid={{user}},{PEOPLE}",
                            timeout=2)
    r = verify(settings, "alice", "alice-pw")
    assert not r.ok and r.temporary and r.reply == AUTH_TEMPORARY


def test_silent_server_times_out_as_temporary():
    # A socket that accepts (the kernel's backlog) but never answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        settings = LdapSettings(url=f"ldap://127.0.0.1:{port}", user_dn_template=f"uid={{user}},{PEOPLE}",
                                timeout=0.5)
        t = time.monotonic()
        r = verify(settings, "alice", "alice-pw")
        assert not r.ok and r.temporary
        assert time.monotonic() - t < 5


def test_server_stopped_then_back():
    with LdapServer(tls=False) as server:
        settings = bind_settings(server, timeout=2)
        assert verify(settings, "alice", "alice-pw").ok
        server.stop()
        r = verify(settings, "alice", "alice-pw")
        assert not r.ok and r.temporary
        server.start()
        assert verify(settings, "alice", "alice-pw").ok


def test_one_backend_outlives_an_outage():
    """The relay keeps one backend for its whole life: after the directory was down and
    came back, the same backend must log users in again (ldap3 remembered the failed
    address as unavailable and refused it for good)."""
    with LdapServer(tls=False) as server:
        backend = LdapBackend(bind_settings(server, timeout=2))
        try:
            assert asyncio.run(backend.verify("alice", "alice-pw")).ok
            server.stop()
            r = asyncio.run(backend.verify("alice", "alice-pw"))
            assert not r.ok and r.temporary
            server.start()
            assert asyncio.run(backend.verify("alice", "alice-pw")).ok
        finally:
            backend.close()


def test_event_loop_keeps_running_while_ldap_hangs():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        settings = LdapSettings(url=f"ldap://127.0.0.1:{s.getsockname()[1]}",
                                user_dn_template=f"uid={{user}},{PEOPLE}", timeout=1)
        backend = LdapBackend(settings)

        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            task = asyncio.create_task(ticker())
            result = await backend.verify("alice", "alice-pw")
            task.cancel()
            return result, ticks

        result, ticks = asyncio.run(main())
        backend.close()
        assert result.temporary and ticks >= 10


# -- TLS ---------------------------------------------------------------------------------

def test_start_tls_with_trusted_ca(ldap):
    r = verify(bind_settings(ldap, start_tls=True, ca_file=ldap.ca_file), "alice", "alice-pw")
    assert r.ok and r.groups == frozenset({"scanners"})
    r = verify(bind_settings(ldap, start_tls=True, ca_file=ldap.ca_file), "alice", "nope")
    assert not r.ok and not r.temporary


def test_ldaps_with_trusted_ca(ldap):
    r = verify(search_settings(ldap, url=ldap.ldaps_url, ca_file=ldap.ca_file), "carol", "carol-pw")
    assert r.ok and r.groups == frozenset({"scanners", "apps"})


def test_untrusted_certificate_is_refused(ldap, tmp_path):
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    for settings in (bind_settings(ldap, start_tls=True, ca_file=str(other)),
                     bind_settings(ldap, url=ldap.ldaps_url, ca_file=str(other))):
        r = verify(settings, "alice", "alice-pw")
        assert not r.ok and r.temporary, r     # a TLS problem is ours to fix: 454, logged


# -- settings, helpers, chain ------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(url="http://x"), "url"),
    (dict(url="ldaps://h", start_tls=True, user_dn_template="uid={user}"), "start_tls"),
    (dict(url="ldap://h"), "user_dn_template"),
    (dict(url="ldap://h", user_dn_template="uid=alice"), "user_dn_template"),
    (dict(url="ldap://h", mode="search"), "search_base"),
    (dict(url="ldap://h", mode="search", search_base="dc=x", search_filter="(uid=x)"), "search_filter"),
    (dict(url="ldap://h", mode="search", search_base="dc=x", bind_dn="cn=svc"), "bind_password"),
    (dict(url="ldap://h", mode="other"), "mode"),
    (dict(url="ldap://h", user_dn_template="uid={user}", timeout=0), "timeout"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        LdapSettings(**kw)


def test_service_password_not_in_repr(ldap):
    settings = search_settings(ldap)
    assert ldap.service_password not in repr(settings)
    assert ldap.service_password not in repr(LdapBackend(settings))


@pytest.mark.parametrize("dn, name", [
    (f"cn=scanners,{GROUPS}", "scanners"),
    ("CN=Mail Relay Users,OU=Groups,DC=corp,DC=example", "Mail Relay Users"),
    ("cn=a\\,b,dc=x", "a,b"),
])
def test_group_name_from_dn(dn, name):
    assert group_name_from_dn(dn) == name


class FakeBackend:
    """A backend with a fixed answer and a record of calls (error injection, no mocks)."""

    def __init__(self, result):
        self.result, self.calls = result, []

    async def verify(self, name, password):
        self.calls.append(name)
        return self.result


def test_chain_file_then_ldap(ldap, tmp_path):
    from argon2 import PasswordHasher

    from relaywarden.auth.users import LocalBackend, UserFile

    users = UserFile(tmp_path / "users", hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users.add("scanner1", "scan-pw", groups=["scanners"])
    chain = ChainBackend([LocalBackend(users), LdapBackend(bind_settings(ldap))])
    assert isinstance(chain, Backend)
    run = lambda n, p: asyncio.run(chain.verify(n, p))  # noqa: E731
    assert run("scanner1", "scan-pw").backend == "file"
    r = run("alice", "alice-pw")
    assert r.ok and r.backend == "ldap" and r.groups == frozenset({"scanners"})
    r = run("alice", "wrong")
    assert not r.ok and not r.temporary


def test_chain_temporary_when_a_backend_could_not_answer():
    from relaywarden.auth import AuthResult

    down = FakeBackend(AuthResult.unavailable("down", backend="ldap"))
    no = FakeBackend(AuthResult.failure("no such user", backend="file"))
    r = asyncio.run(ChainBackend([no, down]).verify("x", "y"))
    assert not r.ok and r.temporary and "down" in r.detail
    yes = FakeBackend(AuthResult.success("x", backend="file"))
    after = FakeBackend(AuthResult.failure("never asked"))
    assert asyncio.run(ChainBackend([yes, after]).verify("x", "y")).ok and after.calls == []
