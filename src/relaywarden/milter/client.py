"""The asyncio side of the milter protocol: one connection per milter and SMTP session.

A connection is opened at the first message of a session that a milter is asked about:
option negotiation, connect, helo. Each message's conversation runs at the end of DATA,
when the relay has the message and has not yet answered the final dot: mail, rcpt (each
accepted recipient), data, the header fields, end of headers, the body in chunks of at
most 65535 octets, end of message. The session's next message goes over the same
connection (after SMFIC_ABORT, as Postfix sends it after each message); SMFIC_QUIT ends it
with the session (server/milters.py MilterChain). Sendmail and Postfix talk to a milter
while the SMTP commands arrive; sending the same sequence at the end gives the milter the
same facts and keeps a slow milter from holding a connection's RCPT replies (its verdict
can only be applied after the dot anyway: see README "Milters").
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from relaywarden.milter import protocol as p
from relaywarden.smtp.address import AddressError, parse_path


@dataclass(frozen=True, slots=True, kw_only=True)
class MilterSpec:
    """One [milters.NAME] table."""
    name: str
    socket: str                       # "inet:HOST:PORT", "inet6:[HOST]:PORT", "unix:/path"
    connect_timeout: float = 5.0
    command_timeout: float = 30.0
    eom_timeout: float = 120.0
    on_failure: str = "tempfail"      # "tempfail" | "accept"


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the MTA tells a milter about the session and the message."""
    queue_id: str
    hostname: str                     # macro j: this relay's name
    listener: str                     # {daemon_name}
    client_ip: str
    client_port: int = 0
    client_name: str | None = None    # verified reverse name, else "[ip]"
    helo: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    auth_user: str | None = None
    auth_type: str | None = None
    tls: tuple[str, str, int] | None = None   # (version, cipher, bits)


@dataclass(slots=True)
class Outcome:
    """What one milter decided.

    action: "continue" (go on; ``changes`` to apply), "reject" / "tempfail" (``reply``:
    (code, enhanced, text) or None for the default), "quarantine" (``reason``), "discard",
    or "failed" (the milter could not answer: ``reason`` says why).
    ``envelope``: sender and recipient changes in the order sent (addresses checked);
    ``body``: the replaced body, or None."""
    action: str
    reply: tuple[int, str | None, str] | None = None
    reason: str = ""
    changes: list[p.HeaderChange] = field(default_factory=list)
    envelope: list[p.EnvelopeChange] = field(default_factory=list)
    body: bytes | None = None


class _Stop(Exception):
    def __init__(self, verdict: p.Verdict) -> None:
        self.verdict = verdict


def parse_socket(text: str) -> tuple[str, str, int]:
    """("inet", host, port) or ("unix", path, 0). Sendmail's inet:PORT@HOST is taken too."""
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or not rest:
        raise ValueError('expected "inet:HOST:PORT" or "unix:/path"')
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError("a unix socket needs an absolute path")
        return "unix", rest, 0
    if kind in ("inet", "inet6"):
        if "@" in rest:                                  # Sendmail: inet:11332@127.0.0.1
            port_text, _, host = rest.partition("@")
        else:
            host, _, port_text = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError("expected inet:HOST:PORT with a port from 1 to 65535")
        return "inet", host, int(port_text)
    raise ValueError(f"unknown socket type {kind!r} (inet, inet6, unix)")


def _reply_text(text: str) -> tuple[int, str | None, str] | None:
    """A SMFIR_REPLYCODE text ("550 5.7.1 Spam message rejected") as (code, enhanced,
    text); None if it is not a 4xx/5xx reply (a milter may not accept with it)."""
    first = text.replace("\r\n", "\n").split("\n")[0]
    code, _, rest = first.partition(" ")
    if len(code) == 4 and code[3] == "-":
        code = code[:3]
    if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
        return None
    enhanced = None
    word, _, tail = rest.partition(" ")
    parts = word.split(".")
    # RFC 3463 2: class.subject.detail; its class must agree with the reply code's.
    if len(parts) == 3 and all(x.isdigit() for x in parts) and parts[0] == code[0]:
        enhanced, rest = word, tail
    clean = "".join(c if " " <= c <= "~" else "?" for c in rest)[:200]
    return int(code), enhanced, clean or "Message refused by content filter"


def _message(chunks: Iterable[bytes]) -> tuple[list[tuple[bytes, bytes]], Iterator[bytes]]:
    """The header fields and an iterator over the rest (the body)."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        fields, start = p.split_message(head)
        if start >= 0:
            rest = head[start:]
            def body(rest=rest, it=it):
                if rest:
                    yield rest
                yield from it
            return fields, body()
    fields, start = p.split_message(head + b"\r\n\r\n")   # no body at all
    return fields, iter(())


def _verdict(v: p.Verdict, changes: list[p.HeaderChange], quarantine: str | None,
             envelope: list[p.EnvelopeChange] | None = None, body: bytes | None = None
             ) -> Outcome:
    if v.kind == "replycode":
        parsed = _reply_text(v.text)
        if parsed is None:
            raise p.ProtocolError(f"replycode that is not a 4xx/5xx reply: {v.text[:80]!r}")
        return Outcome("tempfail" if parsed[0] < 500 else "reject", parsed, v.text)
    if v.kind in ("reject", "tempfail", "discard"):
        return Outcome(v.kind)
    # accept or continue: the message goes on with what the milter changed.
    return Outcome("continue" if quarantine is None else "quarantine",
                   reason=quarantine or "", changes=changes, envelope=envelope or [], body=body)


#: What is gathered before it is written out when no reply is due (a large body is sent
#: in pieces of about this size, each written before the next is read from the spool).
FLUSH_SIZE = 256 * 1024


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Link(asyncio.Protocol):
    """The socket of one milter connection. What the milter sends is decoded into packets
    as it arrives; what we send is gathered and written in one go when a reply is due (a
    milter that answers no step before the end of the message, as rspamd, gets a small
    message in one write rather than one per header). A milter speaks only when asked:
    anything it sends between messages, or its end of the connection, makes the link
    unusable (``error``)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = p.Decoder()
        self.packets: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.out: list[bytes] = []
        self.out_size = 0
        self.received = 0                      # packets received, ever
        self.error: Exception | None = None    # why this connection cannot be used any more
        self.busy = False                      # a conversation is under way
        self.paused = False                    # the transport's write buffer is full
        self.waiter: asyncio.Future | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.fail(p.ProtocolError("the milter sent data between messages"))
            return
        try:
            got = self.decoder.feed(data)
        except p.ProtocolError as exc:
            self.fail(exc)
            return
        self.received += len(got)
        self.packets.extend(got)
        self._wake()

    def eof_received(self) -> None:
        self.fail(ConnectionError("the milter closed the connection"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = exc or ConnectionError("the milter closed the connection")
        self.transport = None
        self.paused = False
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    # -- ours --

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    def flush(self) -> None:
        if self.error is not None:
            raise self.error
        if self.out:
            assert self.transport is not None         # connection_lost sets error
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out.clear()
            self.out_size = 0

    async def _wait(self, deadline: float) -> None:
        """Until _wake (a packet, the end of the connection, writing resumed) or the
        deadline (TimeoutError)."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    async def drain(self, timeout: float) -> None:
        """What was gathered, written; while the milter does not read, wait (a body is
        not held in memory), at most ``timeout`` seconds."""
        self.flush()
        deadline = self.loop.time() + timeout
        while self.paused:
            await self._wait(deadline)
            if self.error is not None:
                raise self.error

    async def packet(self, timeout: float) -> tuple[bytes, bytes]:
        """The milter's next packet, within ``timeout`` seconds (what was gathered is
        written first)."""
        if not self.packets:
            self.flush()
            deadline = self.loop.time() + timeout
            while not self.packets:
                if self.error is not None:
                    raise self.error
                await self._wait(deadline)
        return self.packets.popleft()


def connection_key(facts: Facts) -> tuple:
    """What a connection's connect and helo told the milter: a message whose facts differ
    (a new EHLO after STARTTLS) needs a connection of its own."""
    return (facts.hostname, facts.listener, facts.client_ip, facts.client_port,
            facts.client_name, facts.helo, facts.tls)


class Connection:
    """One connection to one milter, for the messages of one SMTP session, as Postfix
    keeps one per SMTP connection.

    Opened (``connect``) at the first message: option negotiation, connect and helo, once.
    Then ``message`` for each message: MAIL, RCPT (each recipient), DATA, the header
    fields, EOH, the body, EOM. After a message libmilter is back where a new MAIL may
    begin (its state after end of message, or after an abort, allows MAIL; the connect
    and helo macros stay); SMFIC_ABORT goes ahead of each further message, as Postfix
    sends it after each message, so that a milter that keeps the message's state until
    told (rspamd) starts the next one afresh. ``close`` sends SMFIC_QUIT. A connection
    that failed in any way (refused, timed out, garbage, closed by the milter) is closed
    and never used again.

    A verdict at connect or helo is the milter's word on the whole connection (Sendmail
    and Postfix apply it to every message after it): it is kept (``sticky``) and given
    for each message without asking again."""

    def __init__(self, spec: MilterSpec, link: _Link, key: tuple) -> None:
        self.spec = spec
        self.link = link
        self.key = key
        self.steps = p.Step(0)
        self.actions = p.Act(0)
        # The steps not sent, and those sent without waiting for a reply (from ``steps``).
        self.not_sent: frozenset[p.Cmd] = frozenset()
        self.no_reply: frozenset[p.Cmd] = frozenset()
        self.sticky: Outcome | None = None
        self.messages = 0
        self.closed = False
        # The last message failed because the milter had closed the connection before it
        # said a word about it: sending it again on a new connection is safe.
        self.stale = False

    @property
    def reusable(self) -> bool:
        link = self.link
        return (not self.closed and link.error is None and link.transport is not None
                and not link.transport.is_closing() and not link.packets)

    def close(self) -> None:
        """SMFIC_QUIT (after SMFIC_ABORT if a message is under way: the SMTP session
        ended) and the end of the connection; once."""
        if self.closed:
            return
        self.closed = True
        transport = self.link.transport
        if transport is not None and not transport.is_closing():
            transport.write((p.packet(p.Cmd.ABORT) if self.link.busy else b"")
                            + p.packet(p.Cmd.QUIT))
            transport.close()

    async def _answer(self, timeout: float):
        """The next reply other than "progress" (which starts the timeout again)."""
        while True:
            cmd, data = await self.link.packet(timeout)
            reply = p.parse_reply(cmd, data)
            if not isinstance(reply, p.Progress):
                return reply

    async def _step(self, cmd: p.Cmd, packet: bytes, macros: dict[str, str] | None = None):
        """Send one command (unless the milter asked not to get it) and, unless it said
        it does not answer it, read its verdict; a final verdict ends the conversation."""
        if cmd in self.not_sent:
            return None
        link = self.link
        if macros:
            link.send(p.macros(cmd, macros))
        link.send(packet)
        if cmd in self.no_reply:
            if link.out_size >= FLUSH_SIZE:
                await link.drain(self.spec.command_timeout)
            return None
        reply = await self._answer(self.spec.command_timeout)
        if not isinstance(reply, p.Verdict):
            raise p.ProtocolError(f"unexpected {type(reply).__name__} before end of message")
        if reply.kind == "skip":
            if cmd is not p.Cmd.BODY:
                raise p.ProtocolError("skip outside the body")
            return reply
        if reply.kind != "continue":
            raise _Stop(reply)
        return reply

    async def _start(self, facts: Facts) -> None:
        """Option negotiation, connect and helo."""
        spec, link = self.spec, self.link
        link.busy = True
        link.send(p.optneg())
        cmd, data = await link.packet(spec.command_timeout)
        if cmd != b"O":
            raise p.ProtocolError(f"expected option negotiation, got {cmd!r}")
        neg = p.parse_negotiation(data)
        # What both sides allow (rspamd asks for every action whatever is offered, as
        # Postfix and Sendmail take it): a modification outside it is refused at end of
        # message.
        self.actions = neg.actions & p.OFFERED_ACTIONS
        self.steps = steps = neg.steps & p.OFFERED_STEPS
        self.not_sent = frozenset(cmd for cmd, flag in p.NOT_SENT.items() if steps & flag)
        self.no_reply = frozenset(cmd for cmd, flag in p.NO_REPLY.items() if steps & flag)
        name = facts.client_name or f"[{facts.client_ip}]"
        connect_macros = {"j": facts.hostname, "_": f"{name} [{facts.client_ip}]",
                          "{daemon_name}": facts.listener, "{client_addr}": facts.client_ip,
                          "{client_name}": name, "{client_port}": str(facts.client_port),
                          "v": "relaywarden"}
        try:
            await self._step(p.Cmd.CONNECT, p.connect(name, facts.client_ip, facts.client_port),
                             connect_macros)
            helo_macros = {}
            if facts.tls is not None:
                helo_macros = {"{tls_version}": facts.tls[0], "{cipher}": facts.tls[1],
                               "{cipher_bits}": str(facts.tls[2])}
            await self._step(p.Cmd.HELO, p.helo(facts.helo or name), helo_macros)
        except _Stop as stop:
            self.sticky = _verdict(stop.verdict, [], None)
        # Connect and helo without a reply wait in ``link.out``: they go with the first
        # message's first write.
        link.busy = False

    async def message(self, facts: Facts, chunks: Iterable[bytes]) -> Outcome:
        """The milter's verdict on one message; never raises for the milter's faults (a
        failure closes the connection: Outcome "failed")."""
        if self.sticky is not None:
            return replace(self.sticky)
        link = self.link
        received = link.received
        self.stale = False
        link.busy = True
        try:
            if self.messages:
                link.send(p.packet(p.Cmd.ABORT))          # no reply (libmilter, Postfix)
            self.messages += 1
            try:
                outcome = await self._message(facts, chunks)
            except _Stop as stop:
                # A verdict before the end of the message: the milter is told that this
                # message is over (as Sendmail does) with the ABORT before the next one.
                outcome = _verdict(stop.verdict, [], None)
        except (OSError, TimeoutError, EOFError, p.ProtocolError) as exc:
            self.stale = (self.messages > 1 and link.received == received
                          and isinstance(exc, ConnectionError))
            self.close()
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return Outcome("failed", reason=f"milter {self.spec.name}: {what}")
        link.busy = False
        return outcome

    async def _message(self, facts: Facts, chunks: Iterable[bytes]) -> Outcome:
        spec, link = self.spec, self.link
        # The macros per stage are Sendmail's defaults (its Milter.macros.* options), which
        # the common milters read: rspamd and OpenDKIM take i, {auth_authen} and
        # {daemon_name}; clamav-milter {rcpt_addr} and i; {mail_host} / {rcpt_host} name the
        # domains. The mailer is "esmtp" as Sendmail's relay mailer, or "error" for the null
        # sender's host (Sendmail's own bounce mailer has none).
        mail_macros = {"i": facts.queue_id, "{mail_addr}": facts.sender,
                       "{mail_host}": facts.sender.rpartition("@")[2] if facts.sender else "",
                       "{mail_mailer}": "esmtp" if facts.sender else "error"}
        if facts.auth_user:
            mail_macros["{auth_authen}"] = facts.auth_user
            if facts.auth_type:
                mail_macros["{auth_type}"] = facts.auth_type
        await self._step(p.Cmd.MAIL, p.mail(facts.sender), mail_macros)
        for address in facts.recipients:
            # A recipient refused here refuses the message: every recipient was already
            # answered 250, and dropping one now would lose its mail in silence.
            await self._step(p.Cmd.RCPT, p.rcpt(address), {
                "{rcpt_addr}": address, "{rcpt_host}": address.rpartition("@")[2],
                "{rcpt_mailer}": "esmtp"})
        await self._step(p.Cmd.DATA, p.packet(p.Cmd.DATA), {"i": facts.queue_id})
        fields, body = _message(chunks)
        leadspc = bool(self.steps & p.Step.HDR_LEADSPC)
        for fname, value in fields:
            # Without HDR_LEADSPC the value is given without its leading blanks (libmilter).
            await self._step(p.Cmd.HEADER,
                             p.header(fname, value if leadspc else value.lstrip(b" \t")))
        await self._step(p.Cmd.EOH, p.packet(p.Cmd.EOH), {"i": facts.queue_id})
        skip = False
        for chunk in body:
            if skip:
                continue
            for start in range(0, len(chunk), p.CHUNK_SIZE):
                r = await self._step(p.Cmd.BODY, p.body(chunk[start:start + p.CHUNK_SIZE]))
                if r is not None and r.kind == "skip":
                    skip = True
                    break
        # End of message: modifications first, then one verdict (bounded by eom_timeout).
        link.send(p.macros(p.Cmd.BODYEOB, {"i": facts.queue_id}))
        link.send(p.packet(p.Cmd.BODYEOB))
        actions = self.actions
        changes: list[p.HeaderChange] = []
        envelope: list[p.EnvelopeChange] = []
        body_parts: list[bytes] | None = None
        quarantine: str | None = None
        while True:
            reply = await self._answer(spec.eom_timeout)
            if isinstance(reply, p.HeaderChange):
                wanted = p.Act.ADDHDRS if reply.kind in ("h", "i") else p.Act.CHGHDRS
                if not actions & wanted:
                    raise p.ProtocolError("header change that was not negotiated")
                changes.append(reply)
            elif isinstance(reply, p.Quarantine):
                quarantine = reply.reason or "quarantined"
            elif isinstance(reply, p.EnvelopeChange):
                wanted = {"e": p.Act.CHGFROM, "+": p.Act.ADDRCPT, "2": p.Act.ADDRCPT_PAR,
                          "-": p.Act.DELRCPT}[reply.kind]
                if not actions & wanted:
                    raise p.ProtocolError(f"envelope change {reply.kind!r} that was not negotiated")
                envelope.append(p.EnvelopeChange(reply.kind, checked_address(reply.address,
                                                                            reply.kind), reply.args))
            elif isinstance(reply, p.BodyChunk):
                if not actions & p.Act.CHGBODY:
                    raise p.ProtocolError("body replacement that was not negotiated")
                if body_parts is None:
                    body_parts = []
                body_parts.append(reply.data)
            elif isinstance(reply, p.Verdict):
                if reply.kind == "skip":
                    raise p.ProtocolError("skip at end of message")
                new_body = None if body_parts is None else b"".join(body_parts)
                return _verdict(reply, changes, quarantine, envelope, new_body)


async def connect(spec: MilterSpec, facts: Facts) -> Connection | Outcome:
    """A new connection to the milter, negotiated, with connect and helo sent; or the
    Outcome "failed" that says why not."""
    try:
        kind, where, port = parse_socket(spec.socket)
        link = _Link()
        loop = link.loop
        if kind == "unix":
            opening = loop.create_unix_connection(lambda: link, where)
        else:
            opening = loop.create_connection(lambda: link, where, port)
        await asyncio.wait_for(opening, spec.connect_timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        return Outcome("failed", reason=f"cannot connect to {spec.socket}: "
                                        f"{type(exc).__name__}: {exc}".rstrip(": "))
    conn = Connection(spec, link, connection_key(facts))
    try:
        await conn._start(facts)
    except (OSError, TimeoutError, EOFError, p.ProtocolError) as exc:
        conn.close()
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return Outcome("failed", reason=f"milter {spec.name}: {what}")
    return conn


async def check(spec: MilterSpec, facts: Facts, chunks: Iterable[bytes]) -> Outcome:
    """One milter's verdict on one message over a connection of its own (opened, used,
    closed); never raises for the milter's faults."""
    conn = await connect(spec, facts)
    if isinstance(conn, Outcome):
        return conn
    try:
        return await conn.message(facts, chunks)
    finally:
        conn.close()


def checked_address(text: str, kind: str) -> str:
    """A milter's address as the relay writes it ("" for the null sender): a path RFC 5321
    allows, else the milter is at fault."""
    text = text.strip()
    path = text if text.startswith("<") else f"<{text}>"
    try:
        address = parse_path(path, utf8=True)
    except AddressError as exc:
        raise p.ProtocolError(f"bad address {text[:80]!r} in envelope change") from exc
    if address is None:
        if kind != "e":
            raise p.ProtocolError("an empty recipient in envelope change")
        return ""
    return str(address)


# --- applying header changes ---------------------------------------------------------------

def _field(name: str, value: str, leadspc: bool = False) -> bytes:
    if not name or any(not ("!" <= c <= "~") or c == ":" for c in name):
        raise p.ProtocolError(f"bad header name {name[:40]!r}")
    # Folded values come with bare LF; a message line ends in CRLF (RFC 5322 2.1).
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text = "\r\n".join(lines)
    sep = ":" if leadspc or text[:1] in (" ", "\t") else ": "
    return f"{name}{sep}{text}\r\n".encode("utf-8", "replace")


def rewrite(chunks: Iterable[bytes], changes: list[p.HeaderChange],
            body: bytes | None = None) -> Iterator[bytes]:
    """The message with the header changes applied, in Sendmail's meaning: add appends,
    insert goes before the index-th field (0: first), change replaces the index-th field
    of that name (from 1; an empty value deletes it; none there: added). ``body``, if
    given, replaces the body (line ends made CRLF: RFC 5322 2.3)."""
    new_body = body
    fields, rest = _message(chunks)
    lines: list[tuple[str, bytes]] = [
        (n.decode("latin-1"), n + b":" + v + b"\r\n") for n, v in fields]
    for c in changes:
        if c.kind == "h":
            lines.append((c.name, _field(c.name, c.value)))
        elif c.kind == "i":
            lines.insert(min(c.index, len(lines)), (c.name, _field(c.name, c.value)))
        else:
            seen = 0
            for pos, (n, _) in enumerate(lines):
                if n.lower() == c.name.lower():
                    seen += 1
                    if seen == max(c.index, 1):
                        if c.value:
                            lines[pos] = (c.name, _field(c.name, c.value))
                        else:
                            del lines[pos]
                        break
            else:
                if c.value:
                    lines.append((c.name, _field(c.name, c.value)))
    yield b"".join(line for _, line in lines) + b"\r\n"
    if new_body is None:
        yield from rest
    else:
        yield new_body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
