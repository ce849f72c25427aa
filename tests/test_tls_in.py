"""Inbound TLS through real clients: STARTTLS (optional and required), implicit TLS,
protocol versions, the plaintext injection attack, the Received header, certificate reload.

Certificates are made at test time by trustme; the clients trust its CA."""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings

import aiosmtplib
import pytest
import trustme

from support.configs import HERMETIC
from support.relay import free_port, start_relay, write_config

MSG = b"From: app@example.com\r\nTo: user@example.com\r\nSubject: tls\r\n\r\nhello\r\n"

TLS_CONFIG = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com"]
min_free_space = 0

[routes."branch.test"]
hold = true
etrn = true
next_hops = ["[127.0.0.1]:9"]

[listeners.opt]
address = "127.0.0.1"
port = {opt}
command_timeout = 5
[listeners.opt.tls]
mode = "starttls"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.opt.relay]
networks = ["127.0.0.0/8"]

[listeners.req]
address = "127.0.0.1"
port = {req}
[listeners.req.tls]
mode = "required"
cert_file = "relay.crt"
key_file = "relay.key"
optional_networks = ["127.0.0.2/32"]
[listeners.req.relay]
networks = ["127.0.0.0/8"]

[listeners.imp]
address = "127.0.0.1"
port = {imp}
[listeners.imp.tls]
mode = "implicit"
cert_file = "relay.crt"
key_file = "relay.key"
[listeners.imp.relay]
networks = ["127.0.0.0/8"]

[listeners.v13]
address = "127.0.0.1"
port = {v13}
[listeners.v13.tls]
mode = "starttls"
cert_file = "relay.crt"
key_file = "relay.key"
min_version = "TLSv1.3"
[listeners.v13.relay]
networks = ["127.0.0.0/8"]
"""


def write_cert(ca: trustme.CA, directory, name: str = "relay.test") -> trustme.LeafCert:
    cert = ca.issue_cert(name, "127.0.0.1")
    # Written next to each other, then renamed: a reload never sees half a pair.
    cert.cert_chain_pems[0].write_to_path(str(directory / "relay.crt.new"))
    cert.private_key_pem.write_to_path(str(directory / "relay.key.new"))
    (directory / "relay.crt.new").rename(directory / "relay.crt")
    (directory / "relay.key.new").rename(directory / "relay.key")
    return cert


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory, ca):
    tmp = tmp_path_factory.mktemp("tls")
    write_cert(ca, tmp)
    (tmp / "ca.pem").write_bytes(ca.cert_pem.bytes())
    ports = {name: free_port() for name in ("opt", "req", "imp", "v13")}
    config = write_config(tmp, TLS_CONFIG, **ports)
    relay = start_relay_tls(config, tmp / "var", ports)
    relay.dir = tmp
    yield relay
    relay.stop()


def start_relay_tls(config, data_dir, ports):
    # conftest's wait_port reads a greeting, which an implicit-TLS port only sends after a
    # handshake: wait for the plain ports, then for the TLS one with a TLS client.
    plain = {k: v for k, v in ports.items() if k != "imp"}
    relay = start_relay(config, data_dir, plain)
    relay.ports = ports
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ports["imp"]), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    return relay


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def queued_id(text: bytes) -> str:
    found = re.search(rb"queued as (\S+)", text)
    assert found, text
    return found.group(1).decode()


def body_of(relay, queue_id: str) -> bytes:
    deadline = time.monotonic() + 5
    while (body := relay.body(queue_id)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return body


def log_text(relay, prefix: str, suffix: str, needle: str, timeout: float = 5) -> str:
    """The log once it holds needle (the relay flushes its logs every second)."""
    deadline = time.monotonic() + timeout
    while True:
        text = relay.logs(prefix, suffix)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# ------------------------------------------------------------------- STARTTLS, optional


def test_starttls_optional_plain_and_tls_with_smtplib(tls_relay, ca):
    port = tls_relay.ports["opt"]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("plain.test")
        assert c.has_extn("starttls")
        assert c.mail("app@example.com")[0] == 250     # optional: plaintext mail is fine
        assert c.rcpt("user@example.com")[0] == 250
        code, text = c.data(MSG)
        assert code == 250
        plain_id = queued_id(text)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("tls.test")
        code, _ = c.starttls(context=client_context(ca))
        assert code == 220
        c.ehlo("tls.test")
        assert not c.has_extn("starttls")          # RFC 3207 4.2: not offered twice
        version = c.sock.version()
        cipher = c.sock.cipher()[0]
        c.mail("app@example.com")
        c.rcpt("user@example.com")
        code, text = c.data(MSG)
        assert code == 250
        tls_id = queued_id(text)
    plain = body_of(tls_relay, plain_id)
    assert b"\twith ESMTP id " + plain_id.encode() in plain and b"version=" not in plain
    tls = body_of(tls_relay, tls_id)
    header = tls.split(b"\r\nFrom: ")[0].decode()
    # RFC 3848: ESMTPS; and which TLS, as a comment.
    assert f"\twith ESMTPS id {tls_id}\r\n" in header
    assert f"\t(version={version} cipher={cipher} bits=" in header
    assert header.startswith("Received: from tls.test ([127.0.0.1])")
    # The protocol log notes STARTTLS like any command.
    w3c = log_text(tls_relay, "ex", ".log", "STARTTLS")
    assert re.search(r" opt relay\.test 127\.0\.0\.1 \d+ STARTTLS - 220 ", w3c)


def test_starttls_with_aiosmtplib(tls_relay, ca):
    async def run() -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=tls_relay.ports["opt"],
                                 start_tls=False, tls_context=client_context(ca), timeout=10)
        await client.connect()
        await client.ehlo()
        await client.starttls()
        assert client.is_ehlo_or_helo_needed
        errors, text = await client.sendmail("app@example.com", ["user@example.com"], MSG)
        await client.quit()
        assert errors == {}
        return text

    assert "queued as" in asyncio.run(run())


def test_starttls_with_swaks_verifying_the_certificate(tls_relay):
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{tls_relay.ports['opt']}", "--tls",
         "--tls-verify", "--tls-ca-path", str(tls_relay.dir / "ca.pem"), "--tls-sni", "relay.test",
         "--from", "app@example.com", "--to", "user@example.com", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TLS started with cipher TLSv1." in out.stdout
    assert "queued as" in out.stdout


# ------------------------------------------------------------------- STARTTLS, required


def test_required_refuses_mail_before_starttls_and_accepts_after(tls_relay, ca):
    with smtplib.SMTP("127.0.0.1", tls_relay.ports["req"], timeout=10) as c:
        c.ehlo("app.test")
        assert c.has_extn("starttls")
        assert c.mail("app@example.com") == (530, b"5.7.0 Must issue a STARTTLS command first")
        c.starttls(context=client_context(ca))
        c.ehlo("app.test")
        assert c.mail("app@example.com")[0] == 250
        assert c.rcpt("user@example.com")[0] == 250
        assert c.data(MSG)[0] == 250
    text = log_text(tls_relay, "mail", ".log", "rule=listeners.req.tls.mode")
    line = next(line for line in text.splitlines() if "rule=listeners.req.tls.mode" in line)
    assert "event=reject stage=mail" in line and "code=530" in line and "reason=" in line


def test_required_refuses_etrn_before_starttls(tls_relay, ca):
    with smtplib.SMTP("127.0.0.1", tls_relay.ports["req"], timeout=10) as c:
        c.ehlo("branch-server.test")
        assert c.docmd("ETRN", "branch.test") == (530, b"5.7.0 Must issue a STARTTLS command first")
        c.starttls(context=client_context(ca))
        c.ehlo("branch-server.test")
        assert c.docmd("ETRN", "branch.test") == (
            251, b"2.0.0 OK, no messages waiting for node branch.test")
    text = log_text(tls_relay, "mail", ".log", "ETRN before STARTTLS")
    assert "event=reject stage=etrn" in text and "rule=listeners.req.tls.mode" in text


def test_required_exempts_optional_networks(tls_relay):
    with smtplib.SMTP("127.0.0.1", tls_relay.ports["req"], timeout=10,
                      source_address=("127.0.0.2", 0)) as c:
        c.ehlo("legacy.test")
        assert c.sendmail("scanner@example.com", ["user@example.com"], MSG) == {}


# ------------------------------------------------------------------- implicit TLS


def test_implicit_tls_with_smtplib_and_aiosmtplib(tls_relay, ca):
    port = tls_relay.ports["imp"]
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=client_context(ca)) as c:
        code, _ = c.ehlo("imp.test")
        assert code == 250 and not c.has_extn("starttls")
        assert c.mail("app@example.com")[0] == 250
        assert c.rcpt("user@example.com")[0] == 250
        code, text = c.data(MSG)
        assert code == 250
        qid = queued_id(text)
    assert b"\twith ESMTPS id " + qid.encode() in body_of(tls_relay, qid)

    async def run() -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True,
                                 tls_context=client_context(ca), timeout=10)
        await client.connect()
        errors, text = await client.sendmail("app@example.com", ["user@example.com"], MSG)
        await client.quit()
        assert errors == {}
        return text

    assert "queued as" in asyncio.run(run())


def test_implicit_tls_with_swaks(tls_relay):
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{tls_relay.ports['imp']}", "--tlsc",
         "--tls-verify", "--tls-ca-path", str(tls_relay.dir / "ca.pem"), "--tls-sni", "relay.test",
         "--from", "app@example.com", "--to", "user@example.com", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "queued as" in out.stdout


def test_implicit_tls_plaintext_client_gets_no_greeting(tls_relay, ca):
    with socket.create_connection(("127.0.0.1", tls_relay.ports["imp"]), timeout=10) as s:
        s.sendall(b"EHLO plain.test\r\n")
        data = s.recv(1024)
        # No SMTP greeting in clear: at most a TLS alert, then the connection is closed.
        assert b"220" not in data and b"EHLO" not in data
    # The listener goes on serving TLS clients.
    assert implicit_peer_der(tls_relay.ports["imp"], ca)
    # And the admin sees who failed and why (the loop's own TLS server would say nothing).
    log = log_text(tls_relay, "mail", ".log", "TLS handshake failed: SSLError")
    assert re.search(r"event=reject stage=tls listener=imp client=127\.0\.0\.1 "
                     r"reason=\"TLS handshake failed: SSLError: [^\"]+\"", log), log


# ------------------------------------------------------------------- versions


def _tls11_possible() -> bool:
    """Can this machine's OpenSSL speak TLS 1.1 at all (client and server)? Checked with a
    local TLS 1.1 server, so that the relay's refusal below is its own doing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            client = tls11_client()
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.set_ciphers("DEFAULT:@SECLEVEL=0")
            server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            return False
    ca = trustme.CA()
    ca.issue_cert("localhost").configure_cert(server)
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                result["server"] = tls.version()
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client.wrap_socket(raw) as tls:
                version = tls.version()
    except (ssl.SSLError, OSError):
        return False
    finally:
        thread.join(5)
        listener.close()
    return version == "TLSv1.1"


def tls11_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def starttls_raw(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220 ")
    raw.sendall(b"EHLO v.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220 ")
    return ctx.wrap_socket(raw, server_hostname="relay.test")


def test_tls11_client_is_refused(tls_relay):
    if not _tls11_possible():
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all; the TLSv1.3 test covers refusal")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        starttls_raw(tls_relay.ports["opt"], tls11_client())
    text = log_text(tls_relay, "mail", ".log", "stage=tls listener=opt")
    assert re.search(r"event=reject stage=tls listener=opt .*TLS handshake failed", text)


def test_min_version_tls13_refuses_a_tls12_client(tls_relay, ca):
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        starttls_raw(tls_relay.ports["v13"], ctx)
    # The same client is fine where TLS 1.2 is allowed, and TLS 1.3 is fine on v13.
    with starttls_raw(tls_relay.ports["opt"], ctx) as tls:
        assert tls.version() == "TLSv1.2"
    with starttls_raw(tls_relay.ports["v13"], client_context(ca)) as tls:
        assert tls.version() == "TLSv1.3"
    text = log_text(tls_relay, "mail", ".log", "stage=tls listener=v13")
    assert "event=reject stage=tls listener=v13" in text


# ------------------------------------------------------------------- CVE-2011-0411


def test_plaintext_pipelined_after_starttls_is_discarded(tls_relay, ca):
    raw = socket.create_connection(("127.0.0.1", tls_relay.ports["opt"]), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220 ")
    # The attacker's commands ride in the same packet as STARTTLS, in clear text.
    raw.sendall(b"EHLO x.test\r\nSTARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    assert f.readline().startswith(b"220 ")
    tls = client_context(ca).wrap_socket(raw, server_hostname="relay.test")
    tf = tls.makefile("rb")
    # After the handshake the server has no reply pending: MAIL and RCPT were dropped, so
    # the first thing we read answers our own EHLO, and MAIL is the first of a new session.
    tls.sendall(b"EHLO y.test\r\n")
    first = tf.readline()
    assert first.startswith(b"250-relay.test"), first
    while not first.startswith(b"250 "):
        first = tf.readline()
    tls.sendall(b"RCPT TO:<victim@example.com>\r\n")
    assert tf.readline().startswith(b"503 5.5.1"), "a plaintext MAIL was executed"
    tls.sendall(b"QUIT\r\n")
    assert tf.readline().startswith(b"221")
    tls.close()
    text = log_text(tls_relay, "ex", ".log", "EHLO y.test")
    assert "evil@attacker.test" not in text


# ------------------------------------------------------------------- certificate reload


def peer_der(port: int, ca: trustme.CA) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("probe.test")
        c.starttls(context=client_context(ca))
        return c.sock.getpeercert(binary_form=True)


def implicit_peer_der(port: int, ca: trustme.CA) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname="relay.test") as tls:
            assert tls.recv(512).startswith(b"220 ")
            return tls.getpeercert(binary_form=True)


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def test_sighup_reloads_certificates_without_dropping_sessions(tmp_path, ca):
    first = write_cert(ca, tmp_path)
    ports = {name: free_port() for name in ("opt", "req", "imp", "v13")}
    config = write_config(tmp_path, TLS_CONFIG, **ports)
    relay = start_relay_tls(config, tmp_path / "var", ports)
    try:
        assert peer_der(ports["opt"], ca) == der(first)
        # An old session: TLS up, in the middle of a transaction, across the reload.
        old = smtplib.SMTP("127.0.0.1", ports["opt"], timeout=10)
        old.ehlo("old.test")
        old.starttls(context=client_context(ca))
        old.ehlo("old.test")
        assert old.mail("app@example.com")[0] == 250

        second = write_cert(ca, tmp_path)
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while peer_der(ports["opt"], ca) != der(second):
            assert time.monotonic() < deadline, "new connections still get the old certificate"
            time.sleep(0.1)
        assert implicit_peer_der(ports["imp"], ca) == der(second)

        assert old.sock.getpeercert(binary_form=True) == der(first)
        assert old.rcpt("user@example.com")[0] == 250
        code, _ = old.data(MSG)
        assert code == 250
        old.quit()

        # A broken pair on reload is refused; the relay keeps serving the last good one.
        (tmp_path / "relay.key").write_text("not a key\n")
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_log(r"event=reload result=refused")
        assert peer_der(ports["opt"], ca) == der(second)
        assert relay.proc.poll() is None
    finally:
        relay.stop()
    err = relay.proc.stderr.read()
    assert "reload refused" in err and "listeners.opt.tls.key_file" in err
