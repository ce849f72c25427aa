"""The outbound SMTP client: the asyncio driver of the sans-IO client role (smtp/client.py).

    conn = await OutboundConnection.open("192.0.2.25", 25, ClientPolicy(helo="relay.example"))
    try:
        result = await conn.send(sender="a@example.org", recipients=[OutRecipient(address=..)],
                                 body=path_or_bytes, size=n)
        await conn.reset()                  # before the next message on this connection
    finally:
        await conn.close()

Failures of the session as a whole (no connection, a refused greeting, TLS or AUTH failure,
a timeout, a lost connection, a 421) raise `DeliveryError`, whose `reply` is either the
server's own or a synthesized one; synthesized replies are 451 with an RFC 3463 enhanced
code (4.4.1 no answer, 4.4.2 bad connection, 4.7.x security), so that the message is
deferred and not bounced. Refusals of single recipients are results, not errors.

The driver is an asyncio.Protocol rather than streams: it sees every byte that arrives, so
that what the server sends in plaintext after "220 Ready to start TLS" is dropped and never
read as a reply from inside TLS (RFC 3207 4.2 and 6; the client-side STARTTLS injection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import os
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Union

from relaywarden.delivery.tls import TlsMode
from relaywarden.smtp.client import (
    DotStuffer,
    Extensions,
    ProtocolError,
    ReplyParser,
    command,
    mail_from,
    rcpt_to,
)
from relaywarden.smtp.reply import Reply, reply

if TYPE_CHECKING:
    from relaywarden.logs.protocol import ProtocolLog, SessionLog
    from relaywarden.oauth import OAuthLogin

__all__ = [
    "ClientPolicy",
    "DeliveryError",
    "OutboundConnection",
    "OutRecipient",
    "TlsMode",
    "TransactionResult",
]

Body = Union[bytes, bytearray, memoryview, "os.PathLike[str]", BinaryIO]

_CHUNK = 128 * 1024                 # body read and write unit
_READ_HIGH_WATER = 1024 * 1024      # unread reply bytes before we stop reading the socket
_QUIT_TIMEOUT = 5.0                 # close() waits at most this long for the 221
_CLOSE_TIMEOUT = 2.0                # and this long for the transport to go away


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPolicy:
    """How to talk to one next hop. Hashable: the connection pool keys on it."""

    helo: str
    tls: TlsMode = TlsMode.OPPORTUNISTIC
    implicit_tls: bool = False          # RFC 8314 3.3: TLS from the first byte (port 465)
    ca_file: str | None = None          # VERIFY: trust anchors; None = the system store
    server_name: str | None = None      # VERIFY: the name the certificate must match (and SNI)
    username: str | None = None         # AUTH when set (RFC 4954)
    # A password, or an OAuthLogin (relaywarden.oauth): AUTH XOAUTH2 / OAUTHBEARER with a
    # token of that provider for the mailbox `username`.
    password: str | OAuthLogin | None = None
    auth_without_tls: bool = False      # allow AUTH over plaintext (a trusted LAN only)
    connect_timeout: float = 30
    command_timeout: float = 300        # RFC 5321 4.5.3.2: 5 minutes for most replies
    data_timeout: float = 600           # 4.5.3.2.6: 10 minutes for the reply to the final dot
    # The hash, made at the first look-up: the pool looks a policy up twice per message,
    # and the generated hash goes through all twelve fields (the TLS mode's in Python).
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash((self.helo, self.tls, self.implicit_tls, self.ca_file,
                           self.server_name, self.username, self.password,
                           self.auth_without_tls, self.connect_timeout, self.command_timeout,
                           self.data_timeout))
            object.__setattr__(self, "_hash", cached)   # frozen: set once, as __init__ would
        return cached

    def __repr__(self) -> str:          # never a password in a log line
        secret = ("***" if isinstance(self.password, str) else self.password
                  if self.password is not None else None)
        return (f"ClientPolicy(helo={self.helo!r}, tls={self.tls}, implicit_tls="
                f"{self.implicit_tls}, server_name={self.server_name!r}, "
                f"username={self.username!r}, password={secret})")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutRecipient:
    address: str                              # mailbox without angle brackets
    notify: tuple[str, ...] | None = None     # RFC 3461 4.1, sent only when DSN is offered
    orcpt: str | None = None                  # "rfc822;user@example.com" (RFC 3461 4.2)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionResult:
    """One Reply per recipient, in order: the RCPT reply for a refused recipient, the final
    DATA reply for an accepted one (or the MAIL reply for all, when MAIL was refused)."""

    recipients: tuple[Reply, ...]
    data: Reply | None              # the reply to DATA / the final dot; None: no recipient
    # True when the replies are this client's own: it did not send the message because the
    # server cannot take it (SIZE, SMTPUTF8). A DSN must not present them as the host's.
    synthesized: bool = False


class DeliveryError(Exception):
    """The connection or the session failed as a whole.

    `reply`: the server's reply, or a synthesized one (451 4.4.x / 4.7.x). `stage`: one of
    "connect", "tls" (implicit TLS handshake), "greeting", "ehlo", "starttls", "auth",
    "mail", "rcpt", "data", "rset". `detail`: for the log, not for the sender.
    """

    part = "delivery"

    def __init__(self, reply: Reply, stage: str, detail: str | None = None, *,
                 from_server: bool = False) -> None:
        super().__init__(f"{stage}: {reply}" + (f" ({detail})" if detail else ""))
        self.reply = reply
        self.stage = stage
        self.detail = detail
        # True: `reply` is what the server said; False: we made it up (connection refused,
        # timeout, TLS failure): a DSN must not report it as the server's words.
        self.from_server = from_server

    @property
    def temporary(self) -> bool:
        return self.reply.transient

    @property
    def permanent(self) -> bool:
        return self.reply.permanent


# Synthesized replies. 451 "local error in processing": the failure is ours to retry.
def _no_answer(detail: str) -> Reply:
    return reply(451, "4.4.1", f"No answer from host: {detail}")          # RFC 3463 X.4.1


def _bad_connection(detail: str) -> Reply:
    return reply(451, "4.4.2", f"Bad connection: {detail}")               # RFC 3463 X.4.2


def _tls_unsupported(detail: str) -> Reply:
    return reply(451, "4.7.4", f"TLS required but not available: {detail}")   # X.7.4


def _tls_failed(detail: str) -> Reply:
    return reply(451, "4.7.5", f"TLS failed: {detail}")                   # X.7.5


_TOO_BIG = "Message size exceeds the remote host's fixed maximum message size"
_NO_UTF8 = "Remote host does not support SMTPUTF8"  # RFC 6531 3.2: cannot be sent as is


@functools.lru_cache(maxsize=32)
def _tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A client context, shared between connections (loading a CA store is not free)."""
    if verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    else:
        # REQUIRED / OPPORTUNISTIC: encryption against passive listeners only (RFC 7435
        # opportunistic security); no certificate or name check.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2        # RFC 8996: no TLS 1.0/1.1
    return ctx


class _Protocol(asyncio.Protocol):
    """Bytes from the socket go straight into the ReplyParser; the driver awaits `waiter`.

    One plain future at a time, made by the driver when it has to wait (for a reply, or for
    the transport's buffer to drain) and resolved here on data, EOF, loss or drain, or by
    the connection's timer. Cheaper than an asyncio.Event: Event.wait() looks the running
    loop up each time, and under Python 3.11 that is a getpid() system call."""

    def __init__(self, parser: ReplyParser, loop: asyncio.AbstractEventLoop) -> None:
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.writable = True                # False while the transport's buffer is full
        self.lost = False
        self.eof = False
        self.reading_paused = False
        self.closed: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self.wake()
        if self.parser.buffered > _READ_HIGH_WATER and not self.reading_paused:
            # A server that talks without being asked: stop reading until we catch up.
            self.reading_paused = True
            assert self.transport is not None     # data comes after connection_made
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.wake()
        return False                        # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable = True
        self.wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.wake()


class OutboundConnection:
    """One SMTP client session to one next hop. Make it with `open()`.

    With a protocol log (``log``), every command sent and the reply to it is a line there,
    under the session's ID and the queue ID of the message being sent (`trace()`); without
    one, nothing of that is done."""

    def __init__(self, address: str, port: int, policy: ClientPolicy, *,
                 log: ProtocolLog | None = None, session_id: str | None = None,
                 queue_id: str = "", route: str = "") -> None:
        # Use open(); the constructor only sets the fields.
        self.address = address
        self.port = port
        self.policy = policy
        self.peer = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.extensions = Extensions()
        self.greeting: Reply | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.auth_mechanism: str | None = None
        self._parser = ReplyParser()
        # Looked up once: every get_running_loop() is a getpid() system call under 3.11.
        self._loop = asyncio.get_running_loop()
        self._proto: _Protocol | None = None
        # One timer per connection, not one per reply (see _expect): the deadline of the
        # wait under way, whether one is under way, and when the timer is set to fire.
        self._deadline = 0.0
        self._waiting = False
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._transport: asyncio.Transport | None = None
        self._dead = False          # the transport cannot be trusted: abort, no QUIT
        self._failed = False        # an error happened: not usable, but QUIT is fine
        self._busy = False
        self._closed = False
        # RFC 2920 3.1 after the final dot: the next transaction's MAIL, RCPTs and DATA may
        # follow the dot before its reply has come (one round trip per message, not two).
        # `on_dot`: called once the final dot of a transaction is queued for sending, so
        # that the owner (the delivery pool) can hand the connection to the next message;
        # `_turn`: resolved when the transaction whose dot went out has read its reply:
        # the replies come in order, so the next one reads its own only after that.
        # `_outbuf`: the dot waits there for one loop round, so that the next envelope,
        # written in that round, leaves in the same segment.
        self.on_dot: Callable[[OutboundConnection], None] | None = None
        self._turn: asyncio.Future[None] | None = None
        # The next transaction waiting for `_turn`, woken directly when it is resolved:
        # asyncio.shield() cost a loop round and three calls more per message (issue 15),
        # and a waiter cancelled (its task stopped) must not cancel the turn itself.
        self._turn_waiters: list[asyncio.Future[None]] = []
        self._outbuf: list[bytes] = []
        self._writer: object | None = None     # the send() that owns the writing side
        # The protocol log: commands sent and waiting for their reply, oldest first, as
        # (line as sent or None, method, query, octets, when sent); the line is decoded
        # only when its reply comes.
        self._log = log
        self._session_id = session_id
        self._slog: SessionLog | None = None
        self._sent: deque[tuple[bytes | None, str, str, int, float, str, str]] = deque()
        self._started = time.monotonic()
        self._logged_in: str | None = None
        self.queue_id = queue_id
        self.route = route
        # OAuth: a token the next hop refused on an earlier connection (fetch another), and
        # (token, reply) when this one's AUTH refused ours (see open()).
        self._stale_token: str | None = None
        self._token_refused: tuple[str, Reply] | None = None

    # --- public ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, address: str, port: int, policy: ClientPolicy, *,
                   log: ProtocolLog | None = None, queue_id: str = "",
                   route: str = "") -> OutboundConnection:
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as the policy says.

        Raises DeliveryError (the connection is closed then); ValueError for a HELO name
        that holds CR, LF or NUL, before connecting. ``log``: the outbound protocol log,
        its lines under ``queue_id`` and ``route`` (see `trace()`).
        """
        command("EHLO", policy.helo)
        conn = await cls._open(address, port, policy, log=log, queue_id=queue_id, route=route)
        if conn._token_refused is None:
            return conn
        # AUTH XOAUTH2 / OAUTHBEARER refused the token (535 5.7.3 / 5.7.8): it may have been
        # revoked or the mailbox's rights changed before it expired. A new token, once, on a
        # new connection (the SASL exchange has ended with the 535); then the mail waits.
        # (A second refusal raises DeliveryError 454 4.7.0 from _auth_oauth.)
        return await cls._open(address, port, policy, log=log, queue_id=queue_id, route=route,
                               stale=conn._token_refused[0])

    @classmethod
    async def _open(cls, address: str, port: int, policy: ClientPolicy, *,
                    log: ProtocolLog | None, queue_id: str, route: str,
                    stale: str | None = None) -> OutboundConnection:
        conn = cls(address, port, policy, log=log, queue_id=queue_id, route=route)
        conn._stale_token = stale
        try:
            await conn._connect()
            await conn._start_session()
        except BaseException as exc:
            if (conn._log is not None and conn._transport is None
                    and isinstance(exc, DeliveryError)):
                # No connection at all: the attempt is a line of its own (status 0).
                conn._trace_line("CONNECT", str(exc.reply), None, 0, conn._started)
            await conn.close()
            raise
        if conn._token_refused is not None:
            await conn.close()
        return conn

    @classmethod
    async def adopt(cls, transport: asyncio.Transport, policy: ClientPolicy, *,
                    initial: bytes = b"", log: ProtocolLog | None = None,
                    session_id: str | None = None, queue_id: str = "",
                    route: str = "") -> OutboundConnection:
        """ATRN (RFC 2645 5.3): become the client on a connection the peer opened to us.
        ``initial``: bytes of the peer that arrived before (the start of its greeting).
        Reads the greeting and says EHLO; never STARTTLS or AUTH (the peer authenticated
        to us, and TLS, if any, is already up). Raises DeliveryError (then closed).
        ``log`` etc.: as for open(); ``session_id``: the inbound session's, so that the
        two halves of the connection are found together."""
        command("EHLO", policy.helo)
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        conn = cls(peer[0].split("%", 1)[0], peer[1], policy, log=log, session_id=session_id,
                   queue_id=queue_id, route=route)
        conn._proto = _Protocol(conn._parser, conn._loop)
        transport.set_protocol(conn._proto)
        conn._proto.connection_made(transport)
        conn._transport = transport
        conn._record_tls(transport)
        if initial:
            conn._proto.data_received(initial)
        transport.resume_reading()
        try:
            await conn._greeting_and_hello()
        except BaseException:
            await conn.close()
            raise
        return conn

    def trace(self, queue_id: str, route: str) -> None:
        """The message (and its route) the next commands are for: the protocol log's
        x-queue-id and s-sitename from now on (a pooled connection carries one message
        after another)."""
        self.queue_id = queue_id
        if route != self.route:
            self.route = route
            self._slog = None           # made again with the new route, same session ID

    @property
    def usable(self) -> bool:
        """Still open and in a clean state (no transaction, no error): may send a message."""
        proto = self._proto
        # Bytes nobody asked for (say, a "421 idle timeout" while pooled) mean the session
        # is not in the state we think it is.
        return (proto is not None and self._parser.buffered == 0
                and (self._turn is None or self._turn.done())
                and not (self._dead or self._failed or self._closed or self._busy
                         or proto.lost or proto.eof))

    @property
    def chainable(self) -> bool:
        """The final dot of a transaction is out and its reply not read yet, over a
        PIPELINING session that is sane so far: the next message may be sent now, its
        envelope right behind the dot (RFC 2920 3.1)."""
        proto = self._proto
        return (proto is not None and self._turn is not None and not self._turn.done()
                and self.extensions.pipelining
                and not (self._dead or self._failed or self._closed or self._busy
                         or proto.lost or proto.eof))

    async def send(self, *, sender: str, recipients: Sequence[OutRecipient], body: Body,
                   size: int, eightbit: bool = False, smtputf8: bool = False,
                   ret: str | None = None, envid: str | None = None) -> TransactionResult:
        """One mail transaction (RFC 5321 3.3): MAIL, RCPT for each recipient, DATA.

        `sender` "" is the null reverse-path. `body` is the message content with CRLF line
        ends, as bytes, a path or a binary file object (read in chunks, not closed here).
        `size` is the content size for SIZE (RFC 1870). Addresses holding CR, LF or NUL, or
        not valid Paths, raise ValueError before anything is written. When the transaction
        did not end with the final dot, RSET is sent, so the connection stays reusable.
        """
        if self._busy:
            raise RuntimeError("send() while another operation runs on this connection")
        if not recipients:
            raise ValueError("send() needs at least one recipient")
        ext = self.extensions
        # Build every command first: a bad address is refused before a byte is written.
        if not smtputf8 and not (sender.isascii()
                                 and all([r.address.isascii() for r in recipients])):
            raise ValueError("non-ASCII address in a message without SMTPUTF8")
        mail_cmd = mail_from(
            sender,
            size=size if ext.size is not None else None,
            body="8BITMIME" if eightbit and ext.eightbitmime else None,
            smtputf8=smtputf8,
            # RFC 3461 4: DSN parameters only to a server that announced DSN; without it,
            # the relaying MTA itself is responsible for the notifications (RFC 3461 6.2).
            ret=ret if ext.dsn else None,
            envid=envid if ext.dsn else None,
        )
        rcpt_cmds = [
            rcpt_to(r.address, notify=r.notify if ext.dsn else None,
                    orcpt=r.orcpt if ext.dsn else None)
            for r in recipients
        ]
        n = len(recipients)
        if smtputf8 and not ext.smtputf8:
            # RFC 6531 3.2: a message that needs SMTPUTF8 is not sent to a server without it.
            refusal = reply(553, "5.6.7", _NO_UTF8)
            return TransactionResult(recipients=(refusal,) * n, data=None, synthesized=True)
        if ext.size and size > ext.size:
            # RFC 1870 6: the server told us its limit; MAIL would only be refused.
            refusal = reply(552, "5.3.4", f"{_TOO_BIG} ({size} > {ext.size})")
            return TransactionResult(recipients=(refusal,) * n, data=None, synthesized=True)
        # Behind a transaction whose final dot is out (chainable): its reply comes first.
        previous = self._turn if self.chainable else None
        if previous is None and not self.usable:
            self._failed = True
            raise DeliveryError(_bad_connection("connection not usable"), "mail")
        source = await _BodySource.open(body)
        if self._busy or (previous is None and not self.usable):
            # (Another send() took the connection while the body file was opened.)
            await source.close()
            raise DeliveryError(_bad_connection("connection not usable"), "mail")
        self._busy = True
        me = self._writer = object()
        try:
            return await self._transaction(mail_cmd, rcpt_cmds, source, previous)
        except DeliveryError:
            raise
        except BaseException:
            # Cancelled, or the body could not be read mid-DATA: the server must not take
            # a torn message for a whole one, so the connection goes without the final dot.
            self._kill("transaction aborted")
            raise
        finally:
            if self._writer is me:        # (not when the next send() owns it already)
                self._writer = None
                self._busy = False
            await source.close()

    async def verify(self, address: str) -> Reply:
        """A callahead: does the next hop take ``address``? MAIL FROM:<> (a bounce, which no
        server may refuse for its sender, RFC 5321 4.5.5), RCPT TO, then RSET: nothing is
        sent. Returns the RCPT reply; raises DeliveryError when the session fails."""
        mail = await self._command(b"MAIL FROM:<>\r\n", "mail")
        if mail.code != 250:
            await self._rset_after_failure()
            raise DeliveryError(mail, "mail", from_server=True)
        answer = await self._command(b"RCPT TO:<" + address.encode() + b">\r\n", "rcpt")
        await self.reset()
        return answer

    async def reset(self) -> None:
        """RSET (RFC 5321 4.1.1.5): a clean state before the next message."""
        if not self.usable:
            self._failed = True
            raise DeliveryError(_bad_connection("connection not usable"), "rset")
        answer = await self._command(b"RSET\r\n", "rset")
        if answer.code != 250:
            self._failed = True
            raise DeliveryError(answer, "rset", from_server=True)

    async def close(self) -> None:
        """QUIT (RFC 5321 4.1.1.10) when the session is sane, then close. Never raises."""
        if self._closed:
            return
        self._closed = True
        transport, proto = self._transport, self._proto
        if transport is None or proto is None:
            return
        if self._dead:
            transport.abort()           # _kill() did; a failed TLS handshake leaves no
            return                      # connection_lost() to wait for
        try:
            if not (self._busy or proto.lost or proto.eof):
                self._note(b"QUIT\r\n")
                transport.write(b"QUIT\r\n")
                await self._reply("quit", timeout=min(self.policy.command_timeout,
                                                      _QUIT_TIMEOUT))
        except Exception:          # noqa: BLE001 - a QUIT that fails changes nothing
            pass
        self._trace_unanswered()
        self._stop_timer()
        try:
            transport.close()
            await asyncio.wait_for(asyncio.shield(proto.closed), _CLOSE_TIMEOUT)
        except Exception:          # noqa: BLE001
            transport.abort()

    # --- session setup -----------------------------------------------------------------------

    async def _connect(self) -> None:
        policy = self.policy
        loop = self._loop
        ctx = None
        stage = "connect"
        if policy.implicit_tls:
            stage = "tls"
            ctx = self._context("tls")
        self._proto = _Protocol(self._parser, loop)
        try:
            async with asyncio.timeout(policy.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: self._proto, self.address, self.port, ssl=ctx,
                    server_hostname=self._server_name() if ctx else None,
                    ssl_handshake_timeout=policy.connect_timeout if ctx else None)
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(_tls_failed(f"certificate: {exc.verify_message}"), stage,
                                str(exc)) from None
        except ssl.SSLError as exc:
            raise DeliveryError(_tls_failed(f"handshake: {exc.reason}"), stage,
                                str(exc)) from None
        except TimeoutError:
            raise DeliveryError(_no_answer("connect timed out"), "connect") from None
        except OSError as exc:
            raise DeliveryError(_no_answer(exc.strerror or type(exc).__name__), "connect",
                                str(exc)) from None
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            host, port = peer[0], peer[1]
            self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if ctx is not None:
            self._record_tls(transport)

    async def _greeting_and_hello(self) -> None:
        # RFC 5321 3.1 / 4.3.1: the greeting is 220; 554 (or anything else) means no.
        greeting = await self._reply("greeting")
        self.greeting = greeting
        if greeting.code != 220:
            self._failed = True
            raise DeliveryError(greeting, "greeting", from_server=True)
        await self._hello()

    async def _start_session(self) -> None:
        policy = self.policy
        await self._greeting_and_hello()
        if self.tls_version is None and policy.tls is not TlsMode.NONE:
            await self._starttls()
        if policy.username is not None:
            await self._auth()

    async def _hello(self) -> None:
        """EHLO; HELO when EHLO is refused with 5xx (RFC 5321 4.1.4, 3.2)."""
        answer = await self._command(command("EHLO", self.policy.helo), "ehlo")
        if answer.code == 250:
            self.extensions = Extensions.parse(answer)
            return
        if answer.permanent:
            answer = await self._command(command("HELO", self.policy.helo), "ehlo")
            if answer.code == 250:
                self.extensions = Extensions()          # HELO: no extensions
                return
        self._failed = True
        raise DeliveryError(answer, "ehlo", from_server=True)

    async def _starttls(self) -> None:
        """STARTTLS (RFC 3207) as `policy.tls` says, then EHLO again (RFC 3207 4.2)."""
        mode = self.policy.tls
        if not self.extensions.starttls:
            if mode is TlsMode.OPPORTUNISTIC:
                return
            self._failed = True
            raise DeliveryError(_tls_unsupported("STARTTLS not offered"), "starttls")
        answer = await self._command(b"STARTTLS\r\n", "starttls")
        if answer.code != 220:
            # RFC 3207 4: nothing was negotiated, the session is still plain and sane; an
            # opportunistic client may go on without TLS, the others may not.
            if mode is TlsMode.OPPORTUNISTIC:
                return
            self._failed = True
            raise DeliveryError(_tls_unsupported(f"STARTTLS refused: {answer}"), "starttls")
        ctx = self._context("starttls")
        loop = self._loop
        # RFC 3207 4.2: forget everything from before TLS. Whatever the server (or a man
        # in the middle) sent after the 220 in plaintext is dropped here, not read as a
        # reply from inside TLS. No await between this and start_tls(): no data can slip in.
        self._parser.clear()
        self.extensions = Extensions()
        old = self._transport
        assert old is not None and self._proto is not None     # connected: EHLO was answered
        try:
            async with asyncio.timeout(self.policy.command_timeout):
                new = await loop.start_tls(old, self._proto, ctx,
                                           server_hostname=self._server_name(),
                                           ssl_handshake_timeout=self.policy.command_timeout)
        except BaseException as exc:
            # No plaintext fallback on this connection: a MITM could force it at will.
            # The reply is temporary; the caller may retry (and decide about plaintext).
            self._kill("TLS handshake failed")
            if isinstance(exc, ssl.SSLCertVerificationError):
                why = f"certificate: {exc.verify_message}"
            elif isinstance(exc, ssl.SSLError):
                why = f"handshake: {exc.reason}"
            elif isinstance(exc, TimeoutError):
                why = "handshake timed out"
            elif isinstance(exc, (OSError, ConnectionError)):
                why = f"handshake: {exc}"
            else:
                raise
            raise DeliveryError(_tls_failed(why), "starttls", repr(exc)) from None
        assert new is not None      # start_tls returns None only for a closing transport
        self._transport = new
        self._record_tls(new)
        await self._hello()

    async def _auth(self) -> None:
        """AUTH PLAIN (RFC 4616) or LOGIN, with the policy's credentials (RFC 4954)."""
        policy = self.policy
        if self.tls_version is None and not policy.auth_without_tls:
            # Never a password in plaintext unless the route says so explicitly.
            self._failed = True
            raise DeliveryError(reply(451, "4.7.11", "AUTH needs TLS, and TLS is not active"),
                                "auth")
        if policy.password is not None and not isinstance(policy.password, str):
            await self._auth_oauth(policy.password)
            return
        user, password = policy.username or "", policy.password or ""
        if "\0" in user or "\0" in password:
            self._failed = True
            raise DeliveryError(reply(451, "4.7.0", "AUTH credentials hold NUL"), "auth")
        offered = self.extensions.auth
        if "PLAIN" in offered:
            self.auth_mechanism = "PLAIN"
            token = _b64(f"\0{user}\0{password}")
            answer = await self._command(command("AUTH", "PLAIN", token), "auth",
                                         shown="PLAIN ***")
            if answer.code == 334:
                # RFC 4954 4: a server that ignored the initial response asks for it.
                answer = await self._command(token.encode() + b"\r\n", "auth", shown="***")
        elif "LOGIN" in offered:
            self.auth_mechanism = "LOGIN"
            answer = await self._command(b"AUTH LOGIN\r\n", "auth")
            for secret in (user, password):
                if answer.code != 334:
                    break
                answer = await self._command(_b64(secret).encode() + b"\r\n", "auth",
                                             shown="***")
        else:
            self._failed = True
            offer = " ".join(offered) or "none"
            raise DeliveryError(
                reply(451, "4.7.4", f"No common AUTH mechanism (offered: {offer})"), "auth")
        if answer.code == 334:
            # Still challenged after our last word: cancel the exchange (RFC 4954 4).
            answer = await self._command(b"*\r\n", "auth", shown="*")
        if answer.code != 235:
            self._failed = True
            raise DeliveryError(answer, "auth", from_server=True)   # the server's reply, as it is

    async def _auth_oauth(self, login: OAuthLogin) -> None:
        """AUTH XOAUTH2 (Google's and Microsoft's SASL mechanism) or OAUTHBEARER (RFC 7628)
        with an access token of the route's provider, for the mailbox `username`. Only over
        TLS (the token is a bearer credential: whoever sees it can use it); _auth checked."""
        from relaywarden.oauth import TokenError

        user = self.policy.username or ""
        mechanism = login.mechanism
        if mechanism not in self.extensions.auth:
            self._failed = True
            offer = " ".join(self.extensions.auth) or "none"
            raise DeliveryError(
                reply(451, "4.7.4", f"AUTH {mechanism} not offered (offered: {offer})"), "auth")
        try:
            token = await login.provider.token(user, stale=self._stale_token)
        except TokenError as exc:
            # No token is a matter for the admin (or time): the mail waits, never bounces.
            self._failed = True
            raise DeliveryError(reply(451, "4.7.0", f"no OAuth token: {exc.reason}"), "auth",
                                exc.reason) from None
        if any(c in user for c in "\0\1\r\n") or not token.isprintable():
            self._failed = True
            raise DeliveryError(reply(451, "4.7.0", "AUTH credentials hold control characters"),
                                "auth")
        self.auth_mechanism = mechanism
        if mechanism == "XOAUTH2":
            # https://developers.google.com/gmail/imap/xoauth2-protocol, which Exchange Online
            # follows too: user=..^Aauth=Bearer ..^A^A
            initial = f"user={user}\1auth=Bearer {token}\1\1"
            cancel = b"\r\n"          # the client's empty answer to the error challenge
        else:
            # RFC 7628 3.1: a GS2 header naming the authorization identity (saslname:
            # "=" and "," escaped, RFC 5801 4), then host, port and the bearer token.
            name = user.replace("=", "=3D").replace(",", "=2C")
            initial = (f"n,a={name},\1host={self._server_name()}\1port={self.port}"
                       f"\1auth=Bearer {token}\1\1")
            cancel = b"AQ==\r\n"      # RFC 7628 3.2.3: a lone %x01 ends a failed exchange
        answer = await self._command(command("AUTH", mechanism, _b64(initial)), "auth",
                                     shown=f"{mechanism} ***")
        challenge = None
        if answer.code == 334:
            # RFC 7628 3.2.2 (and XOAUTH2 alike): a failure comes as a 334 with the JSON
            # error status first; the client answers, and the server sends the final 535.
            challenge = answer.text
            answer = await self._command(cancel, "auth", shown="*")
        if answer.code == 235:
            return
        self._failed = True
        detail = None
        if challenge:
            with contextlib.suppress(ValueError):
                detail = base64.b64decode(challenge, validate=True).decode("utf-8", "replace")
        if answer.code == 535 and answer.enhanced in (None, "5.7.3", "5.7.8") and not self._stale_token:
            self._token_refused = (token, answer)       # open() tries once more
            return
        if answer.code == 535 or answer.permanent:
            # A token refused twice, or a refusal we cannot mend with a token: the mailbox or
            # the app lacks the right (SMTP AUTH off, no SendAs). The mail waits for the admin.
            why = f"AUTH {mechanism} for {user} refused: {answer}"
            if self._stale_token:
                why = (f"AUTH {mechanism} refused a new token of oauth.{login.provider.name} "
                       f"too: {answer}")
            raise DeliveryError(reply(454, "4.7.0", why), "auth", detail)
        raise DeliveryError(answer, "auth", detail, from_server=True)

    # --- the transaction ---------------------------------------------------------------------

    async def _transaction(self, mail_cmd: bytes, rcpt_cmds: list[bytes],
                           source: _BodySource,
                           previous: asyncio.Future[None] | None = None) -> TransactionResult:
        n = len(rcpt_cmds)
        data_answer: Reply | None = None
        if self.extensions.pipelining:
            # RFC 2920 3.1: MAIL, the RCPTs and DATA go as one group; the replies come back
            # in order and each of them must be checked.
            if self._log is not None:
                for line in (mail_cmd, *rcpt_cmds, b"DATA\r\n"):
                    self._note(line)
            group = mail_cmd + b"".join(rcpt_cmds) + b"DATA\r\n"
            if previous is not None:
                # Right behind the previous transaction's final dot (in the same segment
                # when that dot still waits in _outbuf), then wait for its reply to be read.
                self._write_behind(group)
                await self._after(previous)
                if self._dead or self._failed or self._proto is None or self._proto.lost:
                    # That transaction broke the connection: ours was never answered. Not
                    # this host's fault: the engine tries again on a new connection.
                    self._failed = True
                    raise DeliveryError(_bad_connection("connection lost"), "mail")
            else:
                await self._write(group, "mail")
            mail_answer = await self._reply("mail")
            rcpt_answers = [await self._reply("rcpt") for _ in range(n)]
            data_answer = await self._reply("data")
        else:
            mail_answer = await self._command(mail_cmd, "mail")
            rcpt_answers = []
            if mail_answer.code < 400:        # .positive, without its call
                for cmd in rcpt_cmds:
                    rcpt_answers.append(await self._command(cmd, "rcpt"))
                if any([a.code < 400 for a in rcpt_answers]):
                    data_answer = await self._command(b"DATA\r\n", "data")

        if mail_answer.code >= 400:
            # The sender was refused: that is the answer for every recipient (their own
            # replies, if pipelined, only say "need MAIL first").
            results = [mail_answer] * n
        else:
            results = list(rcpt_answers)
        accepted = [i for i, a in enumerate(results) if a.code < 400]

        if not accepted:
            if data_answer is not None and data_answer.code == 354:
                # RFC 2920 3.1: DATA was accepted with no recipient; end it with a lone dot.
                self._note(None, ".", "", 3)
                await self._write(b".\r\n", "data")
                await self._reply("data", timeout=self.policy.data_timeout)
            await self._rset_after_failure()
            return TransactionResult(recipients=tuple(results), data=None)

        assert data_answer is not None
        if data_answer.code != 354:
            for i in accepted:
                results[i] = data_answer
            await self._rset_after_failure()
            return TransactionResult(recipients=tuple(results), data=data_answer)

        # RFC 5321 4.5.2: the content, dot-stuffed, then <CRLF>.<CRLF>.
        stuffer = DotStuffer()
        held = b""    # the last chunk goes out with the final dot: one write for a small body
        sent = 0      # the message as sent (stuffed, with the final dot): the log's cs-bytes
        while chunk := await source.read(_CHUNK):
            if held:
                await self._write(held, "data")
                sent += len(held)
            held = stuffer.feed(chunk)
        held += stuffer.end()
        # time-taken of "." runs from the final dot to the reply, as in the inbound log.
        self._note(None, ".", "", sent + len(held))
        on_dot = self.on_dot
        if on_dot is not None and self.extensions.pipelining:
            # The writing side is free once the dot is out: the owner may give the
            # connection to the next message now, whose envelope follows the dot.
            turn = self._turn = self._loop.create_future()
            self._busy = False
            self._writer = None
            self.on_dot = None
            try:
                # The owner wakes the next message first, the dot is queued after: that
                # message runs before the queued bytes leave, and its envelope joins them.
                on_dot(self)
                self._write_behind(held)
                final = await self._reply("data", timeout=self.policy.data_timeout)
            finally:
                self._end_turn(turn)
        else:
            await self._write(held, "data")
            final = await self._reply("data", timeout=self.policy.data_timeout)
        for i in accepted:
            results[i] = final
        return TransactionResult(recipients=tuple(results), data=final)

    async def _after(self, turn: asyncio.Future[None]) -> None:
        """Until ``turn`` (the previous transaction's) is resolved, without cancelling it
        if this wait is cancelled."""
        if turn.done():
            return
        waiter = self._loop.create_future()
        self._turn_waiters.append(waiter)
        try:
            await waiter
        except BaseException:           # cancelled: ours no longer waits
            with contextlib.suppress(ValueError):
                self._turn_waiters.remove(waiter)
            raise

    def _end_turn(self, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.set_result(None)
        waiters, self._turn_waiters = self._turn_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _rset_after_failure(self) -> None:
        """RSET after a transaction that did not end with the final dot (RFC 5321 4.1.1.5).

        The per-recipient result stands whatever happens here; only the connection is
        not reused when RSET fails.
        """
        try:
            answer = await self._command(b"RSET\r\n", "rset")
        except DeliveryError:
            return                      # _broken() already made the connection unusable
        if answer.code != 250:
            self._failed = True

    # --- I/O helpers -------------------------------------------------------------------------

    async def _command(self, line: bytes, stage: str, *, timeout: float | None = None,
                       shown: str | None = None) -> Reply:
        """Send one command and read its reply. ``shown``: what the protocol log shows of
        the command's argument instead of the line (AUTH: never the credentials)."""
        if shown is None:
            self._note(line)
        else:
            self._note(None, "AUTH", shown, len(line))
        await self._write(line, stage)
        return await self._reply(stage, timeout=timeout)

    def _write_behind(self, data: bytes) -> None:
        """Queue ``data`` to leave at the end of this loop round, together with whatever
        else is written meanwhile (a final dot and the next envelope: one segment). No
        wait for the buffer to drain: what follows waits for a reply first anyway."""
        self._outbuf.append(data)
        if len(self._outbuf) == 1:
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        data = b"".join(self._outbuf)
        self._outbuf.clear()
        transport = self._transport
        if data and transport is not None and not transport.is_closing() and not self._dead:
            transport.write(data)

    async def _write(self, data: bytes, stage: str) -> None:
        proto, transport = self._proto, self._transport
        if proto is None or transport is None or proto.lost or self._dead:
            raise self._broken(stage, _bad_connection("connection lost"))
        if self._outbuf:                # behind bytes that are still waiting: keep the order
            self._outbuf.append(data)
            return
        transport.write(data)
        if not proto.writable:
            # The transport's buffer is full: wait for it to drain, within command_timeout.
            self._expect(self.policy.command_timeout)
            try:
                while not proto.writable:       # (connection_lost() sets it too)
                    if self._expired:
                        raise self._broken(stage, _bad_connection("timeout while sending"))
                    await self._block()
            finally:
                self._waiting = False
        if proto.lost:
            raise self._broken(stage, _bad_connection("connection lost"))

    async def _reply(self, stage: str, *, timeout: float | None = None) -> Reply:
        """The next reply, within `timeout` (default: command_timeout)."""
        proto = self._proto
        assert proto is not None
        parser = self._parser
        try:
            # A reply already read (pipelined replies come together) needs no wait.
            answer = parser.next_reply()
            if answer is None:
                self._expect(self.policy.command_timeout if timeout is None else timeout)
                try:
                    while answer is None:
                        if proto.lost or proto.eof:
                            raise self._broken(stage, _bad_connection("connection lost"))
                        if self._expired:
                            raise self._broken(stage, _bad_connection(
                                f"timeout waiting for the {stage} reply"))
                        await self._block()
                        answer = parser.next_reply()
                finally:
                    self._waiting = False
        except ProtocolError as exc:
            raise self._broken(stage, reply(451, "4.5.0", f"Protocol error: {exc}")) from None
        if self._log is not None:
            self._trace_reply(answer)
        if proto.reading_paused and parser.buffered < _READ_HIGH_WATER // 2:
            proto.reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        if answer.code == 421:
            # RFC 5321 3.8: the server is closing the channel; nothing more will be read.
            self._dead = True            # (the 421 is in the protocol log already)
            raise self._broken(stage, answer)
        return answer

    # --- the connection's timer ----------------------------------------------------------
    #
    # RFC 5321 4.5.3.2 gives each stage its own timeout (command_timeout for most replies,
    # data_timeout for the reply to the final dot). A wait sets the connection's deadline;
    # one timer per connection enforces it, instead of an asyncio.timeout per reply (a
    # TimerHandle made and cancelled for every reply, and get_running_loop() lookups). The
    # timer is re-armed lazily: it is moved earlier only when a wait's deadline comes before
    # it (a QUIT's short timeout, a data_timeout shorter than command_timeout); when it fires
    # before the deadline of the wait under way, it is set again for that deadline; when it
    # fires with no wait under way (an idle pooled connection), it is simply not set again
    # until the next wait.

    def _expect(self, timeout: float) -> None:
        """A wait of at most ``timeout`` seconds starts now (ended by `_waiting = False`)."""
        loop = self._loop
        deadline = loop.time() + timeout
        self._deadline = deadline
        self._waiting = True
        self._expired = False
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._waiting or self._proto is None:
            return
        deadline = self._deadline
        # (1 ms of slack: a loop's timers may fire a hair early, by their clock resolution)
        if self._loop.time() + 0.001 >= deadline:
            self._expired = True
            self._proto.wake()
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _block(self) -> None:
        """Until the protocol wakes us: data, EOF, loss, drain, or the timer."""
        proto = self._proto
        assert proto is not None        # connected
        waiter = proto.waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            proto.waiter = None

    def _broken(self, stage: str, answer: Reply) -> DeliveryError:
        self._kill("" if self._dead else str(answer))
        return DeliveryError(answer, stage, from_server=True)

    def _kill(self, reason: str = "") -> None:
        """The session cannot go on: drop the connection without QUIT. ``reason``: why,
        for the protocol log's CLOSE line (none: no such line)."""
        self._dead = True
        self._failed = True
        self._stop_timer()
        if self._log is not None:
            self._trace_unanswered()
            if reason:
                self._trace_line("CLOSE", reason, None, 0, time.monotonic())
        if self._transport is not None:
            self._transport.abort()

    # --- the protocol log --------------------------------------------------------------------

    def _note(self, line: bytes | None, method: str = "", query: str = "",
              octets: int = 0) -> None:
        """A command goes out now: it waits for its reply in the log. ``line``: as sent
        (method and query are read from it when the reply comes), or None and the rest."""
        if self._log is not None:
            # With the message's queue ID and route: the reply may come when the connection
            # already carries the next message (a final dot answered after the next MAIL).
            self._sent.append((line, method, query, len(line) if line else octets,
                               time.monotonic(), self.queue_id, self.route))

    def _trace_reply(self, answer: Reply) -> None:
        """The reply to the oldest command waiting (none: the greeting, "CONNECT")."""
        if not self._sent:
            self._trace_line("CONNECT", "", answer, 0, self._started)
            return
        line, method, query, octets, sent_at, queue_id, route = self._sent.popleft()
        if line is not None:
            method, query = _shown(line)
        if method == "AUTH" and answer.code == 235:
            self._logged_in = self.policy.username
        self._trace_line(method, query, answer, octets, sent_at, queue_id, route)

    def _trace_unanswered(self) -> None:
        """Commands whose reply never came (the connection broke, timed out): status 0."""
        while self._sent:
            line, method, query, octets, sent_at, queue_id, route = self._sent.popleft()
            if line is not None:
                method, query = _shown(line)
            self._trace_line(method, query, None, octets, sent_at, queue_id, route)

    def _trace_line(self, method: str, query: str, answer: Reply | None, octets: int,
                    since: float, queue_id: str | None = None, route: str | None = None) -> None:
        log = self._log
        assert log is not None          # called only when there is a protocol log
        if queue_id is None:
            queue_id = self.queue_id
        slog = self._slog
        if route is not None and route != self.route:
            # A command of the previous message, sent under another route: its own line.
            slog = log.session(
                client_ip=slog.client_ip if slog else "", site=route,
                server_name=self._server_name(), server_ip=self.address, server_port=self.port,
                session_id=self._session_id)
        elif slog is None:
            local = ("", 0)
            if self._transport is not None:
                local = self._transport.get_extra_info("sockname") or local
            slog = log.session(
                client_ip=local[0].split("%", 1)[0], site=self.route,
                server_name=self._server_name(), server_ip=self.address, server_port=self.port,
                session_id=self._session_id)
            self._session_id = slog.session_id
            if self._transport is not None:
                self._slog = slog       # (before the connection: c-ip is not known yet)
        slog.record(self._logged_in, method, query,
                    0 if answer is None else answer.code,
                    0 if answer is None else self._parser.last_octets, octets,
                    int((time.monotonic() - since) * 1000), queue_id)

    def _server_name(self) -> str:
        return self.policy.server_name or self.address

    def _context(self, stage: str) -> ssl.SSLContext:
        verify = self.policy.tls is TlsMode.VERIFY
        try:
            return _tls_context(verify, self.policy.ca_file if verify else None)
        except (OSError, ssl.SSLError) as exc:          # a missing or bad CA file
            self._failed = True
            raise DeliveryError(_tls_failed(f"cannot load CA file: {exc}"), stage) from None

    def _record_tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls_version = ssl_object.version()
            cipher = ssl_object.cipher()
            self.tls_cipher = cipher[0] if cipher else None


#: The commands without an argument, as _shown shows them: a look-up, not a decode.
_CONSTANT_SHOWN = {f"{verb}\r\n".encode(): (verb, "") for verb in ("DATA", "RSET", "QUIT",
                                                                  "STARTTLS", "NOOP")}


def _shown(line: bytes) -> tuple[str, str]:
    """A command line as the protocol log shows it: (verb, argument). AUTH shows its
    mechanism only, whatever follows it (the initial response holds the password)."""
    constant = _CONSTANT_SHOWN.get(line)
    if constant is not None:
        return constant
    verb, _, argument = line.rstrip(b"\r\n").decode("utf-8", "replace").partition(" ")
    verb = verb.upper()
    if verb == "AUTH" and " " in argument:
        argument = argument.split(" ", 1)[0] + " ***"
    return verb, argument


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


#: Reads that do not wait for the disk (preadv2 RWF_NOWAIT, Linux 4.14): False once the
#: file system said it cannot do them.
_nowait = hasattr(os, "RWF_NOWAIT")


class _BodySource:
    """Message content from bytes, a path or a binary file, read without blocking the loop.

    A body file (a path) is read at positions, on the loop's thread when the octets are in
    the page cache (RWF_NOWAIT: the read either copies cached pages or fails at once), in a
    thread otherwise. A queued message's file was written a moment ago, so it is nearly
    always cached; a thread for each read cost ~50 us of hand-over (the 40 reads of a 5 MB
    message: about half of the delivery process's CPU for it, issue 15). A slow disk still
    never stalls the other connections: what is not cached is read in a thread, as before."""

    def __init__(self, data: memoryview | None, file: BinaryIO | None, owned: bool) -> None:
        self._data = data
        self._pos = 0
        self._file = file
        self._owned = owned
        self._fd = file.fileno() if owned and file is not None else -1

    @classmethod
    async def open(cls, body: Body) -> _BodySource:
        if isinstance(body, (bytes, bytearray, memoryview)):
            return cls(memoryview(body).cast("B"), None, False)
        if isinstance(body, os.PathLike):
            return cls(None, await asyncio.to_thread(open, body, "rb"), True)
        if hasattr(body, "read"):
            return cls(None, body, False)
        raise TypeError(f"body must be bytes, a path or a binary file, not {type(body).__name__}")

    async def read(self, n: int) -> bytes:
        if self._data is not None:
            chunk = bytes(self._data[self._pos:self._pos + n])
            self._pos += len(chunk)
            return chunk
        if self._fd >= 0:
            # Our own file: read at self._pos (its offset is never used), cached pages here.
            cached = self._cached(n) if _nowait else None
            if cached is not None:
                return cached
            # Not cached, or its end (RWF_NOWAIT cannot tell the two apart from a read of
            # nothing): a thread reads, waiting for the disk if need be.
            return await asyncio.to_thread(self._pread, n, 0)
        # Disk reads go to a thread: a slow disk must not stall every other connection.
        assert self._file is not None       # no bytes: a file
        chunk = await asyncio.to_thread(self._file.read, n)
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError("the body file must be opened in binary mode")
        return bytes(chunk)

    def _cached(self, n: int) -> bytes | None:
        """What of the next ``n`` octets is in the page cache; None: nothing (or the end)."""
        global _nowait
        try:
            chunk = self._pread(n, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                _nowait = False             # this file system (or kernel) has no RWF_NOWAIT
                return None
            raise
        return chunk or None

    def _pread(self, n: int, flags: int) -> bytes:
        buf = bytearray(n)
        got = os.preadv(self._fd, [buf], self._pos, flags)
        self._pos += got
        return bytes(buf) if got == n else bytes(memoryview(buf)[:got])

    async def close(self) -> None:
        if self._owned and self._file is not None:
            await asyncio.to_thread(self._file.close)
