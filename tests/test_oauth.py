"""Issue 12: next-hop AUTH XOAUTH2 / OAUTHBEARER with OAuth2 tokens, through the real relay.

A real SMTP client sends to the relay process; the relay gets a token from a fake
Microsoft identity platform or Google token endpoint (HTTPS on 127.0.0.1, trustme
certificates: tests/oauthfake.py) with msal / google-auth, and delivers over STARTTLS to
an aiosmtpd next hop that accepts only tokens that platform issued. The relay process
runs with HTTPS_PROXY pointing at a closed loopback port and NO_PROXY=127.0.0.1: a request
of msal or google-auth to any other host (login.microsoftonline.com, ...) would fail, and
the fake records every request it got.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
import trustme

from support.cloud import CloudSetup, factory
from support.relay import free_port, start_relay, until
from downstream import Downstream
from oauthfake import TENANT, OAuthSMTP, rsa_key_pem
from relaywarden.oauth.tokens import read_state, write_atomic

PROVIDERS = {
    "secret": """
[oauth.m365]
kind = "microsoft"
tenant = "{tenant}"
client_id = "app-1"
client_secret_file = "m365.secret"
authority = "https://127.0.0.1:{idp}"
ca_file = "ca.pem"
""",
    "certificate": """
[oauth.m365]
kind = "microsoft"
tenant = "{tenant}"
client_id = "app-1"
certificate_file = "app.crt"
key_file = "app.key"
authority = "https://127.0.0.1:{idp}"
ca_file = "ca.pem"
""",
    "refresh": """
[oauth.m365]
kind = "microsoft"
flow = "refresh_token"
tenant = "{tenant}"
client_id = "app-1"
refresh_token_file = "m365.rt"
authority = "https://127.0.0.1:{idp}"
ca_file = "ca.pem"
""",
    "device": """
[oauth.m365]
kind = "microsoft"
flow = "refresh_token"
tenant = "{tenant}"
client_id = "app-1"
authority = "https://127.0.0.1:{idp}"
ca_file = "ca.pem"
""",
    "google_rt": """
[oauth.m365]
kind = "google"
flow = "refresh_token"
client_id = "g-client"
client_secret_file = "m365.secret"
refresh_token_file = "m365.rt"
token_uri = "https://127.0.0.1:{idp}/google/token"
ca_file = "ca.pem"
""",
    "google_login": """
[oauth.m365]
kind = "google"
flow = "refresh_token"
client_id = "g-client"
client_secret_file = "m365.secret"
auth_uri = "https://127.0.0.1:{idp}/google/auth"
token_uri = "https://127.0.0.1:{idp}/google/token"
ca_file = "ca.pem"
""",
    "google": """
[oauth.m365]
kind = "google"
service_account_file = "sa.json"
ca_file = "ca.pem"
""",
}

CONFIG = """
[relay]
hostname = "relay.test"

[delivery]
retry_schedule = [1]
connect_timeout = 2
command_timeout = 5
tls = "verify"
ca_file = "ca.pem"
max_concurrent = 50
per_destination = 10

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{hop}"]
auth = "{mechanism}"
oauth = "m365"
username = "scanner@contoso.test"

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""

MSG = b"From: scanner@contoso.test\r\nTo: x@example.net\r\nSubject: %s\r\n\r\nscan %s\r\n"


class Setup(CloudSetup):
    """A next hop that checks XOAUTH2/OAUTHBEARER tokens against the fake identity platform,
    with the provider kind and credentials of ``provider``."""

    def __init__(self, tmp_path: Path, monkeypatch, *, provider: str = "secret",
                 mechanism: str = "xoauth2", secret: str = "s3cret", extra: str = "",
                 idp_up: bool = True, hop_up: bool = True, hop_tls: bool = True) -> None:
        super().__init__(tmp_path, monkeypatch, secret=secret, idp_up=False)
        if provider == "certificate":
            cert = self.ca.issue_cert("app-1.contoso.test", key_type=trustme.KeyType.RSA)
            cert.private_key_pem.write_to_path(str(tmp_path / "app.key"))
            cert.cert_chain_pems[0].write_to_path(str(tmp_path / "app.crt"))
            self.idp.certificate_pem = cert.cert_chain_pems[0].bytes()
            self.idp.client_secret = None
        if provider in ("google_rt", "google_login"):
            (tmp_path / "m365.secret").write_text("g-secret\n")
        if provider in ("refresh", "google_rt"):
            (tmp_path / "m365.rt").write_text(self.idp.new_refresh_token() + "\n")
        if provider == "google":
            key, pem = rsa_key_pem()
            email = "relay@project.iam.gserviceaccount.com"
            self.idp.google_accounts[email] = key.public_key()
            (tmp_path / "sa.json").write_text(json.dumps({
                "type": "service_account", "project_id": "project", "private_key_id": "k1",
                "private_key": pem, "client_email": email, "client_id": "1",
                "token_uri": f"https://127.0.0.1:{self.idp.port}/google/token"}))
        if idp_up:
            self.idp.start()
        self.attempts = []
        smtp_class = type("Hop", (OAuthSMTP,), {"idp": self.idp, "attempts": self.attempts,
                                                "plaintext_auth": not hop_tls})
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(tls)
        tls = tls if hop_tls else None
        self.hop_port = free_port()
        self.hop = Downstream(self.hop_port, tls_context=tls, smtp_class=smtp_class)
        if hop_up:
            self.hop.start()
        self.start(PROVIDERS[provider] + CONFIG + extra, hop=self.hop_port,
                   mechanism=mechanism)

    def close(self) -> None:
        super().close()
        self.hop.stop()

    def send(self, n: int = 1, subject: str = "hello") -> list[str]:
        ids = []
        with smtplib.SMTP("127.0.0.1", self.ports["main"], timeout=30) as c:
            for i in range(n):
                c.ehlo("scanner.test")
                c.mail("scanner@contoso.test")
                assert c.rcpt("x@example.net")[0] == 250
                code, text = c.data(MSG % (f"{subject} {i}".encode(), str(i).encode()))
                assert code == 250, text
                ids.append(re.search(rb"queued as (\S+)", text).group(1).decode())
        return ids

    def queue(self) -> list[dict]:
        return self.relay.messages()

    def state(self) -> dict:
        return json.loads((self.data_dir / "oauth" / "m365.json").read_text())



@pytest.fixture
def make(tmp_path, monkeypatch):
    yield from factory(Setup, tmp_path, monkeypatch)


def _only_the_fake(s: Setup) -> None:
    """msal / google-auth asked the fake only for what it serves (no instance discovery)."""
    allowed = {f"GET /{TENANT}/v2.0/.well-known/openid-configuration",
               f"POST /{TENANT}/oauth2/v2.0/token", f"POST /{TENANT}/oauth2/v2.0/devicecode",
               "POST /google/token", "GET /google/auth"}
    assert set(s.idp.paths) <= allowed, s.idp.paths


@pytest.mark.parametrize("provider", ["secret", "certificate"])
def test_client_credentials_end_to_end(make, provider):
    """Client credentials (a secret, or a certificate's signed client assertion): the
    relay gets an app-only token and logs in to the next hop as the mailbox with
    XOAUTH2; the message arrives, sent by that mailbox."""
    s = make(provider=provider)
    s.send(1)
    got = s.hop.wait_for(1)
    assert got[0].login == "scanner@contoso.test"
    assert got[0].tls is not None
    assert [(a.mechanism, a.user, a.ok) for a in s.attempts] == [
        ("XOAUTH2", "scanner@contoso.test", True)]
    grants = s.idp.grants()
    assert [g["grant_type"] for g in grants] == ["client_credentials"]
    assert ("client_secret" in grants[0]) == (provider == "secret")
    assert ("client_assertion" in grants[0]) == (provider == "certificate")
    _only_the_fake(s)
    # The token is on disk, for the owner only, with its expiry.
    path = s.data_dir / "oauth" / "m365.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = s.state()
    assert saved["tokens"][""]["access_token"] == s.attempts[0].token
    assert saved["last_error"] is None


def test_oauthbearer_rfc7628(make):
    s = make(mechanism="oauthbearer")
    s.send(1)
    s.hop.wait_for(1)
    [attempt] = s.attempts
    assert (attempt.mechanism, attempt.user, attempt.ok) == ("OAUTHBEARER", "scanner@contoso.test", True)
    assert (attempt.host, attempt.port) == ("127.0.0.1", str(s.hop_port))


def test_google_service_account(make):
    """A Google service account acting as the route's mailbox (domain-wide delegation):
    the JWT bearer grant signed with the account's key, subject = the mailbox."""
    s = make(provider="google")
    s.send(1)
    got = s.hop.wait_for(1)
    assert got[0].login == "scanner@contoso.test"
    [grant] = s.idp.grants()
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert s.idp.issued[s.attempts[0].token].who == "scanner@contoso.test"
    _only_the_fake(s)


def test_refresh_token_rotation_saves_the_new_one(make):
    """flow = "refresh_token": the refresh token from refresh_token_file is redeemed, the
    platform rotates it (the old one is spent), and the new one is saved (0600) before the
    access token is used; the next refresh uses the new one."""
    s = make(provider="refresh")
    first_rt = (s.tmp / "m365.rt").read_text().strip()
    s.send(1)
    s.hop.wait_for(1)
    saved = s.state()
    assert saved["refresh_token"] != first_rt
    assert s.idp.refresh_tokens[saved["refresh_token"]] is True
    assert s.idp.refresh_tokens[first_rt] is False
    # A second refresh (the token `oauth test` gets in another process) must use the
    # rotated token: the spent one would get invalid_grant.
    result = s.cli("oauth", "test", "m365", "--refresh")
    assert result.returncode == 0, result.stderr
    rts = [g["refresh_token"] for g in s.idp.grants("refresh_token")]
    assert rts == [first_rt, saved["refresh_token"]]
    assert s.state()["refresh_token"] not in (first_rt, saved["refresh_token"])


def test_expired_token_one_refresh_for_many_waiting(make):
    """A token expires while 25 messages wait in the queue (the next hop was down); when
    they all go out at once, exactly one new token is asked for."""
    s = make(extra="")
    s.idp.expires_in = 3          # refresh_margin 300 > 3: the next use needs a new token
    s.send(1)
    s.hop.wait_for(1)
    assert len(s.idp.grants()) == 1
    s.hop.stop()
    s.idp.expires_in = 3600
    s.send(25)
    # All 25 waiting (each tried once and deferred), so that they go out together.
    until(s.last_errors, lambda errors: len(errors) == 25 and all(errors),
          what="not all 25 deferred")
    s.hop.start()
    s.hop.wait_for(26, timeout=40)
    assert len(s.idp.grants()) == 2, s.idp.grants()
    assert all(a.ok for a in s.attempts)


def test_wrong_secret_defers_naming_aadsts(make):
    """A wrong client secret: no bounce; the mail waits, and the deferral reason and the
    mail log name Entra ID's error, AADSTS7000215."""
    s = make(secret="not-the-secret")
    s.send(1)
    reason = s.wait_reason("AADSTS7000215")
    assert reason.startswith("4") and "oauth.m365" in reason
    assert "AADSTS7000215" in s.maillog()
    # Attempts go on (retry_schedule = [1]); none of them bounces it.
    until(s.maillog, lambda log: len(re.findall(r"event=deferred .*AADSTS7000215", log)) >= 3,
          step=0.2, what="no further attempts")
    rows = s.queue()
    assert rows and all(r["status"] not in ("bounced", "delivered") for m in rows
                        for r in m["recipients"])
    assert s.hop.messages == []
    _only_the_fake(s)


def test_token_endpoint_down_then_back(make):
    """The identity platform does not answer: the mail is deferred (4xx naming the
    provider), and delivered once it answers again."""
    s = make(idp_up=False)
    s.send(1)
    reason = s.wait_reason(r"oauth\.m365")
    assert reason.startswith("4")
    assert s.hop.messages == []
    s.idp.start()
    s.hop.wait_for(1, timeout=30)
    assert s.state()["last_error"] is None


def test_refused_token_refreshed_once_then_deferred(make):
    """The next hop refuses a token the platform still calls valid (revoked): one new token
    on a new connection; refused again, the mail is deferred (4xx), not bounced."""
    s = make()
    s.idp.check = lambda token, user: False       # the next hop refuses every token
    s.send(1)
    reason = s.wait_reason(r"refused a new token")
    assert reason.startswith("454 4.7.0")
    assert len(s.attempts) >= 2
    first, second = s.attempts[0], s.attempts[1]
    assert first.token != second.token
    assert len(s.idp.grants()) >= 2


def test_cli_status_and_test_smtp(make):
    """`oauth test NAME --smtp` gets a token and logs in to the route's next hop;
    `oauth status` shows the flow, the token's expiry, the last refresh and no error."""
    s = make()
    result = s.cli("oauth", "test", "m365", "--smtp")
    assert result.returncode == 0, result.stderr
    assert "oauth.m365: token ok" in result.stdout
    assert f'routes."*": [127.0.0.1]:{s.hop_port}: AUTH XOAUTH2 as scanner@contoso.test ok' in result.stdout
    assert [a.ok for a in s.attempts] == [True]
    status = s.cli("oauth", "status")
    assert status.returncode == 0, status.stderr
    assert "oauth.m365: microsoft, flow client_credentials" in status.stdout
    assert "last error:    -" in status.stdout
    assert re.search(r"token expires: \d{4}-\d\d-\d\d .* \(in \d+s\)", status.stdout)
    [line] = s.cli("oauth", "status", "--json").stdout.splitlines()
    assert json.loads(line)["token_expires"] > time.time() + 3000


def test_cli_test_names_the_error(make):
    s = make(secret="wrong")
    result = s.cli("oauth", "test", "m365")
    assert result.returncode == 1
    assert "oauth.m365: AADSTS7000215" in result.stderr
    status = s.cli("oauth", "status")
    assert "last error:    oauth.m365: AADSTS7000215" in status.stdout


def test_login_device_code_then_delivered(make):
    """flow = "refresh_token" without a refresh token: mail waits (naming the problem);
    `oauth login` runs the device code flow (prints the URL and code, waits through
    authorization_pending), stores the refresh token, and the waiting mail goes out."""
    s = make(provider="device")
    s.send(1)
    reason = s.wait_reason("no_refresh_token")
    assert "relaywarden oauth login m365" in reason
    result = s.cli("oauth", "login", "m365")
    assert result.returncode == 0, result.stderr
    assert "ABCD-EFGH" in result.stdout and f"{s.idp.base}/devicelogin" in result.stdout
    device_grants = s.idp.grants("urn:ietf:params:oauth:grant-type:device_code")
    assert len(device_grants) == 2          # one authorization_pending, then the tokens
    saved = s.state()
    assert s.idp.refresh_tokens[saved["refresh_token"]] is True
    assert stat.S_IMODE((s.data_dir / "oauth" / "m365.json").stat().st_mode) == 0o600
    s.hop.wait_for(1, timeout=30)
    _only_the_fake(s)


@pytest.mark.slow   # several retry rounds; test_revoked_refresh_token_defers_naming_the_code covers revocation
def test_revoked_refresh_token_one_notice_then_login_resumes(make, tmp_path):
    """A revoked refresh token (invalid_grant, AADSTS700082): the mail waits (three
    messages, several attempts each), the admin gets ONE notice (badmail.notify, as
    badmail's), and after `oauth login` the waiting mail is delivered."""
    admin = Downstream(free_port()).start()
    try:
        s = make(provider="refresh", extra=f"""
[badmail]
notify = "admin@admin.test"

[routes."admin.test"]
next_hops = ["[127.0.0.1]:{admin.port}"]
tls = "none"
""")
        for rt in list(s.idp.refresh_tokens):
            s.idp.refresh_tokens[rt] = False
        s.send(3)
        s.wait_reason("AADSTS700082")
        [notice] = admin.wait_for(1)
        # More attempts (retry_schedule = [1]): each message tried twice again after the
        # notice went out, and no more notices. A second one would be in the queue (its
        # delivery to the admin not yet done) or at the admin's server.
        deferred = len(re.findall(r"event=deferred .*AADSTS700082", s.maillog()))
        until(s.maillog, lambda log: len(re.findall(r"event=deferred .*AADSTS700082", log))
              >= deferred + 2 * 3, step=0.2, what="no further attempts")
        assert len(admin.messages) == 1
        assert not [m for m in s.queue() for r in m["recipients"]
                    if r["address"] == "admin@admin.test"]
        assert s.state()["revoked"]["noticed"] is True
        text = notice.content.decode()
        assert notice.sender == "" and notice.recipients == ["admin@admin.test"]
        assert "oauth.m365: refresh token no longer valid" in text and "AADSTS700082" in text
        assert "relaywarden oauth login m365" in text
        assert s.hop.messages == []
        assert all(r["status"] == "queued" for m in s.queue() for r in m["recipients"]
                   if r["address"] == "x@example.net")
        s.idp.device_polls = 0
        result = s.cli("oauth", "login", "m365")
        assert result.returncode == 0, result.stderr
        s.hop.wait_for(3, timeout=30)
        assert len(admin.messages) == 1
    finally:
        admin.stop()


def test_revoked_refresh_token_defers_naming_the_code(make):
    s = make(provider="refresh")
    for rt in list(s.idp.refresh_tokens):
        s.idp.refresh_tokens[rt] = False
    s.send(1)
    reason = s.wait_reason("AADSTS700082")
    assert reason.startswith("451 4.7.0") and "invalid_grant" in reason
    assert s.hop.messages == []


WRITER = """
import os, sys, json
from pathlib import Path
from relaywarden.oauth.tokens import write_atomic
path = Path(sys.argv[1])
i = 0
while True:
    i += 1
    write_atomic(path, json.dumps({"n": i, "refresh_token": "rt-%d" % i, "pad": "x" * 200000}).encode())
    if i == 1:
        print("ready", flush=True)
"""


def test_kill_9_while_writing_leaves_a_whole_token_file(tmp_path):
    """A process killed (SIGKILL) in the middle of saving tokens leaves the previous file
    or the new one, whole and readable: never a torn or empty one."""
    path = tmp_path / "oauth" / "m365.json"
    for round in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.03 * round)
        proc.kill()
        proc.wait()
        state = read_state(path)
        assert state["refresh_token"] == f"rt-{state['n']}" and len(state["pad"]) == 200000
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Temporary files of the killed writers may remain; they are never read.
    assert all(p.name.startswith(".m365.json.") for p in path.parent.iterdir() if p != path)


def test_write_atomic_replaces_and_restricts(tmp_path):
    path = tmp_path / "oauth" / "x.json"
    write_atomic(path, b'{"a": 1}')
    write_atomic(path, b'{"a": 2}')
    assert read_state(path) == {"a": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_no_token_over_plaintext(make):
    """A route with tls = "opportunistic" and a next hop that offers no STARTTLS but AUTH
    XOAUTH2 in plaintext: the token is never sent (nor even fetched); the mail waits."""
    s = make(hop_tls=False, extra="")
    text = s.config.read_text().replace('tls = "verify"', 'tls = "opportunistic"')
    s.relay.stop()
    s.config.write_text(text)
    s.relay = start_relay(s.config, s.data_dir, s.ports)
    s.send(1)
    reason = s.wait_reason("4.7.11")
    assert "TLS" in reason
    assert s.attempts == [] and s.idp.grants() == []
    assert s.hop.messages == []


def test_google_refresh_token(make):
    """kind = "google", flow = "refresh_token": the refresh token grant with the OAuth
    client's id and secret at the configured token_uri."""
    s = make(provider="google_rt")
    s.send(1)
    got = s.hop.wait_for(1)
    assert got[0].login == "scanner@contoso.test"
    [grant] = s.idp.grants()
    assert (grant["grant_type"], grant["client_id"]) == ("refresh_token", "g-client")
    assert grant["refresh_token"] == (s.tmp / "m365.rt").read_text().strip()
    _only_the_fake(s)


class _StubProvider:
    """A token source for the client alone: hands out "tok-1", then "tok-2", ..."""

    name = "stub"

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def token(self, user=None, *, stale=None):
        self.calls.append(stale)
        return f"tok-{len(self.calls)}"


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_client_sasl_encoding_and_one_retry(tmp_path, mechanism):
    """delivery/client.py alone: the SASL initial response (RFC 7628's saslname escapes
    "=" and ","), and a refused token: a new one (asked for as `stale` of the refused one)
    on a new connection, once."""
    import asyncio

    from relaywarden.delivery.client import ClientPolicy, DeliveryError, OutboundConnection, TlsMode
    from relaywarden.oauth import OAuthLogin

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    good = {"tok-2"}
    idp = type("Idp", (), {"check": lambda self, token, user: token in good})()
    attempts = []
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    port = free_port()
    hop = Downstream(port, tls_context=tls, smtp_class=type(
        "Hop", (OAuthSMTP,), {"idp": idp, "attempts": attempts})).start()
    provider = _StubProvider()
    user = "a=b,c@example.com"
    policy = ClientPolicy(helo="relay.test", tls=TlsMode.VERIFY, ca_file=str(ca_file),
                          server_name="127.0.0.1", username=user,
                          password=OAuthLogin(provider, mechanism), command_timeout=5)

    async def main():
        conn = await OutboundConnection.open("127.0.0.1", port, policy)
        mech = conn.auth_mechanism
        await conn.close()
        return mech

    try:
        assert asyncio.run(main()) == mechanism
        assert [(a.user, a.token, a.ok) for a in attempts] == [(user, "tok-1", False),
                                                               (user, "tok-2", True)]
        assert provider.calls == [None, "tok-1"]
        good.clear()                      # refused every time: one retry, then 454 4.7.0
        attempts.clear()
        with pytest.raises(DeliveryError) as info:
            asyncio.run(main())
        assert (info.value.reply.code, info.value.reply.enhanced) == (454, "4.7.0")
        assert info.value.stage == "auth" and len(attempts) == 2
    finally:
        hop.stop()


class GoogleLogin:
    """`relaywarden oauth login NAME` of a Google provider, running; and the browser: it
    opens the URL the CLI printed at the fake's authorization endpoint, which redirects
    (302) to the CLI's loopback redirect URI, and follows that redirect."""

    def __init__(self, s: Setup, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaywarden", "oauth", "login", "m365", "--config",
             str(s.config), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ))
        lines = []
        while True:
            line = self.proc.stdout.readline()
            assert line, f"no URL printed: {lines} {self.proc.stderr.read()}"
            lines.append(line)
            if line.startswith("https://"):
                self.url = line.strip()
                break
        self.browser = httpx.Client(verify=ssl.create_default_context(cafile=str(s.tmp / "ca.pem")),
                                    trust_env=False, timeout=10)

    def consent(self) -> str:
        """The authorization endpoint's answer: the redirect URI with code (or error) and state."""
        answer = self.browser.get(self.url)
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    def back(self, location: str) -> httpx.Response:
        assert location.startswith("http://127.0.0.1:")
        return self.browser.get(location)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=30)
        self.browser.close()
        return self.proc.returncode, out, err


def test_google_login_installed_app_then_delivered(make):
    """kind = "google", flow = "refresh_token" without a refresh token: mail waits; `oauth
    login` prints the authorization URL (offline access, consent, PKCE S256, state), the
    browser comes back to its 127.0.0.1 listener with a code, the code + code_verifier are
    exchanged for a refresh token, stored as the device code flow's, and the waiting mail
    goes out with XOAUTH2."""
    s = make(provider="google_login")
    s.send(1)
    assert "relaywarden oauth login m365" in s.wait_reason("no_refresh_token")
    login = GoogleLogin(s)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login.url).query))
    assert login.url.startswith(f"{s.idp.base}/google/auth?")
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    assert (query["client_id"], query["response_type"], query["scope"], query["access_type"],
            query["prompt"], query["code_challenge_method"]) == (
        "g-client", "code", "https://mail.google.com/", "offline", "consent", "S256")
    location = login.consent()
    # the browser's favicon request first: not the answer, the listener keeps waiting
    assert login.back(location.split("?")[0] + "favicon.ico").status_code == 404
    page = login.back(location)
    assert page.status_code == 200 and "Signed in" in page.text
    code, out, err = login.finish()
    assert code == 0, err
    assert "oauth.m365: signed in; refresh token stored in" in out
    [grant] = s.idp.grants("authorization_code")
    assert (grant["client_id"], grant["client_secret"]) == ("g-client", "g-secret")
    assert grant["redirect_uri"] == query["redirect_uri"] and len(grant["code_verifier"]) >= 43
    saved = s.state()
    assert s.idp.refresh_tokens[saved["refresh_token"]] is True
    assert saved["flow"] == "refresh_token" and saved["last_error"] is None
    assert stat.S_IMODE((s.data_dir / "oauth" / "m365.json").stat().st_mode) == 0o600
    got = s.hop.wait_for(1, timeout=30)
    assert got[0].login == "scanner@contoso.test"
    assert [(a.mechanism, a.ok) for a in s.attempts][-1] == ("XOAUTH2", True)
    # Later tokens come from the stored refresh token (the refresh token grant), as the
    # relay's refreshes do.
    result = s.cli("oauth", "test", "m365", "--refresh")
    assert result.returncode == 0, result.stderr
    [refresh] = s.idp.grants("refresh_token")
    assert refresh["refresh_token"] == saved["refresh_token"]
    _only_the_fake(s)


def test_google_login_wrong_state_refused(make):
    """A redirect whose state is not the one this login sent (RFC 6749 10.12, a forged
    redirect) is refused: no code exchange, nothing stored, exit 1 naming the provider."""
    s = make(provider="google_login")
    login = GoogleLogin(s)
    location = login.consent()
    forged = re.sub(r"state=[^&]+", "state=forged", location)
    assert forged != location
    page = login.back(forged)
    assert page.status_code == 400 and "state" in page.text
    code, out, err = login.finish()
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("relaywarden: oauth.m365: state_mismatch")
    assert s.idp.grants("authorization_code") == []
    assert "refresh_token" not in read_state(s.data_dir / "oauth" / "m365.json")


@pytest.mark.slow   # a fault variant of the Google login
def test_google_login_access_denied(make):
    """The user cancels on the consent screen: error=access_denied at the redirect."""
    s = make(provider="google_login")
    s.idp.google_deny = True
    login = GoogleLogin(s)
    location = login.consent()
    assert "error=access_denied" in location
    assert login.back(location).status_code == 400
    code, out, err = login.finish()
    assert code == 1
    assert err.strip().splitlines()[-1] == "relaywarden: oauth.m365: access_denied"
    assert s.idp.grants() == []


@pytest.mark.slow   # fault variants of the Google login
def test_google_login_invalid_grant_and_timeout(make):
    """A code the token endpoint refuses (expired, used): its invalid_grant; no browser
    coming back within --timeout: a timeout error. Both exit 1 naming the provider."""
    s = make(provider="google_login")
    login = GoogleLogin(s)
    location = login.consent()
    s.idp.google_codes.clear()              # the code expired meanwhile
    assert login.back(location).status_code == 200
    code, out, err = login.finish()
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "relaywarden: oauth.m365: invalid_grant: Malformed auth code.")
    assert "refresh_token" not in read_state(s.data_dir / "oauth" / "m365.json")

    login = GoogleLogin(s, "--timeout", "1")
    code, out, err = login.finish()
    assert code == 1
    assert re.search(r"^relaywarden: oauth.m365: timeout: no sign-in came back to "
                     r"http://127.0.0.1:\d+/ within 1s$", err.strip().splitlines()[-1])


def test_pkce_s256_rfc7636_appendix_b():
    from relaywarden.oauth.installed import pkce_pair, s256

    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    verifier, challenge = pkce_pair()
    assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", verifier) and challenge == s256(verifier)
    assert pkce_pair()[0] != verifier
