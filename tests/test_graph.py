"""Issue 12: Microsoft Graph as a next hop (next_hops = ["graph:NAME"]), through the real relay.

A real SMTP client sends to the relay process; the relay gets an app-only token for
Graph's /.default scope from a fake Microsoft identity platform (msal, HTTPS on 127.0.0.1)
and hands the message to a fake Graph sendMail endpoint (HTTPS on 127.0.0.1, trustme
certificates; tests/oauthfake.py) that checks the token, decodes the base64 MIME and
"delivers" to the To/Cc/Bcc of the MIME, as Graph does. DSNs go to an SMTP server on
loopback (routes."contoso.test"). The relay runs with HTTPS_PROXY pointing at a closed
port and NO_PROXY=127.0.0.1: nothing but the fakes can be reached.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
from pathlib import Path

import pytest

from support.cloud import CloudSetup, factory
from support.relay import free_port, until
from downstream import Downstream
from oauthfake import FakeGraph
from relaywarden.config import ConfigError, load_config
from relaywarden.delivery.graph import GRAPH_MAX_REQUEST, rewrite_recipients

CONFIG = """
[oauth.m365]
kind = "microsoft"
tenant = "{tenant}"
client_id = "app-1"
client_secret_file = "m365.secret"
authority = "https://127.0.0.1:{idp}"
graph_endpoint = "https://127.0.0.1:{graph}"
ca_file = "ca.pem"

[relay]
hostname = "relay.test"

[delivery]
retry_schedule = [1]
connect_timeout = 2
command_timeout = 5

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["graph:m365"]
{route_extra}

[routes."contoso.test"]
next_hops = ["[127.0.0.1]:{dsn}"]
tls = "none"

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""

SENDER = "scanner@contoso.test"


class Setup(CloudSetup):
    """The fake Graph beside the fake identity platform; DSNs go to their own server."""

    def __init__(self, tmp_path: Path, monkeypatch, *, secret: str = "s3cret",
                 route_extra: str = "", extra: str = "") -> None:
        super().__init__(tmp_path, monkeypatch, secret=secret)
        self.graph = FakeGraph(port=free_port(), ca=self.ca, idp=self.idp).start()
        self.dsn = Downstream(free_port()).start()
        self.start(CONFIG.replace("{route_extra}", route_extra) + extra,
                   graph=self.graph.port, dsn=self.dsn.port)

    def close(self) -> None:
        super().close()
        self.dsn.stop()
        self.graph.stop()

    def send(self, message: bytes, recipients: list[str], sender: str = SENDER) -> str:
        with smtplib.SMTP("127.0.0.1", self.ports["main"], timeout=30) as c:
            c.ehlo("scanner.test")
            c.mail(sender)
            for rcpt in recipients:
                assert c.rcpt(rcpt)[0] == 250
            code, text = c.data(message)
            assert code == 250, text
            return re.search(rb"queued as (\S+)", text).group(1).decode()

    def recipients(self) -> list[dict]:
        return [r for m in self.relay.messages() for r in m["recipients"]]

    def wait_queue(self, predicate, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.recipients()
            if predicate(rows):
                return rows
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)



@pytest.fixture
def make(tmp_path, monkeypatch):
    yield from factory(Setup, tmp_path, monkeypatch)


def msg(headers: str, body: str = "scan attached\r\n") -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\n" + body).encode()


def test_graph_202_delivered_as_the_senders_mailbox(make):
    """202: delivered. The request is POST /v1.0/users/{sender}/sendMail with the MIME in
    base64 (text/plain) and an app-only token for Graph's /.default scope; the mail log
    and the outbound protocol log say so."""
    s = make(extra='[log]\nprotocol = true\n')
    qid = s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: hello\n"), ["x@example.net"])
    [sent] = s.graph.wait_for(1)
    assert (sent.mailbox, sent.recipient) == (SENDER, "x@example.net")
    delivered = email.message_from_bytes(sent.message, policy=email.policy.default)
    assert delivered["Subject"] == "hello" and "scan attached" in delivered.get_content()
    s.wait_queue(lambda rows: rows == [])          # delivered: gone from the queue
    [grant] = s.idp.grants()
    assert (grant["grant_type"], grant["scope"].split()[0]) == (
        "client_credentials", f"https://127.0.0.1:{s.graph.port}/.default")
    log = s.maillog()
    assert re.search(rf"event=attempt id={qid} .*relay=graph:m365", log), log
    assert re.search(rf'event=delivered id={qid} to=x@example.net relay="127.0.0.1:{s.graph.port} '
                     rf'\(graph:m365\)" .*tls="TLSv1.3 \S+" reply="250 2.0.0 Graph sendMail 202 '
                     rf'Accepted \(request-id \w+\)"', log), log
    out = s.relay.logs("out", ".log")
    assert re.search(rf"127.0.0.1 {SENDER} routes.\"\*\" 127.0.0.1 127.0.0.1 {s.graph.port} POST "
                     rf"/v1.0/users/{SENDER}/sendMail 202 0 \d+ \d+ \S+ {qid}", out), out


@pytest.mark.slow   # a fault variant (waits out Retry-After)
def test_429_defers_honouring_retry_after(make):
    """429 with Retry-After: 4: deferred (not bounced) and tried again not before 4 s,
    although the retry schedule says 1 s; then delivered."""
    s = make()
    s.graph.answers.append((429, {"Retry-After": "4"}, {"error": {
        "code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."}}))
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: t\n"), ["x@example.net"])
    reason = s.wait_reason("ApplicationThrottled")
    assert reason.startswith("451 4.4.5") and "429" in reason
    s.graph.wait_for(1, timeout=30)
    first, second = s.graph.requests[0], s.graph.requests[1]
    assert (first["status"], second["status"]) == (429, 202)
    assert second["at"] - first["at"] >= 3.9, s.graph.requests
    assert s.dsn.messages == []


def test_400_bounces_naming_graphs_error(make):
    """A 4xx other than 401/403-permissions/413/429 is permanent: one request, a DSN to
    the sender naming Graph's error code and message; no retry."""
    s = make()
    s.graph.answers.append((400, {}, {"error": {
        "code": "ErrorInvalidRecipients", "message": "At least one recipient isn't valid."}}))
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: t\n"), ["x@example.net"])
    [dsn] = s.dsn.wait_for(1)
    assert dsn.sender == "" and dsn.recipients == [SENDER]
    text = dsn.content.decode()
    assert "Action: failed" in text and "Status: 5.6.0" in text
    assert "ErrorInvalidRecipients" in text and "At least one recipient isn't valid." in text
    s.wait_queue(lambda rows: rows == [])     # bounced and gone: never asked again
    assert len(s.graph.requests) == 1 and s.graph.sent == []
    assert re.search(r"event=bounced id=\S+ to=x@example.net .*reply=\"554 5.6.0 graph:m365: "
                     r"Graph sendMail 400 ErrorInvalidRecipients", s.maillog())


def test_oversize_bounced_without_asking_graph(make):
    """A message whose base64 would exceed Graph's 4 MB request limit: a 552 5.3.4 DSN
    that says why, and Graph is never called (nor a token fetched)."""
    s = make()
    big = "A" * 998 + "\r\n"
    body = big * (3_200_000 // len(big))          # ~3.2 MB: ~4.27 MB in base64
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: big\n", body), ["x@example.net"])
    [dsn] = s.dsn.wait_for(1)
    text = dsn.content.decode(errors="replace")
    assert "Status: 5.3.4" in text and "too big for Microsoft Graph" in text
    assert str(GRAPH_MAX_REQUEST) in text
    assert s.graph.requests == [] and s.idp.grants() == []


def test_envelope_recipients_exactly_once_bcc_and_header_only(make):
    """Graph sends to the MIME's To/Cc/Bcc, not to an envelope: the relay rewrites them so
    that each envelope recipient gets the message exactly once (one listed in both To and
    Cc too), Bcc'd recipients (in no header) get it without seeing each other, and an
    address that is only in the header (not in the envelope) gets nothing. The configured
    mailbox sends it."""
    s = make(route_extra='mailbox = "relay@contoso.test"')
    envelope = ["a@example.net", "b@example.org", "hidden1@example.com", "hidden2@example.com"]
    s.send(msg(f"From: {SENDER}\nTo: A <a@example.net>, Outsider <out@example.net>\n"
               "Cc: b@example.org, a@example.net\nSubject: multi\n"), envelope)
    s.graph.wait_for(4)
    # Once the queue is empty nothing more is sent: the recipients are final.
    until(s.relay.messages, lambda rows: rows == [], what="still queued")
    sent = s.graph.sent
    assert sorted(x.recipient for x in sent) == sorted(envelope), sent
    assert {x.mailbox for x in sent} == {"relay@contoso.test"}
    assert len(s.graph.requests) == 1                  # one sendMail for the whole envelope
    copy = email.message_from_bytes(sent[0].message, policy=email.policy.default)
    assert copy["Bcc"] is None
    assert [a.addr_spec for a in copy["To"].addresses] == ["a@example.net"]
    assert [a.addr_spec for a in copy["Cc"].addresses] == ["b@example.org"]
    assert "hidden" not in sent[0].message.decode() and "out@example.net" not in sent[0].message.decode()


def test_401_new_token_once_then_delivered(make):
    """Graph refuses the token (401 InvalidAuthenticationToken): one new token, one more
    request, delivered."""
    s = make()
    s.graph.refuse_first = 1
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: t\n"), ["x@example.net"])
    s.graph.wait_for(1)
    assert [r["status"] for r in s.graph.requests] == [401, 202]
    assert s.graph.requests[0]["token"] != s.graph.requests[1]["token"]
    assert len(s.idp.grants()) == 2


@pytest.mark.slow   # a fault variant; test_401_new_token_once_then_delivered covers 401
def test_401_twice_defers_not_bounces(make):
    s = make()
    s.graph.refuse_first = 1000
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: t\n"), ["x@example.net"])
    reason = s.wait_reason("InvalidAuthenticationToken")
    assert reason.startswith("454 4.7.0") and "new token" in reason
    assert [r["status"] for r in s.graph.requests[:2]] == [401, 401]
    assert s.dsn.messages == []


@pytest.mark.slow   # a fault variant; test_oauth covers AADSTS errors
def test_token_failure_defers_naming_aadsts(make):
    s = make(secret="wrong")
    s.send(msg(f"From: {SENDER}\nTo: x@example.net\nSubject: t\n"), ["x@example.net"])
    reason = s.wait_reason("AADSTS7000215")
    assert reason.startswith("451 4.7.0")
    s.relay.wait_log(r"event=deferred .*AADSTS7000215(?s:.*)event=deferred .*AADSTS7000215")  # a retry too
    assert s.graph.requests == [] and s.dsn.messages == []
    assert all(r["status"] == "queued" for r in s.recipients())


# --- pure parts ----------------------------------------------------------------------------

def test_rewrite_keeps_everything_else_byte_for_byte():
    original = (b"Received: from a\r\nFrom: x@c.test\r\nTo: =?utf-8?q?J=C3=B6rg?= <j@x.test>,\r\n"
                b" other@y.test\r\nSubject: s\r\nBcc: z@z.test\r\n\r\nTo: body@x.test\r\n")
    out = rewrite_recipients(original, ["J@x.test", "new@x.test"])
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"To: body@x.test\r\n"
    assert head.split(b"\r\n") == [b"Received: from a", b"From: x@c.test",
                                   b"To: =?utf-8?q?J=C3=B6rg?= <j@x.test>",
                                   b"Bcc: new@x.test", b"Subject: s"]


def _cfg_errors(tmp_path, text: str) -> list[str]:
    (tmp_path / "s").write_text("x\n")
    path = tmp_path / "relay.toml"
    path.write_text('[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n' + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [m.split(": ", 1)[1] for m in info.value.messages]


PROVIDER = ('[oauth.m365]\nkind = "microsoft"\ntenant = "t"\nclient_id = "c"\n'
            'client_secret_file = "s"\n')


def test_config_graph_names_an_existing_microsoft_provider(tmp_path):
    assert _cfg_errors(tmp_path, '[routes."*"]\nnext_hops = ["graph:nope"]\n') == [
        "routes.\"*\".next_hops[0]: graph:nope: unknown oauth provider 'nope' (providers: none defined)"]
    google = '[oauth.g]\nkind = "google"\nservice_account_file = "sa.json"\n'
    assert _cfg_errors(tmp_path, PROVIDER + '[sender_routes.apps]\nsender_domains = ["a.test"]\n'
                       'next_hops = ["graph:m365", "smtp.example.net"]\n') == [
        "sender_routes.apps.next_hops[0]: 'graph:m365' must be the only next hop of its route"]
    assert _cfg_errors(tmp_path, PROVIDER + '[routes."*"]\nnext_hops = ["mx"]\n'
                       'mailbox = "a@b.test"\n') == [
        'routes."*".mailbox: only used with next_hops = ["graph:NAME"]']
    assert _cfg_errors(tmp_path, PROVIDER + '[routes."*"]\nnext_hops = ["graph:m365"]\n'
                       '[routes."x.test"]\nnext_hops = ["smtp.x.test:587"]\noauth = "m365"\n'
                       'username = "a@x.test"\n') == [
        'routes."*".next_hops[0]: graph:m365: oauth.m365 is also used for SMTP AUTH by '
        'routes."x.test"; a token serves one API: define a second provider']
    del google


def test_config_graph_scope_default(tmp_path):
    (tmp_path / "s").write_text("x\n")
    path = tmp_path / "relay.toml"
    path.write_text('[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n' + PROVIDER
                    + 'graph_endpoint = "https://graph.microsoft.us/"\n'
                    + '[routes."*"]\nnext_hops = ["graph:m365"]\n')
    cfg = load_config(path)
    assert cfg.oauth["m365"].scopes == ["https://graph.microsoft.us/.default"]
    from relaywarden.config import build_router

    route = build_router(cfg).route("example.net", sender="", group=None, user=None)
    assert route.courier.label == "graph:m365" and route.hops == ()
