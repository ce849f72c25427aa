"""One SMTP session: the driver between a socket, the protocol core, the policy and the queue.

The driver makes no decision of its own: the smtp core says what the client asked, the policy
says whether it may, the queue says when the message is safe. The driver only carries facts
between them, and the replies and log lines back.

It is an ``asyncio.Protocol`` (not a stream reader): bytes arrive in whatever chunks the kernel
gives and go to the core in one call, so a pipelined burst or a 50 KB DATA block costs one
callback, not one await per line.

The hot path (``_on_mail`` to ``_committed``) comes first among the handlers, its detours
after it. What is not the session's own lives beside it: the listener's gates (connection
and rate limits, free space, hop count, TLS/AUTH/rDNS required) in policy/gates.py, the AUTH
exchange in server/sasl.py, ATRN in server/atrn.py, the Received header in server/trace.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from relaywarden import metrics
from relaywarden.logs.maillog import MailEvent
from relaywarden.logs.protocol import SessionLog
from relaywarden.milter import Facts as MilterFacts
from relaywarden.policy import gates
from relaywarden.policy.gates import INSUFFICIENT_STORAGE
from relaywarden.policy.hops import ReceivedCounter
from relaywarden.policy.model import Action, ClientFacts, Decision
from relaywarden.policy.recipients import THROTTLED, Answer, Known, combine
from relaywarden.queue.store import (
    BodySpool,
    Envelope,
    RecipientRecord,
    RecipientStatus,
    domain_of,
    new_queue_id,
)
from relaywarden.resolver import RdnsResult, RdnsStatus
from relaywarden.server import atrn, sasl
from relaywarden.server.context import ListenerContext, ListenerRuntime, Services
from relaywarden.server.milters import (Filtered, MilterChain, UNAVAILABLE, apply_envelope,
                                        run_chain)
from relaywarden.screening import Finding, Stripped, screen, strip
from relaywarden.server.tls import describe as describe_tls
from relaywarden.server.trace import clean as _clean
from relaywarden.server.trace import rdns_note, received
from relaywarden.smtp.address import Address, parse_path
from relaywarden.smtp.events import (
    NEED_DATA,
    Atrn,
    Auth,
    AuthResponse,
    Closed,
    DataChunk,
    DataEnd,
    DataStart,
    Etrn,
    Handled,
    Hello,
    MailFrom,
    MailParams,
    RcptTo,
    StartTls,
)
from relaywarden.smtp.reply import START_DATA, Reply, reply
from relaywarden.smtp.server import BareLineEnds, ServerConnection, ServerState

QUEUE_FAILED = reply(451, "4.3.0", "Requested action aborted: local error in processing")
NOT_AVAILABLE = reply(502, "5.5.1", "Command not implemented")
TIMEOUT = reply(421, "4.4.2", "Timeout exceeded, closing connection")
INTERNAL_ERROR = reply(421, "4.3.0", "Local error, closing connection")
READY_FOR_TLS = reply(220, "2.0.0", "Ready to start TLS")               # RFC 3207 4
TLS_NOT_AVAILABLE = reply(454, "4.7.0", "TLS not available due to temporary reason")
# The limits' replies (connections, disk, rates, hops) are the gates' (policy/gates.py),
# AUTH's server/sasl.py's, ATRN's server/atrn.py's.
SENDER_OK = reply(250, "2.1.0", "Ok")
#: The attachment screener parses whole messages (a 35 MB one takes a few times that in
#: memory): at most two at a time, the others wait their turn.
_SCREEN_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="screen")
#: ETRN commands one session may give; more are refused (each is a queue transaction).
MAX_ETRN_PER_SESSION = 20
#: A global, not ServerState.CLOSED on every flush: CPython 3.11 reads an Enum member
#: through EnumType.__getattr__'s attribute hook (see smtp/server.py's state globals).
_CLOSED = ServerState.CLOSED


@dataclass(slots=True)
class _Transaction:
    sender: Address | None
    params: MailParams
    recipients: list[RecipientRecord] = field(default_factory=list)
    queue_id: str = ""
    spool: BodySpool | None = None
    hops: ReceivedCounter | None = None
    stripped: str | None = None        # what the screener removed (for the mail log)
    filtered: bool = False             # the listener's milters have been asked

    @property
    def body(self) -> BodySpool:
        """The spool, from DATA on (before, there is none: a bug to ask)."""
        assert self.spool is not None, "no DATA yet"
        return self.spool


@functools.lru_cache(maxsize=4096)
def _client_facts(listener: str, address: str) -> ClientFacts:
    """What is known of a client when it connects, made once per (listener, address): the
    parsed address and the facts the policy decides from. A frozen value, shared by the
    client's sessions; the policy's verdict caches find it by identity. What a session
    learns later (verified name, user) makes a new one (dataclasses.replace)."""
    return ClientFacts(listener=listener, ip=ipaddress.ip_address(address), verified_name=None)


@functools.lru_cache(maxsize=64)
def _greeting(hostname: str, banner: str) -> Reply:
    """The 220 greeting of a listener: one Reply (encoded once) per hostname and banner."""
    return reply(220, None, f"{hostname} {banner}")


@functools.lru_cache(maxsize=64)
def _helo_reply(hostname: str) -> Reply:
    """The 250 to HELO (no extensions, RFC 5321 4.1.1.1): one Reply (encoded once) per
    hostname, not one per session."""
    return reply(250, None, hostname)


def _quarantine(txn: "_Transaction", rule: str, reason: str) -> None:
    """The message is accepted and kept in badmail, where the admin is told (as a policy
    violation with on_violation = "badmail" is): every recipient still to be delivered."""
    txn.recipients = [
        replace(r, status=RecipientStatus.BADMAIL, rule=rule, reason=reason)
        if r.status is RecipientStatus.QUEUED else r
        for r in txn.recipients]


class SmtpSession(asyncio.Protocol):
    # Set by connection_made(), which asyncio calls before anything else of the protocol.
    transport: asyncio.Transport
    conn: ServerConnection
    client: ClientFacts
    _loop: asyncio.AbstractEventLoop

    def __init__(self, ctx: ListenerContext, services: Services) -> None:
        self.ctx = ctx
        self.services = services
        self.client_ip = ""
        self.server_ip = ""
        self.server_port = 0
        self.helo = ""
        self.esmtp = False
        self.txn: _Transaction | None = None
        self._waiting = False          # a queue commit is in flight; events wait for it
        self._read_paused = False
        self._write_paused = False
        self._closed = False
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._messages = 0
        self.rdns: RdnsResult | None = None
        # The DNS lists' verdict at connect (policy/dnsbl.py): (REJECT or None, note), or None.
        self._dnsbl: tuple | None = None
        self._unknown = 0              # unknown recipients named in this session
        self._sasl: sasl.SaslExchange | None = None     # made at the first AUTH
        self.runtime: ListenerRuntime = services.runtimes.get(ctx.name) or ListenerRuntime()
        self._counted = False          # this connection counts towards the listener's limits
        self._finished = False
        # (version, cipher, bits) once TLS is up: implicit, or after STARTTLS.
        self.tls: tuple[str, str, int] | None = None
        self._plog: SessionLog | None = None
        # The protocol log's view of the command being answered: when its line arrived
        # (loop time; time-taken runs from here to the reply) and its octets (cs-bytes).
        self._cmd_at = 0.0
        self._cmd_octets = 0
        # An AUTH exchange is one log line: the octets of all its client lines, and of the
        # 334 challenges sent, until the final reply.
        self._auth_in = 0
        self._auth_out = 0
        self._etrns = 0
        # The session's milter connections (server/milters.py): opened at its first filtered
        # message, closed (SMFIC_QUIT) when the session ends.
        self._milter_chain = MilterChain()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._cmd_at = self._loop.time()      # the CONNECT line: until the greeting is sent
        self.services.sessions.add(self)
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        sock = transport.get_extra_info("sockname") or ("0.0.0.0", 0)
        self.client_ip = peer[0].split("%", 1)[0]
        self.server_ip, self.server_port = sock[0], sock[1]
        plog = self.services.protocol_log
        if plog is not None:
            self._plog = plog.session(client_ip=self.client_ip, site=self.ctx.name,
                                      server_name=self.ctx.hostname, server_ip=self.server_ip,
                                      server_port=self.server_port)
        self.client = _client_facts(self.ctx.name, self.client_ip)
        ip = self.client.ip
        settings = self.ctx.settings
        if (settings.bare_line_ends is BareLineEnds.REJECT and self.ctx.normalize_networks
                and self.ctx.normalizes(ip)):
            settings = replace(settings, bare_line_ends=BareLineEnds.NORMALIZE)
        self.conn = ServerConnection(settings)

        self.services.mail_log.event(
            MailEvent.CONNECT, listener=self.ctx.name, client=self.client_ip,
            port=peer[1] if len(peer) > 1 else None,
        )
        self._last_activity = self._loop.time()
        limits, counter = self.ctx.limits, self.runtime.connections
        refused = gates.check_connections(
            self.ctx.name, self.client_ip, total=counter.total, from_ip=counter.of(self.client_ip),
            max_total=limits.max_connections, max_per_ip=limits.max_connections_per_ip)
        if refused is not None:
            self._log_reject("connect", refused)
            self.conn.greet(refused.reply)
            self._protocol_log("CONNECT", "", refused.reply, 0)
            self._flush()
            return
        self.runtime.connections.opened(self.client_ip)
        self._counted = True
        # Implicit TLS (RFC 8314 3.3): the listener's server did the handshake before
        # connection_made; the transport is already the TLS one.
        self.tls = describe_tls(transport.get_extra_info("ssl_object"))
        self._advertise_auth()
        self._arm_timer(self.ctx.command_timeout)
        zones = (self.services.policy.dnsbl_zones(self.client)
                 if self.services.resolver is not None else ())
        if (self.ctx.reverse_lookups or zones) and self.services.resolver is not None:
            # The greeting waits for the lookups (bounded by dns.timeout): connection control
            # may depend on the verified name and the DNS lists. Nothing is read meanwhile.
            self._waiting = True
            self._update_reading()
            self._spawn(self._reverse_then_greet(zones))
        else:
            self._greet()

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        # asyncio keeps only weak references to tasks (docs/architecture.md, known traps).
        self.services.tasks.add(task)
        task.add_done_callback(self.services.tasks.discard)

    async def _reverse_then_greet(self, zones: tuple[str, ...] = ()) -> None:
        resolver = self.services.resolver
        assert resolver is not None           # connection_made asks only with a resolver
        if zones:
            # RFC 5782 lists, asked beside the reverse lookup (one wait, not two).
            lists = self._loop.create_task(resolver.dnsbl(self.client_ip, zones))
        if self.ctx.reverse_lookups:
            self.rdns = await resolver.reverse(self.client_ip)
            if self.rdns.status is RdnsStatus.VERIFIED:
                self.client = replace(self.client, verified_name=self.rdns.name)
        if zones:
            answers = await lists
            self._dnsbl = self.services.policy.check_dnsbl(self.client, answers)
            log = self.services.mail_log
            for look in self.services.policy.dnsbl_lookups(self.client, answers):
                log.event(MailEvent.LOOKUP, kind=look.kind, listener=self.ctx.name,
                          client=self.client_ip, source=look.source, answer=look.answer,
                          detail=look.detail or None)
        self._waiting = False
        if self._closed:
            return
        self._greet()
        self._update_reading()
        self._pump()

    async def _start_tls(self) -> bool:
        """STARTTLS: upgrade the transport with the listener's current context (the one
        loaded at the last start or SIGHUP). False: the handshake failed, the connection is
        closed.

        Only after a 220 to STARTTLS, when the client waits for it before its ClientHello:
        not from connection_made (uvloop starts reading after connection_made even when it
        paused reading, so a ClientHello sent at once would reach data_received instead)."""
        context = self.runtime.ssl_context
        if self._closed:
            return False
        if context is None:      # cannot happen with a valid config; never run TLS-less
            self._tls_failed("no TLS context")
            return False
        try:
            transport = await self._loop.start_tls(
                self.transport, self, context, server_side=True,
                ssl_handshake_timeout=self.ctx.command_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - SSLError, reset, timeout: all end the same
            self._tls_failed(f"{type(exc).__name__}: {exc}".strip())
            return False
        if transport is None or self._closed:
            self._finish(None)
            return False
        self.transport = transport
        self._read_paused = False          # the TLS transport starts out reading
        self.tls = describe_tls(transport.get_extra_info("ssl_object"))
        return True

    def _tls_failed(self, reason: str) -> None:
        # The raw transport is closed by start_tls; our connection_lost() is not called
        # (the TLS layer never handed the connection to us), so the session ends here.
        self.services.mail_log.event(
            MailEvent.REJECT, stage="tls", listener=self.ctx.name, client=self.client_ip,
            reason=f"TLS handshake failed: {reason}",
        )
        self._protocol_log("TLS", "handshake-failed", None, 0, timed=False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._finish(None)

    def _on_starttls(self, ev: StartTls) -> None:
        if self.runtime.ssl_context is None:
            self._respond("STARTTLS", "", TLS_NOT_AVAILABLE)
            return
        self._respond("STARTTLS", "", READY_FOR_TLS)
        # The 220 goes out in plaintext now; whatever the client pipelined after STARTTLS
        # was dropped by the core (CVE-2011-0411). Nothing is read until the handshake.
        self._flush()
        self._waiting = True
        self._update_reading()
        self._spawn(self._starttls())

    async def _starttls(self) -> None:
        if not await self._start_tls():
            return
        # RFC 3207 4.2: forget everything learnt before TLS; the client starts with EHLO.
        self.conn.tls_started()
        self._advertise_auth()
        self.helo = ""
        self.esmtp = False
        self._drop_transaction()
        self._waiting = False
        self._update_reading()
        self._pump()

    def _rdns_gate(self):
        """access.require_rdns, asked of the policy's gate (policy/gates.py, which `policy
        explain` asks too). self.client carries the name only when it was verified
        (_reverse_then_greet)."""
        rdns = self.rdns
        return self.services.policy.check_rdns(
            self.client, temporary=rdns is not None and rdns.temporary,
            detail=f"reverse DNS: {rdns_note(rdns)}: {rdns.detail if rdns else 'no lookup'}")

    def _greet(self) -> None:
        decision = self.services.policy.check_connect(self.client)
        if decision.action is Action.REJECT:
            self._log_reject("connect", decision, rdns=rdns_note(self.rdns))
            greeting = decision.reply
        elif (refusal := self._rdns_gate()) is not None:
            greeting = refusal.decision.reply
            self._log_reject("connect", refusal.decision)
        elif self._dnsbl is not None and self._dnsbl[0] is not None:
            listed = self._dnsbl[0]
            greeting = listed.reply
            self._log_reject("connect", listed)
        else:
            greeting = _greeting(self.ctx.hostname, self.ctx.banner)
        self.conn.greet(greeting)
        self._protocol_log("CONNECT", rdns_note(self.rdns) or "", greeting, 0)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        """The session is over (connection lost, or a TLS handshake that failed): once only."""
        self._closed = True
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self._drop_transaction()
        self._milter_chain.close()
        self.services.sessions.discard(self)
        if self._counted:
            self._counted = False
            self.runtime.connections.closed(self.client_ip)
        self.services.mail_log.event(
            MailEvent.DISCONNECT, listener=self.ctx.name, client=self.client_ip,
            messages=self._messages, tls=None if self.tls is None else self.tls[0],
        )

    def pause_writing(self) -> None:
        # The client is not reading our replies: stop reading its commands until it does.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- the event pump ----------------------------------------------------------------

    def _pump(self) -> None:
        conn = self.conn
        try:
            while not self._waiting and not self._closed:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, DataChunk):
                    txn = self.txn
                    if txn is not None and txn.spool is not None:
                        txn.spool.write(event.data)
                        hops = txn.hops
                        if hops is not None and not hops.done:
                            hops.feed(event.data)
                    continue
                kind = type(event)
                handler = self._HANDLERS.get(kind)
                if handler is None:
                    conn.respond(NOT_AVAILABLE)
                    continue
                # Its line came with the last bytes read: a command that waited in the
                # input behind a slow one (pipelining) was received then, not now.
                self._cmd_at = self._last_activity
                self._cmd_octets = getattr(event, "octets", 0)
                handler(self, event)
                if kind is Closed:
                    break
        except Exception as exc:  # noqa: BLE001 - one broken session must not hurt the others
            self.services.mail_log.event(
                MailEvent.DISCONNECT, listener=self.ctx.name, client=self.client_ip,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._drop_transaction()
            if self.transport is not None and not self._closed:
                self.transport.write(INTERNAL_ERROR.to_bytes())
                self.transport.close()
            self._closed = True
            return
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self._closed:
            self.transport.write(out)
        if self.conn.state is _CLOSED and not self._closed:   # conn.closing
            self._closed = True
            self.transport.close()

    def _update_reading(self) -> None:
        if self._closed or self.transport is None:
            return
        want_pause = self._waiting or self._write_paused
        if want_pause and not self._read_paused:
            self.transport.pause_reading()
            self._read_paused = True
        elif not want_pause and self._read_paused:
            self.transport.resume_reading()
            self._read_paused = False

    # -- handlers: the hot path ----------------------------------------------------------

    def _on_hello(self, ev: Hello) -> None:
        self._drop_transaction()
        self.helo = ev.name
        self.esmtp = ev.extended
        if ev.extended:
            answer = self.conn.ehlo_reply(f"Hello {_clean(ev.name, 64)} [{self.client_ip}]")
        else:
            answer = _helo_reply(self.ctx.hostname)
        self._respond("EHLO" if ev.extended else "HELO", ev.name, answer)

    def _on_mail(self, ev: MailFrom) -> None:
        query = ev.argument          # as received, with its parameters (SIZE=, RET=, ...)
        # The sender as text only for a refusal's log line (two calls per message saved).
        if self._gated("MAIL", query, sender=self._addr(ev.sender)):
            return
        disk = self.services.disk
        if disk is not None and (full := disk.check()) is not None:
            # Checked first: when the disk is nearly full, nothing is worth a policy lookup.
            self._log_reject("mail", full, sender=self._addr(ev.sender))
            self._respond("MAIL", query, full.reply)
            return
        decision = self.services.policy.check_sender(self.client, ev.sender)
        if decision.action is not Action.ACCEPT:
            self._log_reject("mail", decision, sender=self._addr(ev.sender))
            self._respond("MAIL", query, decision.reply)
            return
        messages = self.runtime.messages
        # No limit (limits.messages_per_window = 0): no keys to make, nothing to count.
        if messages.limit and not messages.take_all(self._rate_keys()):
            slow = gates.rate_limited(self.ctx.name, "messages", limit=messages.limit,
                                      window=messages.window, ip=self.client_ip,
                                      user=self.client.user)
            self._log_reject("mail", slow, sender=self._addr(ev.sender))
            self._respond("MAIL", query, slow.reply)
            return
        self.txn = _Transaction(sender=ev.sender, params=ev.params)
        self._respond("MAIL", query, SENDER_OK)

    def _on_rcpt(self, ev: RcptTo) -> None:
        txn = self.txn
        assert txn is not None, "no transaction"     # RCPT comes after MAIL (the core)
        rcpt = ev.recipient
        query = ev.argument          # as received, with NOTIFY= and ORCPT=
        decision = self.services.policy.check_recipient(self.client, txn.sender, rcpt)
        if decision.action is Action.REJECT:
            self._log_reject("rcpt", decision, sender=self._addr(txn.sender), recipient=str(rcpt))
            self._respond("RCPT", query, decision.reply)
            return
        recipients = self.runtime.recipients
        if recipients.limit and not recipients.take_all(self._rate_keys()):
            # 452 4.5.3, the core's own reply: flow control, not counted as an error.
            slow = gates.rate_limited(self.ctx.name, "recipients", limit=recipients.limit,
                                      window=recipients.window, ip=self.client_ip,
                                      user=self.client.user)
            self._log_reject("rcpt", slow, sender=self._addr(txn.sender), recipient=str(rcpt))
            self._respond("RCPT", query, slow.reply)
            return
        # A bare <postmaster> (RFC 5321 4.5.1) is the relay's own postmaster.
        address = self.ctx.postmaster if rcpt.domain == "" else str(rcpt)
        validator = self.services.recipients
        if (validator is not None and rcpt.domain and decision.action is Action.ACCEPT
                and self.services.policy.hosted(self.client, rcpt.domain)):
            found = validator.for_domain(rcpt.domain)
            if found is not None:
                self._validate(ev, decision, address, *found)   # a hosted domain's recipient
                return
        self._accept_rcpt(ev, decision, address)

    def _accept_rcpt(self, ev: RcptTo, decision: Decision, address: str) -> None:
        status = RecipientStatus.BADMAIL if decision.action is Action.BADMAIL else RecipientStatus.QUEUED
        txn = self.txn
        assert txn is not None, "no transaction"
        txn.recipients.append(RecipientRecord(
            address=address, status=status, rule=decision.rule, reason=decision.detail,
            orcpt=ev.params.orcpt, notify=ev.params.notify,
        ))
        self._respond("RCPT", ev.argument, decision.reply)

    def _on_data_start(self, ev: DataStart) -> None:
        txn = self.txn
        assert txn is not None, "no transaction"
        txn.queue_id = new_queue_id()
        txn.spool = spool = self.services.store.new_spool()
        spool.write(received(      # the trace header (server/trace.py)
            hostname=self.ctx.hostname, listener=self.ctx.name, helo=self.helo,
            client_ip=self.client_ip, note=rdns_note(self.rdns), esmtp=self.esmtp,
            smtputf8=txn.params.smtputf8, tls=self.tls, user=self.client.user,
            queue_id=txn.queue_id, recipients=txn.recipients, now=time.time()))
        txn.hops = ReceivedCounter()
        self._respond("DATA", "", START_DATA, queue_id=txn.queue_id)

    def _on_data_end(self, ev: DataEnd) -> None:
        txn = self.txn
        assert txn is not None, "no transaction"
        if ev.problem is not None:
            self.services.mail_log.event(
                MailEvent.REJECT, stage="data", listener=self.ctx.name, client=self.client_ip,
                id=txn.queue_id, code=ev.problem.code, reason=" ".join(ev.problem.lines),
            )
            self._drop_transaction()
            self._respond(".", "", ev.problem, queue_id=txn.queue_id)
            return
        hops = txn.hops
        loop = gates.check_hops(hops.count if hops is not None else 0, self.ctx.limits.max_hops)
        if loop is not None:
            # RFC 5321 6.3: a loop. Accepted (250) so that the sending server stops
            # retrying, and kept in badmail where the admin sees it.
            txn.recipients = [
                replace(r, status=RecipientStatus.BADMAIL, rule=loop.rule, reason=loop.detail)
                for r in txn.recipients
            ]
            self.services.mail_log.event(
                MailEvent.REJECT, stage="data", listener=self.ctx.name, client=self.client_ip,
                id=txn.queue_id, code=loop.reply.code, enhanced=loop.reply.enhanced,
                rule=loop.rule, reason=loop.detail, action="badmail",
            )
        if self.services.screener is not None and self._screen(ev):
            return                        # the screener answers first (_screened)
        self._commit(ev)

    def _commit(self, ev: DataEnd) -> None:
        txn = self.txn
        assert txn is not None, "no transaction"
        if self.ctx.milters and not txn.filtered and txn.body.error is None and any(
                r.status is RecipientStatus.QUEUED for r in txn.recipients):
            # The milters answer before the 250 (after the screener: what it refused they
            # never see); nothing is read meanwhile, as while screening.
            txn.filtered = True
            self._waiting = True
            self._update_reading()
            self._spawn(self._milters(ev))
            return
        envelope = Envelope(
            queue_id=txn.queue_id,
            received_at=time.time(),
            listener=self.ctx.name,
            client_ip=self.client_ip,
            client_name=self.client.verified_name,
            helo=self.helo,
            auth_user=self.client.user,
            sender=self._addr(txn.sender),
            recipients=tuple(txn.recipients),
            ret=txn.params.ret,
            envid=txn.params.envid,
            body_type=txn.params.body,
            smtputf8=txn.params.smtputf8,
            client_group=self.services.policy.group_of(self.client),
            tls=None if self.tls is None else f"{self.tls[0]} {self.tls[1]}",
        )
        self._waiting = True
        self._update_reading()
        spool = txn.body
        router = self.services.router
        held = False
        if router is not None and router.has_hold:
            for r in envelope.recipients:        # a loop: no generator per message
                if router.holds(domain_of(r.address), sender=envelope.sender,
                                group=envelope.client_group, user=envelope.auth_user):
                    held = True
                    break
        done = self.services.store.start_commit(envelope, spool, handoff=not held)
        done.add_done_callback(
            functools.partial(self._committed, envelope, spool))

    def _committed(self, envelope: Envelope, spool: BodySpool, done: asyncio.Future) -> None:
        """The queue has answered: 250 only now that the message is on disk."""
        error = "cancelled" if done.cancelled() else done.exception()
        if error is not None:
            # A full disk is 452 4.3.1 (RFC 5321 4.3.2 lists 452 after the final dot; RFC
            # 3463 X.3.1 "mail system full"); anything else 451 4.3.0. Both: try later.
            answer = (INSUFFICIENT_STORAGE if getattr(error, "full", False)
                      else QUEUE_FAILED)
            self.services.mail_log.event(
                MailEvent.REJECT, stage="queue", listener=self.ctx.name, client=self.client_ip,
                id=envelope.queue_id, code=answer.code, reason=str(error),
            )
        else:
            answer = reply(250, "2.0.0", f"Ok: queued as {envelope.queue_id}")
            self._messages += 1
            self._log_queued(envelope, spool.size,
                             stripped=self.txn.stripped if self.txn is not None else None)
            self.services.on_queued()
        spool.discard()
        self.txn = None
        if error is None:
            # Back-pressure (delivery.in_flow_delay): while delivery is behind, the 250
            # waits for it to catch up, at most that long; the message is on disk already.
            later = self.services.store.inflow()
            if later is not None:
                later.add_done_callback(functools.partial(
                    self._answer_delayed, envelope.queue_id, answer, self._loop.time()))
                return
        self._answer_commit(envelope.queue_id, answer)

    def _answer_delayed(self, queue_id: str, answer: Reply, since: float,
                        _: asyncio.Future) -> None:
        metrics.inflow_delayed(self.ctx.name, self._loop.time() - since)
        self._answer_commit(queue_id, answer)

    def _answer_commit(self, queue_id: str, answer: Reply) -> None:
        self._waiting = False
        if self._closed:
            return
        # time-taken: from the final dot to this reply, the screening and the durable
        # commit included; cs-bytes: the message as it came (stuffed, with the final dot).
        self._respond(".", f"id={queue_id}", answer, queue_id=queue_id)
        self._update_reading()
        self._pump()

    # -- detours of the hot path: gates, recipient validation, screening, milters --------

    def _gated(self, verb: str, query: str, **fields: object) -> bool:
        """The listener's own gates before MAIL (and ETRN): TLS first on a listener that
        requires it, AUTH first on one that requires that. True: refused and answered.
        The policy's rule (policy/gates.py), which `policy explain` asks too."""
        refusal = self.services.policy.check_gates(self.client, tls=self.tls is not None, verb=verb)
        if refusal is None:
            return False
        self._log_reject(verb.lower(), refusal.decision, **fields)
        self._respond(verb, query, refusal.decision.reply)
        return True

    def _rate_keys(self) -> list[tuple[str, str]]:
        """Rate windows count per client address and, once authenticated, per user too."""
        keys = [("ip", self.client_ip)]
        if self.client.user is not None:
            keys.append(("user", self.client.user.casefold()))
        return keys

    def _validate(self, ev: RcptTo, decision: Decision, address: str, key: str,
                  settings) -> None:
        """Recipient validation of a hosted domain (server/validate.py looks up,
        policy/recipients.py decides): answered now from the cache, or later."""
        throttle = self.services.recipient_throttle
        if throttle is not None and throttle.locked(self.client_ip):
            # Over its address's limit of unknown recipients: no more lookups.
            self._log_limit("rcpt", THROTTLED, "recipient_throttle.client_limit",
                            f"{throttle.client_limit} unknown recipients from "
                            f"{self.client_ip} in {throttle.window:g} s",
                            sender=self._addr(self._txn().sender), recipient=address)
            self._respond("RCPT", ev.argument, THROTTLED)
            return
        answers = self.services.recipients.answer_now(address, settings)
        if answers is None:
            # A callahead to make, or a client that guesses addresses: the session
            # waits (nothing more is read), the others go on.
            self._waiting = True
            self._update_reading()
            self._spawn(self._validate_later(ev, decision, address, key, settings, answers))
            return
        self._validated(ev, decision, address, key, settings, answers)

    async def _validate_later(self, ev: RcptTo, decision: Decision, address: str, key: str,
                              settings, answers) -> None:
        try:
            if answers is None:
                answers = await self.services.recipients.lookup(address, settings)
        except Exception as exc:  # noqa: BLE001 - a broken lookup is a failed source
            answers = [Answer("lookup", Known.FAILED, f"{type(exc).__name__}: {exc}")]
        if self._closed or self.txn is None:
            return
        if self._validated(ev, decision, address, key, settings, answers):
            return          # the answer is delayed (_answer_late resumes the session)
        self._waiting = False
        self._update_reading()
        self._pump()

    def _validated(self, ev: RcptTo, decision: Decision, address: str, key: str, settings,
                   answers) -> bool:
        """Answer the RCPT from the sources' answers. True: the answer goes out later (a
        throttled client waits; the session reads nothing meanwhile)."""
        verdict = combine(key, answers, on_lookup_failure=settings.on_lookup_failure)
        log = self.services.mail_log
        for a in answers:
            log.event(MailEvent.LOOKUP, kind="recipient", listener=self.ctx.name,
                      client=self.client_ip, recipient=address, source=a.source,
                      answer=a.known.value, cached="yes" if a.cached else "no",
                      detail=a.detail or None)
        if verdict.action is Action.ACCEPT:
            self._accept_rcpt(ev, replace(decision, detail=f"{decision.detail}; {verdict.detail}"
                                          if decision.detail else verdict.detail), address)
            return False
        txn = self._txn()
        self._log_reject("rcpt", verdict, sender=self._addr(txn.sender), recipient=address)
        answer, delay = verdict.reply, 0.0
        throttle = self.services.recipient_throttle
        if verdict.reply.code == 550 and throttle is not None:
            # A dictionary attack (policy/recipients.py UnknownThrottle): answered later and
            # later (Postfix's smtpd_error_sleep_time), then cut off with 421 4.7.0.
            self._unknown += 1
            delay, limit = throttle.unknown(self.client_ip, self._unknown)
            if limit:
                answer = THROTTLED
                self._log_limit("rcpt", THROTTLED, limit,
                                f"{self._unknown} unknown recipients in this session "
                                f"(connection_limit {throttle.connection_limit}) or "
                                f"client_limit {throttle.client_limit} from {self.client_ip} "
                                f"in {throttle.window:g} s", sender=self._addr(txn.sender),
                                recipient=address)
        if delay > 0:
            self._waiting = True
            self._update_reading()
            self._spawn(self._answer_late(delay, ev.argument, answer))
            return True
        self._respond("RCPT", ev.argument, answer)
        return False

    async def _answer_late(self, delay: float, query: str, answer: Reply) -> None:
        await asyncio.sleep(delay)
        if self._closed:
            return
        self._respond("RCPT", query, answer)
        self._waiting = False
        self._update_reading()
        self._pump()

    def _screen(self, ev: DataEnd) -> bool:
        """Start the attachment screener (screening/) when it applies to this message.
        True: started; _screened goes on from its answer."""
        txn, screener = self._txn(), self.services.screener
        assert screener is not None       # _screen is called only with a screener
        if not (txn.body.error is None and any(
                r.status is RecipientStatus.QUEUED for r in txn.recipients) and screener.applies(
                self.services.policy.hosted(self.client, domain_of(r.address))
                for r in txn.recipients)):
            return False
        # MIME parsing is CPU work: a pool thread does it; nothing is read meanwhile.
        self._waiting = True
        self._update_reading()
        spool, rules = txn.body, screener.rules
        found: asyncio.Future[Stripped | Finding | None]
        if screener.action == "strip":
            hostname = self.ctx.hostname
            found = self._loop.run_in_executor(
                _SCREEN_POOL, lambda: strip(spool.chunks(), rules, hostname=hostname))
        else:
            found = self._loop.run_in_executor(
                _SCREEN_POOL, lambda: screen(spool.chunks(), rules))
        found.add_done_callback(functools.partial(self._screened, ev))
        return True

    def _screened(self, ev: DataEnd, done: asyncio.Future) -> None:
        """The screener has answered: reject, quarantine, or go on to the commit."""
        txn = self.txn
        self._waiting = False
        error = "cancelled" if done.cancelled() else done.exception()
        if self._closed or txn is None:
            self._drop_transaction()      # the client left meanwhile: nothing was answered
            return
        screener = self.services.screener
        if error is not None:
            # Fail closed, but temporarily: the sender tries again, nothing unscreened passes.
            answer = reply(451, "4.3.0", "Requested action aborted: the message could not be screened")
            self.services.mail_log.event(
                MailEvent.REJECT, stage="data", listener=self.ctx.name, client=self.client_ip,
                id=txn.queue_id, code=answer.code, rule="screening",
                reason=f"screener failed: {type(error).__name__}: {error}")
            self._drop_transaction()
            self._respond(".", "", answer, queue_id=txn.queue_id)
        else:
            found = done.result()
            if found is None:
                self._commit(ev)
                return
            if isinstance(found, Stripped):
                if found.content is not None:
                    # The message goes on without what was forbidden in it.
                    spool = self.services.store.new_spool()
                    spool.write(found.content)
                    txn.body.discard()
                    txn.spool = spool
                    txn.stripped = "; ".join(f.detail for f in found.findings)
                    self._commit(ev)
                    return
                found = found.findings[0]     # nothing would be left: refused instead
            if screener is None or screener.action != "badmail":
                # RFC 3463 5.7.1: delivery not authorized, message refused (by policy).
                answer = reply(550, "5.7.1", f"Message refused: {_clean(found.detail, 200)}")
                self.services.mail_log.event(
                    MailEvent.REJECT, stage="data", listener=self.ctx.name,
                    client=self.client_ip, id=txn.queue_id, code=answer.code,
                    sender=self._addr(txn.sender),
                    to=",".join(r.address for r in txn.recipients),
                    rule=found.rule, reason=found.detail)
                self._drop_transaction()
                self._respond(".", "", answer, queue_id=txn.queue_id)
            else:
                # Accepted and kept in badmail, where the admin is told (as a policy
                # violation with on_violation = "badmail" is).
                _quarantine(txn, found.rule, found.detail)
                self._commit(ev)
                return
        self._update_reading()
        self._pump()

    async def _milters(self, ev: DataEnd) -> None:
        """Ask the listener's milters (server/milters.py), then refuse, or commit the
        message as they left it."""
        txn = self._txn()
        user = self.client.user
        facts = MilterFacts(
            queue_id=txn.queue_id, hostname=self.ctx.hostname, listener=self.ctx.name,
            client_ip=self.client_ip,
            client_port=(self.transport.get_extra_info("peername") or ("", 0))[1],
            client_name=self.client.verified_name, helo=self.helo,
            sender=self._addr(txn.sender),
            recipients=tuple(r.address for r in txn.recipients),
            auth_user=user,
            tls=self.tls)
        try:
            result = await run_chain(self.ctx.milters, facts, txn.body,
                                     self.services.store.new_spool, self._milter_chain)
        except Exception as exc:      # a fault of ours: nothing unfiltered passes, no crash
            result = Filtered(spool=txn.body, refusal=UNAVAILABLE, rule="milters",
                              reason=f"{type(exc).__name__}: {exc}")
        self._waiting = False
        if result.spool is not txn.spool and (result.refusal is not None or self._closed
                                              or self.txn is not txn):
            result.spool.discard()
        if self._closed or self.txn is not txn:
            self._drop_transaction()      # the client left meanwhile: nothing was answered
            return
        log = self.services.mail_log
        for note in result.notes:
            log.event(MailEvent.REJECT, stage="milter", listener=self.ctx.name,
                      client=self.client_ip, id=txn.queue_id, rule="milters",
                      reason=note, action="accept")
        if result.refusal is not None:
            log.event(MailEvent.REJECT, stage="data", listener=self.ctx.name,
                      client=self.client_ip, id=txn.queue_id, code=result.refusal.code,
                      sender=self._addr(txn.sender),
                      to=",".join(r.address for r in txn.recipients),
                      rule=result.rule, reason=result.reason)
            self._drop_transaction()
            self._respond(".", "", result.refusal, queue_id=txn.queue_id)
            self._update_reading()
            self._pump()
            return
        if result.spool is not txn.spool:
            txn.body.discard()
            txn.spool = result.spool
        if result.envelope:
            sender, txn.recipients = apply_envelope(self._addr(txn.sender), txn.recipients,
                                                    result.envelope)
            txn.sender = parse_path(f"<{sender}>", utf8=True)   # checked by the milter client
        if result.badmail is not None:
            _quarantine(txn, result.badmail_rule, result.badmail)
        self._commit(ev)

    # -- ETRN (RFC 1985) -------------------------------------------------------------------

    def _on_etrn(self, ev: Etrn) -> None:
        node = ("@" if ev.subdomains else "") + ev.domain
        if self._gated("ETRN", node, node=node):      # the listener's gates, as for MAIL
            return
        self._etrns += 1
        if self._etrns > MAX_ETRN_PER_SESSION:
            self._etrn_refused(node, None, "too many ETRN commands in this session")
            return
        router, ip = self.services.router, self.client.ip
        assert router is not None             # every relay has one (app.Relay.start)
        route, refusal = router.etrn_refusal(ev.domain, ip)
        if refusal is not None and not ev.subdomains:
            self._etrn_refused(node, route, refusal)
            return
        self._waiting = True
        self._update_reading()
        done = self.services.store.start_etrn(
            ev.domain, subdomains=ev.subdomains,
            allowed=lambda domain: router.etrn_refusal(domain, ip)[1] is None)
        done.add_done_callback(functools.partial(self._etrn_started, node, route, refusal))

    def _etrn_refused(self, node: str, route: str | None, reason: str) -> None:
        answer = reply(459, "4.7.1", f"Node {node} not allowed: {reason}")
        self.services.mail_log.event(
            MailEvent.REJECT, stage="etrn", listener=self.ctx.name, client=self.client_ip,
            code=answer.code, rule=route, reason=reason, node=node)
        self._respond("ETRN", node, answer)

    def _etrn_started(self, node: str, route: str, refusal: str | None,
                      done: asyncio.Future) -> None:
        self._waiting = False
        error = "cancelled" if done.cancelled() else done.exception()
        if self._closed:
            return
        if error is not None:
            answer = reply(458, "4.3.0", f"Unable to queue messages for node {node}")
            self.services.mail_log.event(
                MailEvent.REJECT, stage="etrn", listener=self.ctx.name, client=self.client_ip,
                code=answer.code, reason=str(error), node=node)
            self._respond("ETRN", node, answer)
        else:
            messages, domains = done.result()
            if not domains and refusal is not None:
                # "@domain": nothing below it may be started, and the domain itself may not.
                self._etrn_refused(node, route, refusal)
            else:
                if messages:
                    answer = reply(253, "2.0.0",
                                   f"OK, {messages} pending messages for node {node} started")
                    self.services.on_queued()
                else:
                    answer = reply(251, "2.0.0", f"OK, no messages waiting for node {node}")
                self.services.mail_log.event(
                    MailEvent.ETRN, listener=self.ctx.name, client=self.client_ip, node=node,
                    domains=",".join(domains) or None, messages=messages)
                self._respond("ETRN", node, answer)
        self._update_reading()
        self._pump()

    # -- ATRN (RFC 2645; server/atrn.py) ---------------------------------------------------

    def _on_atrn(self, ev: Atrn) -> None:
        asked = ",".join(ev.domains)
        user = self.client.user
        engine = self.services.atrn
        allowed = engine.router.atrn_domains(user) if engine is not None and user else ()
        refused = atrn.check(user, ev.domains, allowed)
        if refused is not None:
            self.services.mail_log.event(
                MailEvent.REJECT, stage="atrn", listener=self.ctx.name, client=self.client_ip,
                user=user, code=refused.reply.code, reason=refused.detail, domains=asked or None)
            self._respond("ATRN", asked, refused.reply)
            return
        domains = ev.domains or allowed
        self._waiting = True
        self._update_reading()
        done = self.services.store.start_atrn(domains, atrn.ATRN_LEASE)
        done.add_done_callback(functools.partial(self._atrn_claimed, asked, domains))

    def _atrn_claimed(self, asked: str, domains: tuple[str, ...], done: asyncio.Future) -> None:
        error = "cancelled" if done.cancelled() else done.exception()
        messages = [] if error is not None else done.result()
        if self._closed:
            if messages:   # the client left meanwhile: what was claimed goes back on hold
                engine = self.services.atrn
                assert engine is not None     # ATRN is offered only with its engine
                self._spawn(engine.hold_back(messages, atrn.CLIENT_GONE))
            return
        if error is not None:
            self.services.mail_log.event(
                MailEvent.REJECT, stage="atrn", listener=self.ctx.name, client=self.client_ip,
                user=self.client.user, code=atrn.ATRN_NOT_NOW.code, reason=str(error))
            answer = atrn.ATRN_NOT_NOW
        elif not messages:
            answer = atrn.ATRN_NO_MAIL
        else:
            # RFC 2645 5.3: the roles reverse. The core reads nothing more; the relay is
            # the client on this connection until it has sent the mail and said QUIT.
            self._respond("ATRN", asked, atrn.ATRN_REVERSING)
            self._flush()
            self.services.mail_log.event(
                MailEvent.ATRN, listener=self.ctx.name, client=self.client_ip,
                user=self.client.user, domains=",".join(domains), messages=len(messages))
            self._spawn(self._reversed(messages))
            return
        self._waiting = False
        self._respond("ATRN", asked, answer)
        self._update_reading()
        self._pump()

    async def _reversed(self, messages: list) -> None:
        delivered, held = 0, sum(len(m.recipients) for m in messages)
        engine = self.services.atrn
        assert engine is not None             # ATRN is offered only with its engine
        try:
            delivered, held = await atrn.deliver(
                engine, self.transport, messages, initial=self.conn.take_input(),
                session_id=self._plog.session_id if self._plog is not None else None,
                client_ip=self.client_ip)
        except Exception as exc:  # noqa: BLE001 - a bug: what was not recorded comes back
            # when its lease runs out (ATRN_LEASE) and is held again by the scheduler.
            self.services.mail_log.event(
                MailEvent.ATRN, listener=self.ctx.name, client=self.client_ip,
                user=self.client.user, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.services.on_queued()     # DSNs it made go out through the scheduler
            self.services.mail_log.event(
                MailEvent.ATRN, listener=self.ctx.name, client=self.client_ip,
                user=self.client.user, delivered=delivered, held=held, stage="done")
            self._closed = True
            self._finish(None)

    def _on_handled(self, ev: Handled) -> None:
        if ev.verb.upper() in ("RSET", "HELO", "EHLO"):
            self._drop_transaction()
        if ev.verb == "AUTH" and self._sasl is not None and self._sasl.active:
            # The core ended an AUTH exchange ("*", or a response that is not base64): one
            # line for the whole exchange, as when it runs its course.
            self._sasl.reset()
            self._protocol_log("AUTH", ev.argument, ev.reply, self._auth_in + ev.octets,
                               sent_before=self._auth_out)
            return
        self._protocol_log(ev.verb, ev.argument, ev.reply, ev.octets)

    def _on_closed(self, ev: Closed) -> None:
        self._drop_transaction()
        if ev.reason not in ("quit",):
            self._protocol_log("CLOSE", ev.reason, None, 0, timed=False)

    # -- AUTH (RFC 4954; the exchange is server/sasl.py's) --------------------------------

    def _advertise_auth(self) -> None:
        """AUTH is listed in EHLO only over TLS, or for networks allowed plaintext AUTH."""
        settings = self.conn.settings
        if settings.auth_mechanisms:
            show = self.services.policy.check_auth(self.client, tls=self.tls is not None) is None
            self.conn.settings = replace(settings, advertise_auth=show)

    def _on_auth(self, ev: Auth) -> None:
        mechanism = ev.mechanism.upper()
        self._auth_in, self._auth_out = ev.octets, 0
        if not self.conn.settings.advertise_auth:
            self._auth_answer(mechanism, gates.ENCRYPTION_REQUIRED, "plaintext AUTH refused")
            return
        if self._sasl is None:
            self._sasl = sasl.SaslExchange(self.ctx.hostname)
        self._auth_step(self._sasl.start(mechanism, ev.initial))

    def _on_auth_response(self, ev: AuthResponse) -> None:
        self._auth_in += ev.octets
        assert self._sasl is not None         # the core sends responses only after AUTH
        self._auth_step(self._sasl.respond(ev.data))

    def _auth_step(self, step: sasl.Step) -> None:
        """The exchange's next step (server/sasl.py): a 334 challenge, a refusal, or the
        credentials to check (the throttle first, then the checker, in a task)."""
        if isinstance(step, sasl.Challenge):
            self.conn.auth_challenge(step.data)
            self._auth_out += sasl.challenge_octets(step.data)
        elif isinstance(step, sasl.Failed):
            self._auth_answer(step.mechanism, step.reply, step.detail)
        else:
            throttle = self.services.auth_throttle
            if throttle is not None:
                verdict = throttle.check(client=self.client_ip, user=step.user)
                if verdict.locked:
                    self._auth_answer(step.mechanism, sasl.AUTH_LOCKED, verdict.reason,
                                      user=step.user)
                    return
            self._waiting = True
            self._update_reading()
            self._spawn(self._auth_verify(step))

    async def _auth_verify(self, credentials: sasl.Credentials) -> None:
        services, user = self.services, credentials.user
        result = await sasl.authenticate(credentials, client=self.client_ip,
                                         backend=services.auth, cram=services.cram,
                                         throttle=services.auth_throttle)
        if result.ok:
            self.client = replace(self.client, user=result.user or user,
                                  directory_groups=frozenset(result.groups))
        self._waiting = False
        if self._closed:
            return
        self._auth_answer(credentials.mechanism, result.reply,
                          result.detail or ("ok" if result.ok else "refused"), user=user,
                          backend=result.backend or None,
                          groups=",".join(sorted(result.groups)) if result.ok else None)
        self._update_reading()
        self._pump()

    def _auth_answer(self, mechanism: str, answer: Reply, detail: str, **fields: Any) -> None:
        self.services.mail_log.event(
            MailEvent.AUTH, listener=self.ctx.name, client=self.client_ip, mechanism=mechanism,
            result="ok" if answer.positive else "fail", code=answer.code, detail=detail, **fields)
        # The credentials never reach the logs: only the mechanism (and, once known, the
        # user name in cs-username). One line for the exchange: cs-bytes and sc-bytes count
        # all its lines, time-taken runs from its last client line (so it includes the
        # password check and the throttle's delay).
        self.conn.respond(answer)
        self._protocol_log("AUTH", mechanism, answer, self._auth_in, sent_before=self._auth_out)

    # The core's events (smtp/events.py) and what handles each.
    _HANDLERS: dict[type, Callable[["SmtpSession", Any], None]] = {
        Hello: _on_hello,
        MailFrom: _on_mail,
        RcptTo: _on_rcpt,
        DataStart: _on_data_start,
        DataEnd: _on_data_end,
        Handled: _on_handled,
        Closed: _on_closed,
        StartTls: _on_starttls,
        Auth: _on_auth,
        AuthResponse: _on_auth_response,
        Etrn: _on_etrn,
        Atrn: _on_atrn,
    }

    # -- helpers -------------------------------------------------------------------------

    def _respond(self, method: str, query: str, answer: Reply, *, queue_id: str = "") -> None:
        """Answer the command being handled, and log it (its octets as received): the line
        _protocol_log would write, recorded here (once per command: two calls fewer)."""
        sent = self.conn.respond(answer)
        plog = self._plog
        if plog is not None:
            plog.record(self.client.user if self.client else None, method, query,
                        answer.code, sent, self._cmd_octets,
                        int((self._loop.time() - self._cmd_at) * 1000), queue_id)

    def _txn(self) -> _Transaction:
        """The transaction under way (where the protocol guarantees one: after MAIL)."""
        txn = self.txn
        assert txn is not None, "no transaction"
        return txn

    def _drop_transaction(self) -> None:
        if self.txn is not None and not self._waiting:
            if self.txn.spool is not None:
                self.txn.spool.discard()
            self.txn = None

    @staticmethod
    def _addr(address: Address | None) -> str:
        return "" if address is None else str(address)

    def _protocol_log(self, method: str, query: str, answer: Reply | None, cs_bytes: int, *,
                      queue_id: str = "", sent_before: int = 0, timed: bool = True) -> None:
        """One protocol log line. time-taken: from when the command's line arrived
        (``_cmd_at``) until now, when its reply goes out; ``timed=False`` for lines that
        answer no command (CLOSE, TIMEOUT). ``sent_before``: octets already sent for the
        command (AUTH's 334 challenges)."""
        plog = self._plog
        if plog is None:
            return
        taken = int((self._loop.time() - self._cmd_at) * 1000) if timed else 0
        user = self.client.user if self.client else None
        if answer is None:
            plog.record(user, method, query, 0, sent_before, cs_bytes, taken, queue_id)
        else:
            plog.record(user, method, query, answer.code,
                        sent_before + len(answer.to_bytes()), cs_bytes, taken, queue_id)

    def _log_reject(self, stage: str, decision: Decision, **fields: Any) -> None:
        self.services.mail_log.event(
            MailEvent.REJECT, stage=stage, listener=self.ctx.name, client=self.client_ip,
            code=decision.reply.code, rule=decision.rule, reason=decision.detail, **fields,
        )

    def _log_limit(self, stage: str, answer: Reply, rule: str, reason: str,
                   **fields: Any) -> None:
        """A refusal by a limit (not by the policy): the rule is the config key that set it."""
        self.services.mail_log.event(
            MailEvent.REJECT, stage=stage, listener=self.ctx.name, client=self.client_ip,
            code=answer.code, rule=rule, reason=reason, **fields,
        )

    def _log_queued(self, envelope: Envelope, size: int, *, stripped: str | None = None) -> None:
        log = self.services.mail_log
        # Stamped with the moment the commit began (received_at), not now: once committed,
        # the delivery process may claim the message and log its attempt before this
        # callback runs, and the stamps must sort queued first (README "Logs").
        at = envelope.received_at
        for r in envelope.recipients:
            if r.status is RecipientStatus.BADMAIL:
                log.event(MailEvent.BADMAIL, at=at, id=envelope.queue_id,
                          sender=envelope.sender, to=r.address, rule=r.rule, reason=r.reason)
        log.event(
            MailEvent.QUEUED, at=at, id=envelope.queue_id, listener=self.ctx.name,
            client=self.client_ip, helo=self.helo, user=envelope.auth_user,
            sender=envelope.sender, to=",".join([r.address for r in envelope.recipients]),
            size=size, stripped=stripped,
        )

    # -- timeouts ------------------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._check_timeout)

    def _check_timeout(self) -> None:
        """RFC 5321 4.5.3.2.7: close a session that has been silent for too long.

        One timer per session, re-armed for the remaining time rather than on every read,
        so an active session costs no timer churn.
        """
        if self._closed:
            return
        limit = self.ctx.data_timeout if self.conn.in_data else self.ctx.command_timeout
        if self._waiting:
            # Our own commit is in flight: the client is not the one being slow.
            self._arm_timer(limit)
            return
        idle = self._loop.time() - self._last_activity
        if idle < limit:
            self._arm_timer(limit - idle)
            return
        self._protocol_log("TIMEOUT", "", TIMEOUT, 0, timed=False)
        self.services.mail_log.event(
            MailEvent.DISCONNECT, listener=self.ctx.name, client=self.client_ip,
            reason="timeout", in_transaction=self.txn is not None,
        )
        self._drop_transaction()
        self.transport.write(TIMEOUT.to_bytes())
        self._closed = True
        self.transport.close()
