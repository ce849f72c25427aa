"""`policy explain` (the CLI and POST /api/v1/explain) takes the listener's TLS and AUTH
gates into account, as the server does: a listener with tls.mode = "required" or
auth.required = true answers MAIL with 530 5.7.0, and explain says so, and says what
--tls / --user (the API's "tls" / "user") change. The last test holds explain to what a
real SMTP session gets from the running relay for the same inputs (issue 14 item 11)."""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import subprocess
import sys

import httpx
import pytest
import trustme

from support.configs import HERMETIC
from support.relay import free_port, start_relay, wait_admin, write_config

PASSWORD = "correct horse battery"

CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com"]
min_free_space = 0

[routes."example.com"]
next_hops = ["[127.0.0.1]:1"]

[auth]
users_file = "users"

[auth.throttle]
delays = [0]

# TLS before MAIL; AUTH offered (after STARTTLS), not required; relays for loopback.
[listeners.req]
address = "127.0.0.1"
port = {req}
[listeners.req.tls]
mode = "required"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.req.auth]
enabled = true
[listeners.req.relay]
networks = ["127.0.0.0/8"]

# A submission port: STARTTLS offered, AUTH before MAIL, relay for users only.
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

[admin]
enabled = true
address = "127.0.0.1"
port = {http}
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaywarden", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


class Env:
    def __init__(self, tmp):
        ca = trustme.CA()
        cert = ca.issue_cert("relay.test", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp / "relay.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "relay.key"))
        self.client_ctx = ssl.create_default_context()
        ca.configure_trust(self.client_ctx)
        self.ports = {"req": free_port(), "sub": free_port(), "http": free_port()}
        self.config = write_config(tmp, CONFIG, **self.ports)
        for args, stdin in (
            (("user", "add", "alice", "--file", str(tmp / "users"), "--password-stdin"), PASSWORD),
            (("admin-user", "add", "vera", "--role", "viewer", "--config", str(self.config),
              "--password-stdin"), PASSWORD),
        ):
            out = run(*args, stdin=stdin + "\n")
            assert out.returncode == 0, out.stderr
        token = run("admin-user", "token", "vera", "--config", str(self.config))
        assert token.returncode == 0, token.stderr
        self.relay = start_relay(self.config, tmp / "var",
                                 {"req": self.ports["req"], "sub": self.ports["sub"]})
        self.base = f"http://127.0.0.1:{self.ports['http']}"
        try:
            wait_admin(self.base, self.relay.proc)
        except Exception:
            self.relay.stop()
            raise
        self.api = httpx.Client(base_url=self.base, timeout=15,
                                headers={"Authorization": f"Bearer {token.stdout.strip()}"})

    def explain_cli(self, listener: str, *extra: str, client: str = "127.0.0.1") -> list[str]:
        out = run("policy", "explain", "--config", str(self.config), "--listener", listener,
                  "--client", client, "--from", "alice@example.com", "--to", "x@gmail.test",
                  *extra)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()

    def explain_api(self, listener: str, *, tls: bool = False, user: str | None = None) -> dict:
        body = {"listener": listener, "client": "127.0.0.1", "from": "alice@example.com",
                "to": "x@gmail.test", "tls": tls}
        if user is not None:
            body["user"] = user
        r = self.api.post("/api/v1/explain", json=body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("explain"))
    yield e
    e.api.close()
    e.relay.stop()


CONNECT = "connect: accept (listeners.{}.access.default): "
TLS_GATE = ("sender: reject 530 5.7.0 (listeners.req.tls.mode): TLS required: MAIL before "
            "STARTTLS (give --tls to see what happens after STARTTLS)")
AUTH_GATE = ("sender: reject 530 5.7.0 (listeners.sub.auth.required): MAIL before AUTH "
             "(give --user NAME to see what happens after AUTH)")
PLAIN_AUTH = ("auth: reject 538 5.7.11 (listeners.{}.auth.plaintext_networks): AUTH before "
              "STARTTLS: 127.0.0.1 is not in listeners.{}.auth.plaintext_networks "
              "(give --tls to see what happens after STARTTLS)")


def test_cli_tls_required(env):
    lines = env.explain_cli("req")
    assert lines[0].startswith(CONNECT.format("req"))
    assert lines[1:] == [TLS_GATE, "recipient: not reached"]
    # After STARTTLS the policy decides: loopback is a relay network.
    lines = env.explain_cli("req", "--tls")
    assert lines[1:] == [
        "sender: accept 250 2.1.0 (default): no group restricts senders",
        "recipient: accept 250 2.1.5 (listeners.req.relay.networks[0]): "
        "127.0.0.1 is in relay network 127.0.0.0/8",
    ]
    # A user cannot log in before STARTTLS either (538), so nothing after is reached.
    lines = env.explain_cli("req", "--user", "alice")
    assert lines[1:] == [PLAIN_AUTH.format("req", "req"), "sender: not reached",
                         "recipient: not reached"]


def test_cli_auth_required(env):
    lines = env.explain_cli("sub")
    assert lines[0].startswith(CONNECT.format("sub"))
    assert lines[1:] == [AUTH_GATE, "recipient: not reached"]
    # TLS alone does not open a listener that wants AUTH.
    assert env.explain_cli("sub", "--tls")[1:] == [AUTH_GATE, "recipient: not reached"]
    assert env.explain_cli("sub", "--user", "alice")[1:] == [
        PLAIN_AUTH.format("sub", "sub"), "sender: not reached", "recipient: not reached"]
    assert env.explain_cli("sub", "--user", "alice", "--tls")[1:] == [
        "auth: accept 235 2.7.0 (listeners.sub.auth.enabled): 'alice' logs in (if the password is right)",
        "sender: accept 250 2.1.0 (default): no group restricts senders",
        "recipient: accept 250 2.1.5 (listeners.sub.relay.authenticated): authenticated user "
        "'alice' may relay",
    ]


def test_cli_tls_on_a_listener_without_tls_is_a_usage_error(tmp_path):
    config = write_config(tmp_path, '[listeners.plain]\naddress = "127.0.0.1"\nport = 2525\n')
    out = run("policy", "explain", "--config", str(config), "--listener", "plain", "--client",
              "127.0.0.1", "--from", "a@b.test", "--to", "c@d.test", "--tls")
    assert out.returncode == 2
    assert '--tls: listeners.plain.tls.mode is "none": a client cannot use TLS there' in out.stderr


def step(code: int, enhanced: str, rule: str, decision: str = "reject") -> dict:
    return {"decision": decision, "code": code, "enhanced": enhanced, "rule": rule}


def short(answer: dict) -> dict:
    return {k: {f: v[f] for f in ("decision", "code", "enhanced", "rule")} if v else None
            for k, v in answer.items() if k in ("auth", "sender", "recipient")} | {
        "need": answer["need"]}


def test_api_honours_tls_and_user(env):
    assert short(env.explain_api("req")) == {
        "auth": None, "sender": step(530, "5.7.0", "listeners.req.tls.mode"),
        "recipient": None, "need": "tls"}
    assert short(env.explain_api("req", tls=True)) == {
        "auth": None, "sender": step(250, "2.1.0", "default", "accept"),
        "recipient": step(250, "2.1.5", "listeners.req.relay.networks[0]", "accept"),
        "need": None}
    answer = env.explain_api("sub", tls=True)
    assert short(answer) == {
        "auth": None, "sender": step(530, "5.7.0", "listeners.sub.auth.required"),
        "recipient": None, "need": "user"}
    # The text words the hint for the API's fields.
    assert answer["text"].splitlines()[1] == (
        "sender: reject 530 5.7.0 (listeners.sub.auth.required): MAIL before AUTH "
        "(set \"user\" to see what happens after AUTH)")
    assert short(env.explain_api("sub", user="alice")) == {
        "auth": step(538, "5.7.11", "listeners.sub.auth.plaintext_networks"),
        "sender": None, "recipient": None, "need": "tls"}
    assert short(env.explain_api("sub", tls=True, user="alice")) == {
        "auth": step(235, "2.7.0", "listeners.sub.auth.enabled", "accept"),
        "sender": step(250, "2.1.0", "default", "accept"),
        "recipient": step(250, "2.1.5", "listeners.sub.relay.authenticated", "accept"),
        "need": None}


def test_api_and_cli_say_the_same(env):
    for listener in ("req", "sub"):
        for tls in (False, True):
            for user in (None, "alice"):
                args = (["--tls"] if tls else []) + (["--user", user] if user else [])
                cli_steps = [line.split(" (give ")[0] for line in env.explain_cli(listener, *args)]
                api_steps = [line.split(" (set ")[0] for line in
                             env.explain_api(listener, tls=tls, user=user)["text"].splitlines()]
                assert cli_steps == api_steps, (listener, tls, user)


def smtp_answers(env, listener: str, *, tls: bool, user: str | None) -> dict:
    """What the relay answers a real client at each step, until the first refusal."""
    answers: dict[str, tuple[int, str] | None] = {"auth": None, "sender": None, "recipient": None}

    def parse(code: int, text: bytes) -> tuple[int, str]:
        return code, text.decode().split()[0]

    with smtplib.SMTP("127.0.0.1", env.ports[listener], timeout=15) as c:
        c.ehlo("client.test")
        if tls:
            c.starttls(context=env.client_ctx)
            c.ehlo("client.test")
        if user is not None:
            secret = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
            answers["auth"] = parse(*c.docmd("AUTH", f"PLAIN {secret}"))
            if answers["auth"][0] != 235:
                return answers
        answers["sender"] = parse(*c.mail("alice@example.com"))
        if answers["sender"][0] != 250:
            return answers
        answers["recipient"] = parse(*c.rcpt("x@gmail.test"))
        c.rset()
    return answers


@pytest.mark.parametrize("listener", ["req", "sub"])
@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("user", [None, "alice"])
def test_explain_says_what_the_server_answers(env, listener, tls, user):
    said = env.explain_api(listener, tls=tls, user=user)
    got = smtp_answers(env, listener, tls=tls, user=user)
    assert {k: (said[k]["code"], said[k]["enhanced"]) if said.get(k) else None for k in got} == got
    # And the mail log names the rule explain named, for a refusal at MAIL.
    if said["sender"] and said["sender"]["decision"] == "reject":
        env.relay.flush_logs()
        rule = said["sender"]["rule"]
        assert any(f"rule={rule}" in line and "stage=mail" in line
                   for line in env.relay.logs("mail", ".log").splitlines()), rule
