"""[oauth.NAME] providers and auth = "xoauth2" / "oauthbearer" on routes (issue 12): every
mistake is `file: dotted.key: problem`, and the provider files are checked at load (no
network): they exist and parse, and a key matches its certificate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relaywarden.config import ConfigError, build_router, load_config

BASE = """
[listeners.main]
address = "127.0.0.1"
port = 2525
"""

MS = """
[oauth.m365]
kind = "microsoft"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
"""

ROUTE = """
[routes."*"]
next_hops = ["smtp.office365.com:587"]
auth = "xoauth2"
oauth = "m365"
username = "scanner@contoso.com"
"""


def errors(tmp_path, text: str) -> list[str]:
    path = tmp_path / "relay.toml"
    path.write_text(BASE + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    prefix = f"{path}: "
    return [m.removeprefix(prefix) for m in info.value.messages]


def load(tmp_path, text: str):
    path = tmp_path / "relay.toml"
    path.write_text(BASE + text)
    return load_config(path)


def test_microsoft_with_secret_file_and_route(tmp_path):
    (tmp_path / "m365.secret").write_text("abc~secret\n")
    cfg = load(tmp_path, MS + 'client_secret_file = "m365.secret"\n' + ROUTE)
    p = cfg.oauth["m365"]
    assert (p.flow, p.authority, p.scopes) == ("client_credentials", "https://login.microsoftonline.com",
                                               ["https://outlook.office365.com/.default"])
    assert p.client_secret() == "abc~secret"
    route = build_router(cfg).route("example.net", sender="", group=None, user=None)
    assert route.username == "scanner@contoso.com"
    assert route.password.mechanism == "XOAUTH2" and route.password.provider.name == "m365"
    assert "secret" not in repr(route) and "secret" not in repr(route.password)


def test_microsoft_certificate_must_match_its_key(tmp_path):
    ca = trustme.CA()
    one = ca.issue_cert("one.test", key_type=trustme.KeyType.RSA)
    two = ca.issue_cert("two.test", key_type=trustme.KeyType.RSA)
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "app.crt"))
    two.private_key_pem.write_to_path(str(tmp_path / "app.key"))
    text = MS + 'certificate_file = "app.crt"\nkey_file = "app.key"\n'
    assert errors(tmp_path, text) == ["oauth.m365.key_file: does not match the certificate in app.crt"]
    one.private_key_pem.write_to_path(str(tmp_path / "app.key"))
    cert = load(tmp_path, text).oauth["m365"].certificate()
    assert len(cert.thumbprint) == 40
    (tmp_path / "app.crt").write_text("not a certificate")
    assert errors(tmp_path, text) == ["oauth.m365.certificate_file: not a PEM certificate"]


def test_service_account_file_checked(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    sa = {"type": "service_account", "client_email": "r@p.iam.gserviceaccount.com",
          "private_key": pem, "token_uri": "https://oauth2.googleapis.com/token"}
    (tmp_path / "sa.json").write_text(json.dumps(sa))
    text = '[oauth.g]\nkind = "google"\nservice_account_file = "sa.json"\n'
    p = load(tmp_path, text).oauth["g"]
    assert (p.flow, p.token_uri, p.scopes) == ("service_account", "https://oauth2.googleapis.com/token",
                                               ["https://mail.google.com/"])
    (tmp_path / "sa.json").write_text(json.dumps(dict(sa, type="authorized_user")))
    assert errors(tmp_path, text) == [
        'oauth.g.service_account_file: not a service account key file ("type": "service_account")']
    (tmp_path / "sa.json").write_text("{")
    assert errors(tmp_path, text)[0].startswith("oauth.g.service_account_file: not JSON")
    (tmp_path / "sa.json").unlink()
    assert errors(tmp_path, text) == [
        "oauth.g.service_account_file: 'sa.json' does not exist (relative paths start at the "
        "config file's directory)"]


def test_provider_mistakes(tmp_path):
    assert errors(tmp_path, MS) == [
        'oauth.m365.client_secret_file: missing: flow = "client_credentials" needs '
        "client_secret_file or certificate_file + key_file"]
    assert errors(tmp_path, '[oauth.g]\nkind = "google"\ntenant = "x"\nflow = "client_credentials"\n') == [
        'oauth.g.tenant: not used with kind = "google"',
        "oauth.g.flow: 'client_credentials' is not a google flow; use 'service_account' or 'refresh_token'"]
    assert errors(tmp_path, MS + 'flow = "refresh_token"\nauthority = "http://login.example"\n') == [
        "oauth.m365.authority: 'http://login.example' is not an https:// URL"]
    assert errors(tmp_path, '[oauth."a b"]\nkind = "google"\n')[0] == (
        "oauth.\"a b\": oauth provider name 'a b' may only use letters, digits, '_' and '-'")
    assert errors(tmp_path, '[oauth.x]\nkind = "yahoo"\n') == [
        "oauth.x.kind: 'yahoo' is not one of 'microsoft' or 'google'"]


def test_google_installed_app_auth_uri(tmp_path):
    """kind = "google", flow = "refresh_token": auth_uri (where `oauth login` sends the
    browser) defaults to Google's; an http:// one, or one on a flow or kind that never uses
    it, is an error naming the key."""
    (tmp_path / "g.secret").write_text("g-secret\n")
    google = '[oauth.g]\nkind = "google"\nflow = "refresh_token"\nclient_id = "c"\nclient_secret_file = "g.secret"\n'
    p = load(tmp_path, google).oauth["g"]
    assert (p.auth_uri, p.token_uri) == ("https://accounts.google.com/o/oauth2/auth",
                                         "https://oauth2.googleapis.com/token")
    p = load(tmp_path, google + 'auth_uri = "https://127.0.0.1:8443/auth"\n').oauth["g"]
    assert p.auth_uri == "https://127.0.0.1:8443/auth"
    assert errors(tmp_path, google + 'auth_uri = "http://127.0.0.1/auth"\n') == [
        "oauth.g.auth_uri: 'http://127.0.0.1/auth' is not an https:// URL"]
    assert errors(tmp_path, MS + 'client_secret_file = "g.secret"\nauth_uri = "https://a.test/"\n') == [
        'oauth.m365.auth_uri: not used with kind = "microsoft"']
    (tmp_path / "sa.json").write_text("{}")
    assert errors(tmp_path, '[oauth.g]\nkind = "google"\nservice_account_file = "sa.json"\n'
                  'auth_uri = "https://a.test/"\n') == [
        'oauth.g.auth_uri: not used with flow = "service_account"']
    assert load(tmp_path, MS + 'client_secret_file = "g.secret"\n').oauth["m365"].auth_uri is None


def test_route_mistakes(tmp_path):
    ms = MS + 'flow = "refresh_token"\n'
    assert errors(tmp_path, ms + ROUTE.replace('"m365"', '"m356"')) == [
        "routes.\"*\".oauth: unknown oauth provider 'm356' (providers: m365)"]
    assert errors(tmp_path, ms + ROUTE + 'tls = "none"\n') == [
        'routes."*".auth: "xoauth2" sends a bearer token: it needs TLS, and tls = "none"']
    assert errors(tmp_path, ms + '[delivery]\ntls = "none"\n' + ROUTE) == [
        'routes."*".auth: "xoauth2" sends a bearer token: it needs TLS, and tls = "none" (from delivery.tls)']
    assert errors(tmp_path, ms + ROUTE.replace('username = "scanner@contoso.com"', 'password = "x"')
                  + "auth_without_tls = true\n") == [
        'routes."*".username: missing (auth = "xoauth2" logs in as this mailbox)',
        'routes."*".password: not used with auth = "xoauth2" (the provider\'s token is the secret)',
        'routes."*".auth_without_tls: auth = "xoauth2" sends a bearer token: TLS only']
    assert errors(tmp_path, ms + '[sender_routes.apps]\nusers = ["a"]\nnext_hops = ["s.example:587"]\n'
                  'auth = "oauthbearer"\nusername = "a@b.c"\n') == [
        'sender_routes.apps.oauth: missing (auth = "oauthbearer" needs an [oauth.NAME] provider)']
    assert errors(tmp_path, ms + '[routes."*"]\nnext_hops = ["s.example:587"]\nauth = "password"\n'
                  'oauth = "m365"\n') == [
        'routes."*".oauth: needs auth = "xoauth2" or "oauthbearer" (auth is "password")']


def test_config_check_reports_without_network(tmp_path):
    """`relaywarden config check` runs the same checks (and contacts nobody: the authority
    is a closed loopback port that would fail any request)."""
    (tmp_path / "m365.secret").write_text("s\n")
    path = tmp_path / "relay.toml"
    path.write_text(BASE + MS + 'client_secret_file = "m365.secret"\nauthority = "https://127.0.0.1:1"\n' + ROUTE)
    ok = subprocess.run([sys.executable, "-m", "relaywarden", "config", "check", str(path)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "m365.secret").write_text("")
    bad = subprocess.run([sys.executable, "-m", "relaywarden", "config", "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert f"{path}: oauth.m365.client_secret_file: the first line (the password) is empty" in bad.stderr


def test_ec_key_refused(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("ec.test", key_type=trustme.KeyType.ECDSA)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "app.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "app.key"))
    assert errors(tmp_path, MS + 'certificate_file = "app.crt"\nkey_file = "app.key"\n') == [
        "oauth.m365.key_file: not an RSA key (Microsoft accepts RSA certificates only)"]
