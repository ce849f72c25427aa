"""The outbound client (delivery/client.py) against real servers on 127.0.0.1.

Peers: aiosmtpd (STARTTLS, implicit TLS, AUTH, pipelining with PIPELINING added to its
EHLO), Postfix's smtp-sink (a non-Python server), and `FakeServer` below, a scripted raw
SMTP server for what aiosmtpd cannot do (DSN, no PIPELINING, SIZE, odd greetings, TLS
that breaks, plaintext injected after "220 Ready to start TLS").
Certificates are made per module with trustme.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from relaywarden.delivery.client import (
    ClientPolicy,
    DeliveryError,
    OutboundConnection,
    OutRecipient,
    TlsMode,
    TransactionResult,
)
from relaywarden.delivery import client as client_module
from relaywarden.delivery.tls import TlsMode as SharedTlsMode

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
SENDER = "sender@example.org"
from support.relay import free_port  # noqa: E402 - one port allocator for the whole run

BODY = b"Subject: test\r\n\r\nHello\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"


def run(coro, timeout: float = 20):
    """Run one test's coroutine on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def policy(**kw) -> ClientPolicy:
    base = dict(helo="relay.test", tls=TlsMode.NONE, connect_timeout=3, command_timeout=3,
                data_timeout=5)
    return ClientPolicy(**(base | kw))


def rcpts(*addresses: str) -> list[OutRecipient]:
    return [OutRecipient(address=a) for a in addresses]


def codes(result: TransactionResult) -> list[str]:
    return [f"{r.code} {r.enhanced}" for r in result.recipients]


async def send(conn: OutboundConnection, *to: str, body=BODY, **kw) -> TransactionResult:
    size = kw.pop("size", len(body) if isinstance(body, bytes) else 0)
    return await conn.send(sender=kw.pop("sender", SENDER), recipients=rcpts(*to), body=body,
                           size=size, **kw)


# --- TLS material -----------------------------------------------------------------------------

@dataclass
class Tls:
    server: ssl.SSLContext          # for the servers
    ca_file: str                    # trust anchor for VERIFY


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("mx.test", HOST)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return Tls(server=ctx, ca_file=str(path))


# --- aiosmtpd as the peer ---------------------------------------------------------------------

@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    mail_options: list[str]
    rcpt_options: list[str]
    tls: bool
    authenticated: bool


@dataclass
class Recorder:
    """aiosmtpd handler: records messages; refuses, defers, drops or stalls on request."""

    pipelining: bool = True
    rcpt: dict[str, str] = field(default_factory=dict)     # address -> reply line
    data_delay: float = 0.0
    drop_in_data: bool = False
    users: dict[bytes, bytes] = field(default_factory=lambda: {b"user": b"secret"})
    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_in_data:
            server.transport.abort()
            return "250 2.0.0 never seen"
        self.messages.append(Received(
            sender=envelope.mail_from, recipients=list(envelope.rcpt_tos),
            content=envelope.original_content, mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options), tls=session.ssl is not None,
            authenticated=bool(session.authenticated)))
        return "250 2.0.0 Queued"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = self.users.get(auth_data.login) == auth_data.password
        self.auth_attempts.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtpd():
    """smtpd(handler, **SMTP kwargs) -> port of a running aiosmtpd Controller."""
    running: list[Controller] = []

    def start(handler: Recorder, **kw) -> int:
        port = free_port()
        kw.setdefault("authenticator", handler.authenticator)
        controller = Controller(handler, hostname=HOST, port=port, ready_timeout=5, **kw)
        controller.start()
        running.append(controller)
        return port

    yield start
    for controller in running:
        controller.stop()


# --- a scripted raw SMTP server -----------------------------------------------------------------

DEFAULT_EHLO = ("PIPELINING", "SIZE 1000000", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES")


class FakeServer:
    """Just enough SMTP, scripted. `log` keeps ("C", command) and ("S", reply) in the order
    the server read and wrote them; replies may be delayed to show (or disprove) pipelining."""

    def __init__(self, *, greeting: bytes | None = b"220 fake.test ESMTP\r\n",
                 ehlo: tuple[str, ...] | None = DEFAULT_EHLO,
                 rcpt: dict[str, bytes] | None = None,
                 mail: bytes = b"250 2.1.0 Sender OK\r\n",
                 final: bytes = b"250 2.0.0 Queued\r\n",
                 delay: float = 0.0, data_354_always: bool = False,
                 drop_after: int | None = None,
                 tls: ssl.SSLContext | None = None, after_220: bytes = b"",
                 tls_garbage: bool = False, after_ehlo: bytes = b"",
                 silent_after: tuple[bytes, int] | None = None) -> None:
        self.greeting, self.ehlo, self.rcpt, self.mail, self.final = (
            greeting, ehlo, rcpt or {}, mail, final)
        self.delay, self.data_354_always, self.drop_after = delay, data_354_always, drop_after
        self.tls, self.after_220, self.tls_garbage = tls, after_220, tls_garbage
        self.after_ehlo = after_ehlo
        # (verb, n): after answering the n-th such command, the server stops answering
        # anything (the connection stays open): a next hop that hangs mid-transaction.
        self.silent_after = silent_after
        self.silent = False
        self._seen: dict[bytes, int] = {}
        self.log: list[tuple[str, bytes]] = []
        self.messages: list[bytes] = []           # DATA as received (still dot-stuffed)
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def commands(self) -> list[bytes]:
        return [line for who, line in self.log if who == "C"]

    def verbs(self) -> list[str]:
        return [line.split()[0].decode().upper() for line in self.commands() if line.split()]

    def order(self) -> list[str]:
        """"C:MAIL", "S:250", ...: who spoke when."""
        return [f"C:{line.split()[0].decode().upper()}" if who == "C" else f"S:{line[:3].decode()}"
                for who, line in self.log]

    def _ehlo_reply(self) -> bytes:
        lines = ["fake.test", *self.ehlo] + (["STARTTLS"] if self.tls or self.tls_garbage else [])
        return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                       for i, x in enumerate(lines)).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            while (data := await out.get()) is not None:
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.log.append(("S", data))
                writer.write(data)
                await writer.drain()

        pumper = asyncio.create_task(pump())
        self._tasks.add(pumper)
        try:
            if self.greeting is None:
                await asyncio.sleep(3600)               # a silent server
            out.put_nowait(self.greeting)
            if self.greeting.startswith(b"421"):
                await asyncio.sleep(0.05)
                return
            accepted, in_data, body = 0, False, bytearray()
            while line := await reader.readline():
                if in_data:
                    if line == b".\r\n":
                        self.messages.append(bytes(body))
                        body.clear()
                        in_data = False
                        if not self.silent:
                            out.put_nowait(self.final)
                    else:
                        body += line
                        if self.drop_after is not None and len(body) > self.drop_after:
                            writer.transport.abort()
                            return
                    continue
                self.log.append(("C", line))
                verb = line.split(b" ")[0].strip().upper()
                if self.silent:
                    continue
                self._seen[verb] = self._seen.get(verb, 0) + 1
                if self.silent_after == (verb, self._seen[verb]):
                    self.silent = True              # (this command is still answered)
                if not self.greeting.startswith(b"220") and verb != b"QUIT":
                    out.put_nowait(b"503 5.5.1 go away\r\n")   # RFC 5321 3.1: only QUIT
                elif verb == b"EHLO":
                    out.put_nowait(self._ehlo_reply() + self.after_ehlo if self.ehlo is not None
                                   else b"502 5.5.1 EHLO not implemented\r\n")
                elif verb == b"HELO":
                    out.put_nowait(b"250 fake.test\r\n")
                elif verb == b"STARTTLS":
                    await self._starttls(writer, out)
                    if self.tls_garbage:
                        return
                elif verb == b"MAIL":
                    accepted = 0
                    out.put_nowait(self.mail)
                elif verb == b"RCPT":
                    address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    answer = self.rcpt.get(address, b"250 2.1.5 OK\r\n")
                    accepted += answer.startswith(b"2")
                    out.put_nowait(answer)
                elif verb == b"DATA":
                    if accepted or self.data_354_always:
                        in_data = True
                        out.put_nowait(b"354 go ahead\r\n")
                    else:
                        out.put_nowait(b"554 5.5.1 No valid recipients\r\n")
                elif verb == b"RSET":
                    accepted = 0
                    out.put_nowait(b"250 2.0.0 OK\r\n")
                elif verb == b"QUIT":
                    out.put_nowait(b"221 2.0.0 Bye\r\n")
                    break
                else:
                    out.put_nowait(b"502 5.5.1 Not implemented\r\n")
            out.put_nowait(None)
            await pumper
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            pumper.cancel()
            writer.transport.abort()

    async def _starttls(self, writer: asyncio.StreamWriter, out: asyncio.Queue) -> None:
        while not out.empty():                          # let earlier replies go first
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.delay + 0.01)
        # `after_220`: plaintext after the 220, in the same segment (the injection attack).
        data = b"220 2.0.0 Ready to start TLS\r\n" + self.after_220
        self.log.append(("S", data))
        writer.write(data)
        await writer.drain()
        if self.tls_garbage:
            await asyncio.sleep(0.1)                    # let the ClientHello arrive
            writer.write(b"this is not TLS at all\r\n" * 20)
            await writer.drain()
            await asyncio.sleep(0.2)
            return
        await writer.start_tls(self.tls)


# === tests ======================================================================================

def test_tls_mode_is_the_shared_one():
    assert TlsMode is SharedTlsMode


def test_policy_repr_hides_the_password():
    assert "secret" not in repr(policy(username="u", password="secret"))


# --- connect, greeting, EHLO ----------------------------------------------------------------------

def test_connection_refused_is_4_4_1():
    port = free_port()                                  # nothing listens here

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(HOST, port, policy())
        return err.value

    err = run(main())
    assert err.stage == "connect"
    assert (err.reply.code, err.reply.enhanced) == (451, "4.4.1")
    assert err.temporary


def test_silent_server_times_out():
    async def main():
        async with FakeServer(greeting=None) as fake:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as err:
                await OutboundConnection.open(HOST, fake.port, policy(command_timeout=0.5))
            return err.value, time.monotonic() - started

    err, took = run(main())
    assert err.stage == "greeting"
    assert err.reply.enhanced == "4.4.2" and err.temporary
    assert 0.4 < took < 3


@pytest.mark.parametrize("greeting, code, quit_sent", [
    (b"421 4.3.2 Service shutting down\r\n", 421, False),   # the server closes by itself
    (b"554 5.7.1 No SMTP service here\r\n", 554, True),      # RFC 5321 3.1: QUIT, then close
])
def test_refused_greeting(greeting, code, quit_sent):
    async def main():
        async with FakeServer(greeting=greeting) as fake:
            with pytest.raises(DeliveryError) as err:
                await OutboundConnection.open(HOST, fake.port, policy())
            await asyncio.sleep(0.05)
            return err.value, fake.verbs()

    err, verbs = run(main())
    assert err.stage == "greeting"
    assert err.reply.code == code
    assert verbs == (["QUIT"] if quit_sent else [])


def test_garbage_greeting_is_a_protocol_error():
    async def main():
        async with FakeServer(greeting=b"hello, this is not SMTP\r\n") as fake:
            with pytest.raises(DeliveryError) as err:
                await OutboundConnection.open(HOST, fake.port, policy())
            return err.value

    err = run(main())
    assert err.stage == "greeting" and err.reply.enhanced == "4.5.0"


def test_helo_fallback_when_ehlo_is_refused():
    async def main():
        async with FakeServer(ehlo=None) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "r@example.com")
            await conn.close()
            return conn, result, fake.verbs()

    conn, result, verbs = run(main())
    assert verbs[:2] == ["EHLO", "HELO"]
    assert conn.extensions.pipelining is False and conn.extensions.size is None
    assert codes(result) == ["250 2.0.0"]


# --- STARTTLS and implicit TLS ------------------------------------------------------------------

@pytest.mark.parametrize("mode", [TlsMode.OPPORTUNISTIC, TlsMode.REQUIRED, TlsMode.VERIFY])
def test_starttls_success(smtpd, tls, mode):
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server)

    async def main():
        conn = await OutboundConnection.open(
            HOST, port, policy(tls=mode, ca_file=tls.ca_file, server_name="mx.test"))
        result = await send(conn, "r@example.com")
        await conn.close()
        return conn, result

    conn, result = run(main())
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")
    assert conn.tls_cipher
    assert conn.peer.startswith("127.0.0.1:")
    assert conn.extensions.starttls is False            # EHLO again after TLS (RFC 3207 4.2)
    assert codes(result) == ["250 2.0.0"]
    assert handler.messages[0].tls is True


def test_verify_fails_on_a_wrong_name(smtpd, tls):
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server)

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(
                HOST, port, policy(tls=TlsMode.VERIFY, ca_file=tls.ca_file,
                                   server_name="wrong.test"))
        return err.value

    err = run(main())
    assert err.stage == "starttls"
    assert err.reply.enhanced == "4.7.5" and err.temporary          # deferred, not bounced
    assert "certificate" in err.reply.text
    assert handler.messages == []


def test_verify_fails_against_the_system_store(smtpd, tls):
    port = smtpd(Recorder(), tls_context=tls.server)

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(HOST, port, policy(tls=TlsMode.VERIFY,
                                                             server_name="mx.test"))
        return err.value

    err = run(main())
    assert (err.stage, err.reply.enhanced) == ("starttls", "4.7.5")


@pytest.mark.parametrize("mode", [TlsMode.REQUIRED, TlsMode.VERIFY])
def test_tls_required_but_not_offered(smtpd, mode):
    handler = Recorder()
    port = smtpd(handler)                                    # no tls_context: no STARTTLS

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(HOST, port, policy(tls=mode))
        return err.value

    err = run(main())
    assert err.stage == "starttls"
    assert err.reply.enhanced.startswith("4.7.") and err.temporary


def test_opportunistic_without_starttls_goes_plain(smtpd):
    handler = Recorder()
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy(tls=TlsMode.OPPORTUNISTIC))
        result = await send(conn, "r@example.com")
        await conn.close()
        return conn, result

    conn, result = run(main())
    assert conn.tls_version is None and conn.tls_cipher is None
    assert codes(result) == ["250 2.0.0"]
    assert handler.messages[0].tls is False


def test_tls_mode_none_never_starts_tls(smtpd, tls):
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy(tls=TlsMode.NONE))
        await conn.close()
        return conn

    conn = run(main())
    assert conn.tls_version is None and conn.extensions.starttls is True


def test_opportunistic_handshake_failure_is_not_a_plaintext_fallback():
    async def main():
        async with FakeServer(tls_garbage=True) as fake:
            with pytest.raises(DeliveryError) as err:
                await OutboundConnection.open(HOST, fake.port,
                                              policy(tls=TlsMode.OPPORTUNISTIC))
            await asyncio.sleep(0.05)
            return err.value, fake.verbs()

    err, verbs = run(main())
    assert err.stage == "starttls"
    assert err.reply.enhanced == "4.7.5" and err.temporary
    assert verbs == ["EHLO", "STARTTLS"]                    # nothing more on that connection


def test_plaintext_injected_after_starttls_is_dropped(tls):
    # A man in the middle appends a forged EHLO reply to "220 Ready to start TLS"; it must
    # not be read as the server's answer from inside TLS (RFC 3207 4.2, CVE-2011-0411 kin).
    forged = b"250-forged.test\r\n250-SIZE 5\r\n250 AUTH PLAIN\r\n"

    async def main():
        async with FakeServer(tls=tls.server, after_220=forged) as fake:
            conn = await OutboundConnection.open(HOST, fake.port,
                                                 policy(tls=TlsMode.REQUIRED))
            result = await send(conn, "r@example.com")
            await conn.close()
            return conn, result

    conn, result = run(main())
    assert conn.tls_version is not None
    assert conn.extensions.size == 1000000 and conn.extensions.auth == ()
    assert codes(result) == ["250 2.0.0"]


def test_implicit_tls(smtpd, tls):
    handler = Recorder()
    port = smtpd(handler, ssl_context=tls.server)

    async def main():
        conn = await OutboundConnection.open(
            HOST, port, policy(implicit_tls=True, tls=TlsMode.VERIFY, ca_file=tls.ca_file,
                               server_name="mx.test"))
        result = await send(conn, "r@example.com")
        await conn.close()
        return conn, result

    conn, result = run(main())
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")
    assert codes(result) == ["250 2.0.0"]
    assert handler.messages[0].content == BODY


def test_implicit_tls_wrong_name(smtpd, tls):
    port = smtpd(Recorder(), ssl_context=tls.server)

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(
                HOST, port, policy(implicit_tls=True, tls=TlsMode.VERIFY,
                                   ca_file=tls.ca_file, server_name="wrong.test"))
        return err.value

    err = run(main())
    assert (err.stage, err.reply.enhanced) == ("tls", "4.7.5")


def test_starttls_under_uvloop(smtpd, tls):
    uvloop = pytest.importorskip("uvloop")
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server)

    async def main():
        conn = await OutboundConnection.open(
            HOST, port, policy(tls=TlsMode.VERIFY, ca_file=tls.ca_file, server_name="mx.test",
                               username="user", password="secret"))
        result = await send(conn, "r@example.com", body=(b"x" * 998 + b"\r\n") * 300)
        await conn.close()
        return conn, result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        conn, result = runner.run(asyncio.wait_for(main(), 20))
    assert conn.tls_version and codes(result) == ["250 2.0.0"]
    assert handler.messages[0].authenticated


# --- AUTH ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude, mechanism", [([], "PLAIN"), (["PLAIN"], "LOGIN")])
def test_auth_success(smtpd, tls, exclude, mechanism):
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server, auth_exclude_mechanism=exclude)

    async def main():
        conn = await OutboundConnection.open(
            HOST, port, policy(tls=TlsMode.REQUIRED, username="user", password="secret"))
        result = await send(conn, "r@example.com")
        await conn.close()
        return conn, result

    conn, result = run(main())
    assert conn.auth_mechanism == mechanism
    assert handler.auth_attempts == [(mechanism, True)]
    assert codes(result) == ["250 2.0.0"]
    assert handler.messages[0].authenticated


@pytest.mark.parametrize("exclude, mechanism", [([], "PLAIN"), (["PLAIN"], "LOGIN")])
def test_auth_failure_keeps_the_server_reply(smtpd, tls, exclude, mechanism):
    handler = Recorder()
    port = smtpd(handler, tls_context=tls.server, auth_exclude_mechanism=exclude)

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(
                HOST, port, policy(tls=TlsMode.REQUIRED, username="user", password="wrong"))
        return err.value

    err = run(main())
    assert err.stage == "auth"
    assert err.reply.code == 535 and err.reply.enhanced == "5.7.8"
    assert handler.auth_attempts == [(mechanism, False)]


def test_auth_refused_over_plaintext(smtpd):
    handler = Recorder()
    port = smtpd(handler, auth_require_tls=False)           # AUTH offered without TLS

    async def main():
        with pytest.raises(DeliveryError) as err:
            await OutboundConnection.open(
                HOST, port, policy(tls=TlsMode.OPPORTUNISTIC, username="user",
                                   password="secret"))
        return err.value

    err = run(main())
    assert err.stage == "auth" and err.temporary
    assert handler.auth_attempts == []                       # no password on the wire


def test_auth_over_plaintext_when_allowed(smtpd):
    handler = Recorder()
    port = smtpd(handler, auth_require_tls=False)

    async def main():
        conn = await OutboundConnection.open(
            HOST, port, policy(username="user", password="secret", auth_without_tls=True))
        await conn.close()
        return conn

    conn = run(main())
    assert conn.auth_mechanism == "PLAIN" and handler.auth_attempts == [("PLAIN", True)]


def test_auth_no_common_mechanism():
    async def main():
        async with FakeServer(ehlo=DEFAULT_EHLO + ("AUTH CRAM-MD5 XOAUTH2",)) as fake:
            with pytest.raises(DeliveryError) as err:
                await OutboundConnection.open(
                    HOST, fake.port, policy(username="u", password="p", auth_without_tls=True))
            return err.value, fake.verbs()

    err, verbs = run(main())
    assert err.stage == "auth" and "CRAM-MD5" in err.reply.text
    assert "AUTH" not in verbs


# --- transactions -------------------------------------------------------------------------------

def test_pipelining_with_mixed_recipient_results(smtpd):
    handler = Recorder(rcpt={"defer@example.com": "450 4.2.0 Mailbox busy",
                             "nobody@example.com": "550 5.1.1 No such user"})
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        result = await send(conn, "a@example.com", "defer@example.com", "nobody@example.com",
                            "b@example.com")
        usable = conn.usable
        await conn.close()
        return conn, result, usable

    conn, result, usable = run(main())
    assert conn.extensions.pipelining
    assert codes(result) == ["250 2.0.0", "450 4.2.0", "550 5.1.1", "250 2.0.0"]
    assert result.data.code == 250
    assert usable
    (msg,) = handler.messages
    assert msg.recipients == ["a@example.com", "b@example.com"]
    assert msg.content == BODY                                 # de-stuffed by aiosmtpd


def test_pipelining_all_refused_then_next_message(smtpd):
    handler = Recorder(rcpt={"no@example.com": "550 5.1.1 No such user"})
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        refused = await send(conn, "no@example.com")
        after = conn.usable
        ok = await send(conn, "yes@example.com")
        await conn.close()
        return refused, after, ok

    refused, after, ok = run(main())
    assert codes(refused) == ["550 5.1.1"] and refused.data is None
    assert after
    assert codes(ok) == ["250 2.0.0"]
    assert [m.recipients for m in handler.messages] == [["yes@example.com"]]


def test_pipelining_is_one_group():
    # The server delays each reply: with PIPELINING the whole group arrives before the
    # first reply goes out (RFC 2920 3.1).
    async def main():
        async with FakeServer(delay=0.05) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "a@example.com", "b@example.com")
            await conn.close()
            return result, fake.order()

    result, order = run(main())
    assert codes(result) == ["250 2.0.0", "250 2.0.0"]
    start = order.index("C:MAIL")
    assert order[start:start + 4] == ["C:MAIL", "C:RCPT", "C:RCPT", "C:DATA"]


def test_lock_step_without_pipelining():
    no_pipelining = tuple(x for x in DEFAULT_EHLO if x != "PIPELINING")

    async def main():
        async with FakeServer(ehlo=no_pipelining, delay=0.02,
                              rcpt={"no@example.com": b"550 5.1.1 No such user\r\n"}) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "a@example.com", "no@example.com")
            await conn.close()
            return result, fake.order()

    result, order = run(main())
    assert codes(result) == ["250 2.0.0", "550 5.1.1"]
    start = order.index("C:MAIL")
    assert order[start:start + 8] == ["C:MAIL", "S:250", "C:RCPT", "S:250", "C:RCPT", "S:550",
                                      "C:DATA", "S:354"]


def test_lock_step_all_refused_sends_no_data():
    no_pipelining = tuple(x for x in DEFAULT_EHLO if x != "PIPELINING")

    async def main():
        async with FakeServer(ehlo=no_pipelining,
                              rcpt={"no@example.com": b"550 5.1.1 No such user\r\n"}) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "no@example.com")
            await conn.close()
            return result, fake.verbs()

    result, verbs = run(main())
    assert codes(result) == ["550 5.1.1"] and result.data is None
    assert verbs == ["EHLO", "MAIL", "RCPT", "RSET", "QUIT"]


def test_data_accepted_without_recipients_gets_a_lone_dot():
    # RFC 2920 3.1: a server that answers 354 although no RCPT was accepted gets ".".
    async def main():
        async with FakeServer(data_354_always=True,
                              rcpt={"no@example.com": b"550 5.1.1 No such user\r\n"}) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "no@example.com")
            usable = conn.usable
            await conn.close()
            return result, usable, fake

    result, usable, fake = run(main())
    assert codes(result) == ["550 5.1.1"] and result.data is None
    assert fake.messages == [b""]                             # an empty DATA, ended at once
    assert fake.verbs()[-2:] == ["RSET", "QUIT"] and usable


def test_mail_refused_answers_every_recipient():
    async def main():
        async with FakeServer(mail=b"553 5.7.1 Sender refused\r\n") as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "a@example.com", "b@example.com")
            usable = conn.usable
            await conn.close()
            return result, usable

    result, usable = run(main())
    assert codes(result) == ["553 5.7.1", "553 5.7.1"] and result.data is None
    assert usable


def test_data_refused_answers_accepted_recipients():
    async def main():
        async with FakeServer(final=b"554 5.6.0 Content refused\r\n",
                              rcpt={"no@example.com": b"550 5.1.1 No such user\r\n"}) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "a@example.com", "no@example.com")
            await conn.close()
            return result

    result = run(main())
    assert codes(result) == ["554 5.6.0", "550 5.1.1"] and result.data.code == 554


def test_421_mid_session_is_an_error():
    async def main():
        async with FakeServer(rcpt={"b@example.com": b"421 4.3.0 Going down\r\n"}) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            with pytest.raises(DeliveryError) as err:
                await send(conn, "a@example.com", "b@example.com")
            usable = conn.usable
            await conn.close()
            return err.value, usable

    err, usable = run(main())
    assert err.stage == "rcpt" and err.reply.code == 421 and not usable


async def send_file(port: int, path: Path) -> TransactionResult:
    """One message whose body is the file at ``path``, over a new connection."""
    conn = await OutboundConnection.open(HOST, port, policy())
    result = await conn.send(sender=SENDER, recipients=rcpts("r@example.com"), body=path,
                             size=path.stat().st_size)
    await conn.close()
    return result


def test_large_message_from_a_file(smtpd, tmp_path):
    # ~5 MB of dot lines. The first 128 KiB read ends between CR and LF, with a dot line
    # after it; then 256-octet lines, so later reads end right before a leading dot.
    head = b"y" * 98 + b"\r\n"
    content = (head * 1310 + b"w" * 71 + b"\r\n" + b".dot after a split CRLF\r\n"
               + (b"." + b"z" * 253 + b"\r\n") * 20_000 + b".\r\n..\r\nlast line\r\n")
    assert content[131071:131074] == b"\r\n."
    path = tmp_path / "message.eml"
    path.write_bytes(content)
    handler = Recorder()
    assert codes(run(send_file(smtpd(handler), path))) == ["250 2.0.0"]
    assert handler.messages[0].content == content
    assert f"SIZE={len(content)}" in handler.messages[0].mail_options


def _nowait_supported(path: Path) -> bool:
    """Whether this file system reads with RWF_NOWAIT (ext4, xfs, btrfs do; Linux 4.14)."""
    if not hasattr(os, "RWF_NOWAIT"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.parametrize("mode", ["cached", "evicted", "unsupported", "short"])
def test_a_body_file_is_read_from_the_page_cache_or_in_a_thread(smtpd, tmp_path, monkeypatch,
                                                                 mode):
    """A body file (a queued message) is read on the loop's thread when its pages are
    cached, in a thread when they are not (a slow disk must not stall the other
    connections), or when the file system cannot say (no RWF_NOWAIT); a read that returns
    part of what was asked for is not the end. The message arrives whole in every case."""
    content = b"".join(b"%07d " % i + b"x" * 91 + b"\r\n" for i in range(6000))   # ~600 KB
    path = tmp_path / "message.eml"
    path.write_bytes(content)
    supported = _nowait_supported(path)
    real_preadv = os.preadv
    evicted = False
    if mode == "evicted":
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)                    # clean pages, which the kernel may drop
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if supported:                   # (tmpfs, say, keeps them: then all is cached)
            # The probe's miss starts a read of what it asked for and, with the default
            # readahead, of the window behind it (16 KB here), and the client's reads of
            # those pages then read ahead on their own: a CI run saw every read cached.
            # FADV_RANDOM: the probe's one page only, dropped again with the rest.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            try:
                os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
            except BlockingIOError:
                evicted = True
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    elif mode in ("unsupported", "short"):
        def preadv(fd, buffers, offset, flags=0):
            if flags & os.RWF_NOWAIT and mode == "unsupported":
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            if flags & os.RWF_NOWAIT:                   # at most 1000 octets at once
                return real_preadv(fd, [memoryview(buffers[0])[:1000]], offset, flags)
            return real_preadv(fd, buffers, offset, flags)
        monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(client_module, "_nowait", hasattr(os, "RWF_NOWAIT"))
    threaded = []
    to_thread = asyncio.to_thread

    async def counting(fn, *args, **kw):
        if getattr(fn, "__func__", None) is client_module._BodySource._pread:
            threaded.append(args)
        return await to_thread(fn, *args, **kw)
    monkeypatch.setattr(asyncio, "to_thread", counting)
    handler = Recorder()
    assert codes(run(send_file(smtpd(handler), path))) == ["250 2.0.0"]
    assert handler.messages[0].content == content
    reads = -(-len(content) // (128 * 1024))
    if mode == "unsupported" or not supported:
        # Every read in a thread, and the file system's answer remembered.
        assert len(threaded) == reads + 1 and client_module._nowait is False
    elif mode == "cached" or (mode == "evicted" and not evicted):
        assert len(threaded) == 1           # only the end, which a cached read cannot tell
    elif mode == "evicted":
        assert len(threaded) >= 2           # the first read waited for the disk, the end
    else:
        assert threaded == [(128 * 1024, 0)]    # short cached reads, then the end


def test_body_as_a_file_object(smtpd, tmp_path):
    path = tmp_path / "m.eml"
    path.write_bytes(BODY)
    handler = Recorder()
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        with path.open("rb") as f:
            result = await send(conn, "r@example.com", body=f, size=len(BODY))
        await conn.close()
        return result

    assert codes(run(main())) == ["250 2.0.0"]
    assert handler.messages[0].content == BODY


def test_dot_stuffing_on_the_wire():
    # The raw DATA as the fake server read it: every line-leading dot doubled, nothing else.
    async def main():
        async with FakeServer() as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            await send(conn, "r@example.com", body=b".\r\n.a\r\nb.\r\n..\r\nno end")
            await conn.close()
            return fake.messages

    assert run(main()) == [b"..\r\n..a\r\nb.\r\n...\r\nno end\r\n"]


def test_dsn_parameters_when_offered():
    async def main():
        async with FakeServer() as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await conn.send(
                sender=SENDER, body=BODY, size=len(BODY), ret="HDRS", envid="Q1+id 7",
                eightbit=True,
                recipients=[OutRecipient(address="a@example.com", notify=("SUCCESS", "FAILURE"),
                                         orcpt="rfc822;A+x@example.com"),
                            OutRecipient(address="b@example.com", notify=("NEVER",))])
            await conn.close()
            return result, fake.commands()

    result, commands = run(main())
    assert codes(result) == ["250 2.0.0", "250 2.0.0"]
    assert (b"MAIL FROM:<sender@example.org> SIZE=%d BODY=8BITMIME RET=HDRS ENVID=Q1+2Bid+207\r\n"
            % len(BODY)) in commands
    assert (b"RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bx@example.com\r\n"
            in commands)
    assert b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n" in commands


def test_dsn_parameters_not_sent_when_not_offered(smtpd):
    handler = Recorder()           # aiosmtpd offers no DSN (and would refuse the parameters)
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        result = await conn.send(
            sender=SENDER, body=BODY, size=len(BODY), ret="FULL", envid="x", eightbit=True,
            recipients=[OutRecipient(address="a@example.com", notify=("DELAY",),
                                     orcpt="rfc822;a@example.com")])
        await conn.close()
        return result

    assert codes(run(main())) == ["250 2.0.0"]
    (msg,) = handler.messages
    assert msg.rcpt_options == []
    assert not any(o.startswith(("RET=", "ENVID=")) for o in msg.mail_options)
    assert "BODY=8BITMIME" in msg.mail_options


def test_size_too_big_sends_no_mail():
    async def main():
        async with FakeServer(ehlo=("PIPELINING", "SIZE 1000")) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "a@example.com", "b@example.com", body=b"x" * 1500)
            within = await send(conn, "a@example.com", body=b"x" * 500)
            await conn.close()
            return result, within, fake.commands()

    result, within, commands = run(main())
    assert codes(result) == ["552 5.3.4", "552 5.3.4"] and result.data is None
    assert result.recipients[0].permanent and result.synthesized
    assert codes(within) == ["250 2.0.0"] and not within.synthesized
    mails = [c for c in commands if c.startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<sender@example.org> SIZE=500\r\n"]


def test_smtputf8_needed_but_not_offered():
    async def main():
        async with FakeServer(ehlo=("PIPELINING", "8BITMIME")) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            result = await send(conn, "j\u00f6rg@example.com", smtputf8=True)
            await conn.close()
            return result, fake.verbs()

    result, verbs = run(main())
    assert codes(result) == ["553 5.6.7"] and result.data is None and result.synthesized
    assert "MAIL" not in verbs


def test_smtputf8_when_offered(smtpd):
    handler = Recorder()
    port = smtpd(handler)                        # aiosmtpd offers SMTPUTF8

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        result = await send(conn, "j\u00f6rg@b\u00fccher.example", smtputf8=True,
                            sender="s\u00e9@example.org")
        await conn.close()
        return result

    assert codes(run(main())) == ["250 2.0.0"]
    assert handler.messages[0].recipients == ["j\u00f6rg@b\u00fccher.example"]
    assert "SMTPUTF8" in handler.messages[0].mail_options


@pytest.mark.parametrize("sender, recipient", [
    ("a@example.org\r\nRCPT TO:<evil@example.net>", "r@example.com"),
    (SENDER, "r@example.com\r\nDATA"),
    (SENDER, "r@example.com\nRSET"),
    (SENDER, "r@exa\0mple.com"),
    (SENDER, "r@example.com> NOTIFY=NEVER"),
    ("j\u00f6rg@example.org", "r@example.com"),                 # non-ASCII without SMTPUTF8
])
def test_injection_is_refused_before_anything_is_written(sender, recipient):
    async def main():
        async with FakeServer() as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            before = list(fake.log)
            with pytest.raises(ValueError):
                await send(conn, "ok@example.com", recipient, sender=sender)
            await asyncio.sleep(0.05)
            during = fake.log[len(before):]
            usable = conn.usable
            await conn.close()
            return during, usable

    during, usable = run(main())
    assert during == [] and usable


def test_helo_name_with_crlf_is_refused():
    async def main():
        with pytest.raises(ValueError):
            await OutboundConnection.open(HOST, 9, policy(helo="relay.test\r\nMAIL FROM:<>"))

    run(main())


# --- failures in the middle -----------------------------------------------------------------------

def test_connection_dropped_mid_data():
    async def main():
        async with FakeServer(drop_after=100_000) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            with pytest.raises(DeliveryError) as err:
                await send(conn, "r@example.com", body=(b"x" * 998 + b"\r\n") * 900)
            usable = conn.usable
            await conn.close()                                    # never raises
            return err.value, usable

    err, usable = run(main())
    assert err.stage == "data" and err.reply.enhanced == "4.4.2" and err.temporary
    assert not usable


def test_connection_dropped_before_the_final_reply(smtpd):
    port = smtpd(Recorder(drop_in_data=True))

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        with pytest.raises(DeliveryError) as err:
            await send(conn, "r@example.com")
        usable = conn.usable
        await conn.close()
        return err.value, usable

    err, usable = run(main())
    assert (err.stage, err.reply.enhanced) == ("data", "4.4.2") and not usable


def test_slow_server_hits_the_data_timeout(smtpd):
    port = smtpd(Recorder(data_delay=3))

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy(data_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(DeliveryError) as err:
            await send(conn, "r@example.com")
        took = time.monotonic() - started
        usable = conn.usable
        await conn.close()
        return err.value, took, usable

    err, took, usable = run(main())
    assert (err.stage, err.reply.enhanced) == ("data", "4.4.2")
    assert took < 2.5 and not usable


# --- the connection's timer: one per connection, re-armed lazily --------------------------------

NO_PIPELINING = tuple(x for x in DEFAULT_EHLO if x != "PIPELINING")


@pytest.mark.parametrize("ehlo", [DEFAULT_EHLO, NO_PIPELINING], ids=["pipelined", "lock-step"])
@pytest.mark.parametrize("silent_after, stage", [(b"MAIL", "rcpt"), (b"RCPT", "data")])
def test_next_hop_that_stops_answering_times_out(ehlo, silent_after, stage):
    # RFC 5321 4.5.3.2: each reply within its stage's timeout; a hop that hangs after
    # answering MAIL (or RCPT) fails the send at the next stage, after command_timeout.
    async def main():
        async with FakeServer(ehlo=ehlo, silent_after=(silent_after, 1)) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy(command_timeout=0.5))
            started = time.monotonic()
            with pytest.raises(DeliveryError) as err:
                await send(conn, "r@example.com")
            took = time.monotonic() - started
            usable = conn.usable
            await conn.close()
            return err.value, took, usable

    err, took, usable = run(main())
    assert (err.stage, err.reply.code, err.reply.enhanced) == (stage, 451, "4.4.2")
    assert f"timeout waiting for the {stage} reply" in str(err.reply)
    assert 0.45 < took < 2 and not usable


def test_timer_rearmed_across_many_messages_then_fires():
    # Many messages over one connection, for several times the command timeout, with idle
    # pauses longer than it between some of them: the single timer fires mid-wait (and is
    # set again for the wait's own deadline) and on the idle connection (and is not set
    # again until the next wait), and never kills a connection whose replies come in time.
    # Then the hop hangs after RCPT: the timeout still fires, on time.
    n = 30

    async def main():
        async with FakeServer(delay=0.01, silent_after=(b"RCPT", n + 1)) as fake:
            conn = await OutboundConnection.open(
                HOST, fake.port, policy(command_timeout=0.2, data_timeout=0.4))
            results = []
            for i in range(n):
                results.append(await send(conn, f"r{i}@example.com"))
                assert conn.usable
                if i % 10 == 9:
                    await asyncio.sleep(0.3)         # idle longer than command_timeout
                    assert conn.usable
            started = time.monotonic()
            with pytest.raises(DeliveryError) as err:
                await send(conn, "last@example.com")
            took = time.monotonic() - started
            await conn.close()
            return results, err.value, took, len(fake.messages)

    results, err, took, received = run(main())
    assert [codes(r) for r in results] == [["250 2.0.0"]] * n and received == n
    assert (err.stage, err.reply.enhanced) == ("data", "4.4.2")
    assert "timeout waiting for the data reply" in str(err.reply)
    assert 0.15 < took < 1.5


def test_data_timeout_shorter_than_the_armed_timer():
    # The timer was set for a command's deadline (2 s); the reply to the final dot has a
    # shorter one (0.3 s): the timer is moved earlier, not left to fire at 2 s.
    async def main():
        async with FakeServer(silent_after=(b"DATA", 2)) as fake:
            conn = await OutboundConnection.open(
                HOST, fake.port, policy(command_timeout=2, data_timeout=0.3))
            first = await send(conn, "a@example.com")
            started = time.monotonic()
            with pytest.raises(DeliveryError) as err:
                await send(conn, "b@example.com")
            took = time.monotonic() - started
            await conn.close()
            return first, err.value, took

    first, err, took = run(main())
    assert codes(first) == ["250 2.0.0"]
    assert (err.stage, err.reply.enhanced) == ("data", "4.4.2")
    assert 0.25 < took < 1.2


def test_send_on_an_unusable_connection(smtpd):
    port = smtpd(Recorder())

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        await conn.close()
        assert not conn.usable
        with pytest.raises(DeliveryError) as err:
            await send(conn, "r@example.com")
        with pytest.raises(DeliveryError):
            await conn.reset()
        await conn.close()                                        # twice: fine
        return err.value

    assert run(main()).temporary


# --- a reused connection -----------------------------------------------------------------------

def test_unsolicited_reply_makes_the_connection_unusable():
    # A pooled connection the server has spoken on (say "421 idle timeout") is not clean.
    async def main():
        async with FakeServer(after_ehlo=b"421 4.4.2 Idle timeout\r\n") as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            usable = conn.usable
            await conn.close()
            return usable

    assert run(main()) is False


def test_several_messages_on_one_connection(smtpd):
    handler = Recorder(rcpt={"no@example.com": "550 5.1.1 No such user"})
    port = smtpd(handler)

    async def main():
        conn = await OutboundConnection.open(HOST, port, policy())
        results = []
        for i, to in enumerate(["a@example.com", "no@example.com", "b@example.com"]):
            results.append(await send(conn, to, body=b"Subject: %d\r\n\r\nbody\r\n" % i))
            await conn.reset()
            assert conn.usable
        await conn.close()
        return results

    results = run(main())
    assert [codes(r) for r in results] == [["250 2.0.0"], ["550 5.1.1"], ["250 2.0.0"]]
    assert [m.recipients for m in handler.messages] == [["a@example.com"], ["b@example.com"]]
    assert [m.content.split(b"\r\n")[0] for m in handler.messages] == [b"Subject: 0",
                                                                        b"Subject: 2"]


# --- interop with a non-Python server: Postfix's smtp-sink -----------------------------------

SMTP_SINK = "/usr/sbin/smtp-sink"


@contextmanager
def smtp_sink(dump_dir: Path):
    port = free_port()
    dump_dir.chmod(0o777)                       # smtp-sink writes as the postfix user
    proc = subprocess.Popen(
        [SMTP_SINK, "-u", "postfix", "-d", f"{dump_dir}/%M.", "-c", f"{HOST}:{port}", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_interop_with_postfix_smtp_sink():
    # scripts/test.sh installs Postfix and runs as root: a missing sink is a broken setup,
    # not a reason to skip.
    assert os.path.exists(SMTP_SINK), "Postfix's smtp-sink is installed by scripts/test.sh"
    assert os.geteuid() == 0, "smtp-sink -u postfix needs root"
    # Not under tmp_path: its parents are mode 0700, and smtp-sink writes as "postfix".
    with tempfile.TemporaryDirectory(prefix="relaywarden-sink-") as name:
        _interop_with_smtp_sink(Path(name))


def _interop_with_smtp_sink(dump: Path) -> None:
    body = b"Subject: interop\r\n\r\n.dot line\r\nplain line\r\n"
    with smtp_sink(dump) as port:
        async def main():
            conn = await OutboundConnection.open(HOST, port, policy())
            result = await conn.send(
                sender=SENDER, body=body, size=len(body), ret="HDRS", envid="env-1",
                recipients=[OutRecipient(address="a@example.com", notify=("FAILURE",),
                                         orcpt="rfc822;a@example.com"),
                            OutRecipient(address="b@example.com")])
            await conn.reset()
            await conn.close()
            return conn, result

        conn, result = run(main())
        deadline = time.monotonic() + 3
        while not list(dump.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert conn.extensions.pipelining and conn.extensions.dsn
    assert [r.code for r in result.recipients] == [250, 250]
    (dumped,) = [p.read_bytes() for p in dump.iterdir()]
    assert b"X-Mail-Args: <sender@example.org> RET=HDRS ENVID=env-1\n" in dumped
    assert b"X-Rcpt-Args: <a@example.com> NOTIFY=FAILURE ORCPT=rfc822;a@example.com\n" in dumped
    # smtp-sink stores LF line ends; the dot is de-stuffed there as here.
    assert b"\n\n.dot line\nplain line\n" in dumped


def test_a_chained_send_cancelled_while_waiting_for_its_turn_leaves_the_turn_alone():
    """The next message's envelope went out behind the final dot; its send is cancelled
    (the engine stopping) while the reply to that dot is still to come. The cancelled send
    ends with CancelledError and nothing else; the transaction before it ends on its own
    terms (the connection is dropped: bytes of a transaction nobody finishes were sent),
    and its turn is not cancelled by the wait that was."""
    async def main():
        async with FakeServer(delay=0.2) as fake:
            conn = await OutboundConnection.open(HOST, fake.port, policy())
            ready = asyncio.Event()
            conn.on_dot = lambda c: ready.set()
            first = asyncio.ensure_future(send(conn, "a@example.com"))
            await ready.wait()
            assert conn.chainable
            turn = conn._turn
            second = asyncio.ensure_future(send(conn, "b@example.com"))
            await asyncio.sleep(0.05)          # second waits for the dot's reply
            assert conn._turn_waiters and not turn.done()
            second.cancel()
            results = await asyncio.gather(first, second, return_exceptions=True)
            await conn.close()
            return results, turn, conn._turn_waiters

    (first, second), turn, waiters = run(main())
    assert isinstance(second, asyncio.CancelledError)
    assert not isinstance(first, asyncio.CancelledError), first
    assert turn.done() and not turn.cancelled()
    assert waiters == []
