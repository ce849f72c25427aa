"""SMTP AUTH through real clients (smtplib, swaks): local users and a real LDAP server
(slapd), AUTH only over TLS, 538/535/454/530, brute-force throttling, relay rights and
directory groups of authenticated users, and no password in any log."""

from __future__ import annotations

import base64
import json
import shutil
import smtplib
import ssl
import subprocess
import sys
import time

import pytest
import trustme

from support.configs import HERMETIC
from support.relay import free_port, start_relay, write_config
from ldapserver import LdapServer

MSG = b"From: alice@example.com\r\nTo: x@gmail.test\r\nSubject: auth\r\n\r\nhello\r\n"
ALICE_PW = "correct horse battery"

CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[routes."branch.test"]
hold = true
etrn = true
next_hops = ["[127.0.0.1]:9"]

[auth]
users_file = "users"
{ldap}

[auth.throttle]
delays = [0]
client_limit = 3
user_limit = 50
window = 60
lockout = 60

[groups.scanners]
directory_groups = ["scanners"]
recipient_domains = ["example.com"]
on_violation = "badmail"

[listeners.sub]
address = "127.0.0.1"
port = {sub}
[listeners.sub.tls]
mode = "starttls"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.sub.auth]
enabled = true
required = true
[listeners.sub.relay]
networks = []
authenticated = true

[listeners.local]
address = "127.0.0.1"
port = {local}
[listeners.local.auth]
enabled = true
plaintext_networks = ["127.0.0.1/32"]
[listeners.local.relay]
networks = []
authenticated = true
"""


def user_add(users, name, password, *extra):
    out = subprocess.run([sys.executable, "-m", "relaywarden", "user", "add", name, "--file",
                          str(users), "--password-stdin", *extra], input=password + "\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


class Env:
    def __init__(self, tmp, ldap_url: str | None = None):
        ca = trustme.CA()
        cert = ca.issue_cert("relay.test", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp / "relay.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "relay.key"))
        self.client_ctx = ssl.create_default_context()
        ca.configure_trust(self.client_ctx)
        self.ca_file = tmp / "ca.pem"
        self.ca_file.write_bytes(ca.cert_pem.bytes())
        user_add(tmp / "users", "alice", ALICE_PW)
        self.ports = {"sub": free_port(), "local": free_port()}
        ldap = ""
        if ldap_url:
            ldap = (f'[auth.ldap]\nurl = "{ldap_url}"\nmode = "bind"\n'
                    'user_dn_template = "uid={user},ou=people,dc=example,dc=test"\ntimeout = 3\n')
        self.config = write_config(tmp, CONFIG.replace("{ldap}", ldap), **self.ports)
        self.relay = start_relay(self.config, tmp / "var", self.ports)

    def tls_session(self, source="127.0.0.1") -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.ports["sub"], source_address=(source, 0), timeout=15)
        c.ehlo("client.test")
        c.starttls(context=self.client_ctx)
        c.ehlo("client.test")
        return c


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.relay.stop()


def test_auth_is_offered_only_after_starttls_and_538_before(env):
    with smtplib.SMTP("127.0.0.1", env.ports["sub"], timeout=10) as c:
        c.ehlo("client.test")
        assert not c.has_extn("auth")
        code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0" + ALICE_PW.encode()).decode())
        assert (code, text[:6]) == (538, b"5.7.11")
        c.starttls(context=env.client_ctx)
        c.ehlo("client.test")
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_login_relays_and_logs_user_never_password(env, mechanism):
    with env.tls_session() as c:
        # submission listener: nothing before AUTH
        code, text = c.mail("alice@example.com")
        assert (code, text[:5]) == (530, b"5.7.0")
        c.rset()
        c.user, c.password = "alice", ALICE_PW
        method = {"PLAIN": c.auth_plain, "LOGIN": c.auth_login}[mechanism]
        code, text = c.auth(mechanism, method)
        assert code == 235
        assert c.sendmail("alice@example.com", ["x@gmail.test"], MSG) == {}
    [msg] = env.relay.messages()
    head = env.relay.body(msg["id"]).split(b"\r\n\r\n")[0].decode()
    assert "with ESMTPSA" in head
    env.relay.flush_logs()
    logs = "".join(p.read_text() for p in (env.relay.data_dir / "log").iterdir())
    assert ALICE_PW not in logs
    assert base64.b64encode(b"\0alice\0" + ALICE_PW.encode()).decode() not in logs
    w3c = [l.split() for l in env.relay.logs("ex", ".log").splitlines() if not l.startswith("#")]
    mail = [f for f in w3c if f[8] == "MAIL" and f[10] == "250"]
    assert mail and mail[0][3] == "alice"   # cs-username
    assert "event=auth" in env.relay.logs("mail", ".log")


def test_etrn_waits_for_auth_on_a_listener_that_requires_it(env):
    with env.tls_session() as c:
        assert c.docmd("ETRN", "branch.test") == (530, b"5.7.0 Authentication required")
        c.user, c.password = "alice", ALICE_PW
        assert c.auth("PLAIN", c.auth_plain)[0] == 235
        assert c.docmd("ETRN", "branch.test") == (
            251, b"2.0.0 OK, no messages waiting for node branch.test")


def test_wrong_password_535_then_lockout_454(env):
    with env.tls_session() as c:
        for _ in range(3):
            code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            assert (code, text[:5]) == (535, b"5.7.8")
        # locked: even the right password is not checked now
        code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0" + ALICE_PW.encode()).decode())
        assert (code, text[:5]) == (454, b"4.7.0")
    env.relay.flush_logs()
    assert env.relay.logs("mail", ".log").count("result=fail") == 4


def test_unauthenticated_client_cannot_relay(env):
    with smtplib.SMTP("127.0.0.1", env.ports["local"], timeout=10) as c:
        c.ehlo("x")
        c.mail("a@example.com")
        assert c.rcpt("x@gmail.test")[0] == 550


def test_plaintext_auth_for_listed_network_and_not_for_others(env):
    with smtplib.SMTP("127.0.0.1", env.ports["local"], timeout=10) as c:
        c.ehlo("x")
        assert "PLAIN" in c.esmtp_features["auth"]
        c.login("alice", ALICE_PW)
        assert c.sendmail("alice@example.com", ["x@gmail.test"], MSG) == {}
    with smtplib.SMTP("127.0.0.1", env.ports["local"], source_address=("127.0.0.2", 0),
                      timeout=10) as c:
        c.ehlo("x")
        assert not c.has_extn("auth")


def test_swaks_tls_auth(env):
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by scripts/test.sh"
    out = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{env.ports['sub']}", "--tls", "--tls-ca-path",
         str(env.ca_file), "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", ALICE_PW,
         "--from", "alice@example.com", "--to", "friend@gmail.test"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0" in out.stdout and "queued as" in out.stdout


def test_ldap_users_and_directory_groups(tmp_path):
    with LdapServer(tls=False) as ldap:
        e = Env(tmp_path, ldap.url)
        try:
            with e.tls_session() as c:
                c.login("bob", "bob-pw")           # a directory user without groups
                assert c.sendmail("bob@example.com", ["x@gmail.test"], MSG) == {}
            with e.tls_session() as c:
                code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob\0nope").decode())
                assert code == 535
                # empty password: an "unauthenticated bind" must never count as a login
                code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob\0").decode())
                assert code == 535
            with e.tls_session() as c:
                c.login("alice", "alice-pw")       # local file says another password: LDAP
                c.mail("alice@example.com")
                # alice is in the directory group "scanners": foreign mail goes to badmail
                assert c.rcpt("boss@example.com")[0] == 250
                assert c.rcpt("me@gmail.test")[0] == 250
                assert c.data(MSG)[0] == 250
            rows = e.relay.messages()
            scanner = [r for r in rows if any(x["address"] == "me@gmail.test" for x in r["recipients"])]
            states = {x["address"]: (x["status"], x["rule"]) for x in scanner[0]["recipients"]}
            assert states["me@gmail.test"] == ("badmail", "groups.scanners.recipient_domains")
            # the directory is down: 454, not 535 (a temporary failure is not a wrong password)
            ldap.stop()
            with e.tls_session() as c:
                code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0carol\0carol-pw").decode())
                assert (code, text[:5]) == (454, b"4.7.0")
            e.relay.flush_logs()
            [line] = [l for l in e.relay.logs("mail", ".log").splitlines() if "user=carol" in l]
            assert "code=454" in line and "Connection refused" in line and "locked" not in line
        finally:
            e.relay.stop()
