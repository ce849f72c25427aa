"""The scheduler and the delivery of queued messages.

A loop claims due recipients from the queue (a lease, so that a crash mid-attempt means a
retry, never a loss; see LEASE_SECONDS), the router says where each recipient goes, the resolver turns the
route into addresses, and the outbound client speaks SMTP to them. What comes back is
written to the queue in one transaction together with any DSN it causes: delivered,
deferred (next attempt on the retry schedule), bounced (a DSN to the sender), held, or
badmail (a bounce that cannot be bounced). Which of these, and which DSNs, is decided by
`plan.plan_outcomes`, a pure function; this module does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from relaywarden.delivery.client import (
    Body,
    ClientPolicy,
    DeliveryError,
    OutboundConnection,
    OutRecipient,
    TransactionResult,
)
from relaywarden.delivery.courier import CourierContext
from relaywarden.delivery.dsn import DsnRecipient, build_dsn
from relaywarden.delivery.plan import Kind, Outcome, Plan, plan_outcomes
from relaywarden.delivery.plan import show as _show
from relaywarden.delivery.routing import Route, RouteKind, Router
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.logs.protocol import ProtocolLog
from relaywarden.metrics import in_flight
from relaywarden.queue.store import (
    BodyMissing,
    DueMessage,
    DueRecipient,
    Envelope,
    HANDOFF_GRACE_SECONDS,
    RecipientRecord,
    RecipientStatus,
    RecipientUpdate,
    Store,
    StoreError,
    new_queue_id,
)
from relaywarden.resolver import MxStatus, Resolver
from relaywarden.smtp.client import Extensions
from relaywarden.smtp.reply import Reply, reply

# Kind and Outcome live in delivery/plan.py; the couriers import them from here too.
__all__ = ["Connection", "Connector", "DeliverySettings", "Engine", "Kind", "Outcome"]

#: How often the scheduler looks for due mail when nothing wakes it.
POLL_SECONDS = 1.0
#: An idle outbound connection is kept this long for the next message to the same host.
IDLE_SECONDS = 10.0
#: A claim leases its recipients for this long, and the scheduler renews the leases of the
#: attempts still under way every RENEW_SECONDS. An attempt's worst case is long (RFC 5321
#: 4.5.3.2 allows 5 minutes per command and 10 for the final dot, per host tried: over 40
#: minutes with the default timeouts), so a lease that had to cover it whole would keep a
#: recipient from the next attempt for that long whenever an attempt ends without its
#: outcome reaching the queue (the process died, or the queue could not be written). A
#: short lease that the live process renews covers any attempt and lapses within two
#: minutes of the last renewal once nobody renews it.
LEASE_SECONDS = 120.0
RENEW_SECONDS = 30.0
#: An attempt that ends by an error of our own (a bug, the disk: not a reply of the next
#: hop) is tried again this soon, not on the retry schedule meant for remote trouble.
LOCAL_RETRY_SECONDS = 60.0
#: A group's outcome until a next hop answers (made once: every message sets it, issue 15).
NO_HOP_ANSWERED = reply(451, "4.4.1", "no next hop answered")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    hostname: str                       # Reporting-MTA of DSNs
    helo: str
    postmaster: str
    max_concurrent: int = 50
    per_destination: int = 10
    retry_schedule: tuple[float, ...] = (600, 900, 1800, 3600, 7200, 14400)
    expire_after: float = 172800
    delay_notice_after: float = 43200
    mx_port: int = 25
    connect_timeout: float = 30
    command_timeout: float = 300
    data_timeout: float = 600
    ca_file: str | None = None
    ndr_copy_to: str | None = None


@dataclass(frozen=True, slots=True)
class _Record:
    """An attempt's outcome for the queue: what `Store.record` takes."""
    queue_id: str
    updates: list[RecipientUpdate]
    new_messages: list
    events: list[dict]

    @property
    def keys(self) -> set[tuple[str, int]]:
        return {(self.queue_id, u.idx) for u in self.updates}


@dataclass(frozen=True, slots=True)
class _Hop:
    address: str
    port: int
    name: str                   # host name: TLS server name, Remote-MTA


def _read_original(path: Path) -> bytes:
    """A body file, for a DSN; empty if the message was removed meanwhile."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _permanent_stage(err: DeliveryError) -> bool:
    """A permanent refusal inside the mail transaction ends the attempt for this message;
    one before it (connect, greeting, TLS, AUTH) only means: try the next host."""
    return err.reply.permanent and err.stage in ("mail", "rcpt", "data")


class Connection(Protocol):
    """An open connection to a next hop, as the scheduler uses it. `OutboundConnection`
    (delivery/client.py) speaks SMTP; a test gives the engine a fake next hop in process
    (tests/delivery/test_engine_next_hop.py), as chasquid's courier interface does."""

    #: Called once the final dot is queued for sending: the next message to the hop may
    #: go right behind it (RFC 2920 3.1; see OutboundConnection.on_dot).
    on_dot: Callable[[Any], None] | None

    @property
    def extensions(self) -> Extensions: ...      # .dsn: the hop takes NOTIFY/ORCPT on
    @property
    def tls_version(self) -> str | None: ...
    @property
    def tls_cipher(self) -> str | None: ...
    @property
    def usable(self) -> bool: ...                # open and idle: may send a message
    @property
    def chainable(self) -> bool: ...             # its final dot's reply is still to come

    def trace(self, queue_id: str, route: str) -> None: ...

    async def send(self, *, sender: str, recipients: Sequence[OutRecipient], body: Body,
                   size: int, eightbit: bool = False, smtputf8: bool = False,
                   ret: str | None = None, envid: str | None = None) -> TransactionResult: ...

    async def close(self) -> None: ...


class Connector(Protocol):
    """Opens a connection to a next hop, raising DeliveryError when it cannot (the
    default is `OutboundConnection.open`). The scheduler's pool holds what it returns."""

    def __call__(self, address: str, port: int, policy: ClientPolicy, *,
                 log: ProtocolLog | None = None, queue_id: str = "",
                 route: str = "") -> Awaitable[Connection]: ...


def _transaction(conn: Connection, message: DueMessage, body: bytes | Path,
                 recipients: Sequence[DueRecipient],
                 route: str = "") -> Awaitable[TransactionResult]:
    """One message over an open connection, with its envelope and DSN parameters: the
    connection's send(), to be awaited (not a coroutine of its own: one frame fewer to
    resume at each of the transaction's replies, issue 15)."""
    conn.trace(message.queue_id, route)        # the protocol log's lines are this message's
    return conn.send(
        sender=message.sender,
        recipients=[OutRecipient(address=r.address, notify=r.notify, orcpt=r.orcpt)
                    for r in recipients],
        body=body, size=message.size if isinstance(body, Path) else len(body),
        eightbit=message.body_type == "8BITMIME",
        smtputf8=message.smtputf8, ret=message.ret, envid=message.envid,
    )


class _Gate:
    """At most ``limit`` holders at once, like a semaphore, but the limit can change while
    it is held (a reload of delivery.per_destination): a lower limit lets no one new in
    until enough holders have left, a higher one lets waiters in at once.

    First come, first served: a slot that frees goes straight to the oldest waiter (it is
    counted as used before the waiter runs), and no newcomer passes anyone waiting. With a
    slot merely announced, a task created meanwhile took it and the woken waiter had to
    wait again: under load that was ~3 wake-ups per message (issue 15)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def __aenter__(self) -> None:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter          # done: the slot is ours, already counted in ``used``
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()    # handed a slot, then cancelled: the turn goes on
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():       # not cancelled meanwhile
                self.used += 1
                waiter.set_result(None)


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Wakeup:
    """The scheduler's wake-up: asyncio.Event's set() and clear(), and a wait with a
    timeout that is one future and one timer. ``asyncio.wait_for(event.wait(), t)`` made a
    task of the wait and a waiter for it, every round of the scheduler; at the rate of new
    connections that is a round for every one or two messages (issue 15)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Until set() or ``timeout`` seconds, whichever comes first."""
        if self._set:
            return
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


#: Client policies kept (Engine._policy): routes x next hops of a large config, at most.
_POLICIES_KEPT = 1024


def _jitter() -> float:
    """A retry delay's factor: spread a backlog's retries (RFC 5321 4.5.4.1)."""
    return random.uniform(0.9, 1.1)


class _Pool:
    """Idle outbound connections by next hop, and a cap on connections per next hop."""

    def __init__(self, per_destination: int,
                 connect: Connector = OutboundConnection.open) -> None:
        self._limit = per_destination
        self._connect = connect
        self._slots: dict[tuple[str, int], _Gate] = {}
        self._idle: dict[tuple, list[tuple[float, Connection]]] = defaultdict(list)

    def slot(self, hop: _Hop) -> _Gate:
        key = (hop.address, hop.port)
        if key not in self._slots:
            self._slots[key] = _Gate(self._limit)
        return self._slots[key]

    def resize(self, per_destination: int) -> None:
        """A new delivery.per_destination, for the next connections to every next hop."""
        self._limit = per_destination
        for gate in self._slots.values():
            gate.resize(per_destination)

    async def take(self, hop: _Hop, policy: ClientPolicy, *, fresh: bool = False,
                   log: ProtocolLog | None = None, queue_id: str = "",
                   route: str = "") -> tuple[Connection, bool]:
        """A connection to the hop, and whether it was reused from the idle pool. A new
        one logs to ``log`` as ``queue_id``'s (OutboundConnection.open, the default
        connector)."""
        idle = self._idle[(hop.address, hop.port, policy)]
        while idle and not fresh:
            _, conn = idle.pop()
            # Idle, or its last message's final dot is out and unanswered: the next envelope
            # goes right behind it (RFC 2920 3.1, see OutboundConnection.on_dot).
            if conn.usable or conn.chainable:
                return conn, True
            await conn.close()
        return await self._connect(hop.address, hop.port, policy, log=log,
                                   queue_id=queue_id, route=route), False

    async def give_back(self, hop: _Hop, policy: ClientPolicy, conn: Connection) -> None:
        # No RSET here: send() returned, so the transaction ended with the reply to the final
        # dot (the server has cleared its state, RFC 5321 4.1.1.4) or send() sent RSET itself.
        # A connection that has gone stale meanwhile is caught when it is next taken
        # (the "reused" retry), as it would be after an RSET.
        if conn.usable:
            self._idle[(hop.address, hop.port, policy)].append((time.monotonic(), conn))
            return
        await conn.close()

    def offer(self, hop: _Hop, policy: ClientPolicy, conn: Connection) -> None:
        """A connection whose last message's final dot is out (its reply not read yet): the
        next message to this hop may take it at once. Its sender still reads that reply."""
        self._idle[(hop.address, hop.port, policy)].append((time.monotonic(), conn))

    async def reap(self, older_than: float) -> None:
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = []
            for since, conn in idle:
                if conn.chainable:
                    keep.append((since, conn))    # its sender is reading the dot's reply
                elif now - since > older_than or not conn.usable:
                    await conn.close()
                else:
                    keep.append((since, conn))
            self._idle[key] = keep

    async def close(self) -> None:
        await self.reap(-1)


class Engine:
    def __init__(self, *, store: Store, router: Router, resolver: Resolver,
                 settings: DeliverySettings, mail_log: MailLog, clock=time.time,
                 protocol_log: ProtocolLog | None = None,
                 connect: Connector = OutboundConnection.open) -> None:
        """``connect`` opens the connections to next hops (the seam for an in-process
        next hop in tests); the relay always uses the default, SMTP."""
        self.store = store
        self.router = router
        self.resolver = resolver
        self._pool = _Pool(settings.per_destination, connect)
        self.settings = settings
        self.mail_log = mail_log
        self.protocol_log = protocol_log    # the outbound protocol log (None: off)
        self._clock = clock
        self._wakeup = _Wakeup()
        # (route name, next hop name) -> (route, settings, ClientPolicy): see _policy
        self._policies: dict[tuple[str, str], tuple[Route, DeliverySettings, ClientPolicy]] = {}
        self._active: set[asyncio.Task] = set()
        self._starved = False            # the last claim filled every free slot (_run)
        self._stopping = False
        self._loop_task: asyncio.Task | None = None
        # The recipients (queue id, idx) of the attempts under way: their leases are
        # renewed, and a claim never hands them out twice.
        self._live: set[tuple[str, int]] = set()
        self._renewed_at = 0.0           # time.monotonic() of the last renewal that worked
        # Outcomes the queue could not take (a full disk): kept here, in order, and written
        # before anything else once the queue takes writes again. Their recipients stay in
        # _live meanwhile, so nothing claims them; the process knows how their attempt ended.
        self._unrecorded: list[_Record] = []
        # Hand-off: handed messages on their first attempt (queue id -> time.monotonic() it
        # began). One that lasts HANDOFF_GRACE_SECONDS goes into the index, leased by the
        # attempt (_index_lingering), so the admin can steer it; its outcome waits for that
        # (_indexing) and is then recorded in the index.
        self._first: dict[str, float] = {}
        self._indexing: dict[str, asyncio.Future] = {}
        self._linger_check = 0.0
        self._tasks: set[asyncio.Task] = set()

    @property
    def settings(self) -> DeliverySettings:
        return self._settings

    @settings.setter
    def settings(self, settings: DeliverySettings) -> None:
        # A reload: new attempts use the new settings, the next connections the new cap.
        self._settings = settings
        self._pool.resize(settings.per_destination)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.store.release_leases()
        except StoreError as exc:
            # A full disk: delivery starts anyway; the leases run out by themselves.
            self.mail_log.event(MailEvent.DEFERRED, error=f"releasing leases failed: {exc}")
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """New mail was queued (or released): look now rather than at the next poll."""
        self._wakeup.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._loop_task is not None:
            await asyncio.wait({self._loop_task}, timeout=timeout)
        if self._active:
            # Attempts still running keep their lease; the next start retries them.
            done, pending = await asyncio.wait(set(self._active), timeout=timeout)
            for task in pending:
                task.cancel()
        if not await self._write_unrecorded():
            # Their leases lapse, and the next start releases them anyway: the attempts
            # are made again (a delivery twice, at worst; never a loss).
            print(f"relaywarden: delivery: stopping with {len(self._unrecorded)} attempt"
                  " outcome(s) the queue could not take; they will be tried again",
                  file=sys.stderr, flush=True)
        await self._pool.close()

    async def _run(self) -> None:
        last_reap = time.monotonic()
        loop = asyncio.get_running_loop()   # once: each look-up is a getpid() under 3.11
        while not self._stopping:
            self._wakeup.clear()
            free = self._settings.max_concurrent - len(self._active)
            # Outcomes the queue owes first, then the live attempts' leases: no new claim
            # while either failed (the queue cannot be written; a claim would fail too).
            writable = await self._write_unrecorded() and await self._renew_leases()
            # Slots all taken: the end of an attempt is what lets the next claim in.
            self._starved = free <= 0
            if free > 0 and writable:
                try:
                    due = await self.store.claim_due(self._clock(), free, LEASE_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the queue may be busy; try again
                    self.mail_log.event(MailEvent.DEFERRED, error=f"queue scan failed: {exc}")
                    due = []
                due = [m for m in map(self._not_live, due) if m is not None]
                for message in due:
                    task = loop.create_task(self._deliver(message))
                    # asyncio keeps only weak references to tasks (docs/architecture.md, known traps).
                    self._active.add(task)
                    task.add_done_callback(self._task_done)
                if len(due) >= free:
                    self._starved = True
                    continue   # more may be due: look again as soon as a slot frees
            self._index_lingering()
            if time.monotonic() - last_reap > IDLE_SECONDS:
                await self._pool.reap(IDLE_SECONDS)
                last_reap = time.monotonic()
            await self._wakeup.wait(loop, POLL_SECONDS)

    def _task_done(self, task: asyncio.Task) -> None:
        self._active.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.mail_log.event(MailEvent.DEFERRED, error=f"delivery failed: {task.exception()!r}")
        # A round of the scheduler after an attempt only when it can do something the
        # attempt's end allows: claim more (the last claim filled every free slot) or write
        # an outcome the queue could not take. New mail wakes it itself (wake()); a round
        # for every finished message was most of its rounds with new connections (issue 15).
        if self._starved or self._unrecorded or self._stopping:
            self._wakeup.set()

    # -- leases and outcomes the queue could not take ------------------------------------

    def _not_live(self, message: DueMessage) -> DueMessage | None:
        """A claimed message without the recipients an attempt of ours already has (a lease
        that lapsed while the queue could not be written to renew it). A handed message
        (from the hand-off log, never attempted yet) has none: only one from the index can."""
        if message.handed or not self._live:
            return message
        keep = tuple([r for r in message.recipients
                      if (message.queue_id, r.idx) not in self._live])
        if len(keep) == len(message.recipients):
            return message
        return dataclasses.replace(message, recipients=keep) if keep else None

    async def _renew_leases(self) -> bool:
        """Renew the leases of the attempts under way, every RENEW_SECONDS (and at once
        after a renewal failed). False: the queue could not be written."""
        if not self._live:
            self._renewed_at = time.monotonic()
            return True
        if time.monotonic() - self._renewed_at < RENEW_SECONDS:
            return True
        try:
            await self.store.renew_leases(sorted(self._live), self._clock() + LEASE_SECONDS)
        except Exception:  # noqa: BLE001 - the queue cannot be written; they lapse
            return False
        self._renewed_at = time.monotonic()
        return True

    async def _write_unrecorded(self) -> bool:
        """Write the outcomes the queue could not take before, oldest first. True when none
        is left."""
        while self._unrecorded:
            record = self._unrecorded[0]
            try:
                await self._store_record(record)
            except Exception:  # noqa: BLE001 - still not writable: keep them, try later
                return False
            self._unrecorded.pop(0)
            self._live.difference_update(record.keys)
            self.mail_log.event(MailEvent.DEFERRED, id=record.queue_id, action="recorded",
                                reason="the queue took the attempt's outcome, kept in memory"
                                " until it could be written")
        return True

    def _index_lingering(self) -> None:
        """Hand-off: first attempts that have lasted HANDOFF_GRACE_SECONDS, and handed
        messages that have waited that long for one, go into the index (a task: the
        scheduler does not wait for it)."""
        now = time.monotonic()
        if now < self._linger_check:
            return
        self._linger_check = now + HANDOFF_GRACE_SECONDS / 4
        cutoff = now - HANDOFF_GRACE_SECONDS
        lingering = [qid for qid, began in self._first.items() if began < cutoff]
        for qid in lingering:
            del self._first[qid]
        if not lingering and not self.store.hands_off:
            return
        done = asyncio.get_running_loop().create_future()
        for qid in lingering:
            self._indexing[qid] = done
        task = asyncio.get_running_loop().create_task(self._index(lingering, done))
        self._tasks.add(task)     # asyncio keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _index(self, lingering: list[str], done: asyncio.Future) -> None:
        try:
            if lingering:
                await self.store.index_handed(lingering, self._clock() + LEASE_SECONDS)
            if await self.store.index_waiting(self._clock() - HANDOFF_GRACE_SECONDS):
                self.wake()
        except Exception as exc:  # noqa: BLE001 - they stay handed: the log keeps them
            self.mail_log.event(MailEvent.DEFERRED, error=f"indexing handed messages failed:"
                                f" {exc}")
        finally:
            done.set_result(None)
            for qid in lingering:
                if self._indexing.get(qid) is done:
                    del self._indexing[qid]

    async def _store_record(self, record: "_Record") -> None:
        self._first.pop(record.queue_id, None)
        indexing = self._indexing.get(record.queue_id)
        if indexing is not None:
            # Going into the index now: the outcome is recorded there, after it.
            await asyncio.shield(indexing)
        await self.store.record(record.queue_id, record.updates,
                                new_messages=record.new_messages, events=record.events)
        for env, spool in record.new_messages:
            self.mail_log.event(MailEvent.QUEUED, at=env.received_at, id=env.queue_id,
                                listener="-", sender="<>",
                                to=",".join(r.address for r in env.recipients), size=spool.size,
                                reason=f"DSN for {record.queue_id}")
            spool.discard()
        if record.new_messages:
            self.wake()

    async def _record(self, record: "_Record") -> None:
        """Write an attempt's outcome. If the queue cannot take it (a full disk), it is kept
        in memory and written by the scheduler as soon as the queue can: the process knows
        how the attempt ended, so its recipients are not left to a lease."""
        if self._loop_task is None:
            # The receiving process's ATRN engine has no scheduler to write it later: the
            # error goes to the session, and the ATRN lease brings the recipients back.
            await self._store_record(record)
            return
        error = None
        if not self._unrecorded:    # in order: never ahead of an older outcome
            try:
                await self._store_record(record)
                return
            except Exception as exc:  # noqa: BLE001 - StoreError, or a DSN that cannot be stored
                error = exc
        self._unrecorded.append(record)
        self._live.update(record.keys)
        self.mail_log.event(MailEvent.DEFERRED, id=record.queue_id, action="kept",
                            error=None if error is None else f"queue write failed: {error}",
                            reason="the attempt's outcome is kept in memory until the queue"
                            " can be written")

    # -- one message -----------------------------------------------------------------------

    async def _deliver(self, message: DueMessage) -> None:
        keys = {(message.queue_id, r.idx) for r in message.recipients}
        self._live.update(keys)
        if message.handed:
            self._first[message.queue_id] = time.monotonic()
        try:
            await self._attempt(message)
        except Exception as exc:  # noqa: BLE001 - a bug must defer the mail, not strand it
            await self._local_error(message, exc)
        finally:
            # Recorded (or kept in _unrecorded, which holds its own keys): no longer ours.
            pending = {k for rec in self._unrecorded for k in rec.keys}
            self._live.difference_update(keys - pending)
            self._first.pop(message.queue_id, None)

    async def _local_error(self, message: DueMessage, exc: Exception) -> None:
        """An attempt that ended by an exception of our own (a bug, an OSError of our disk;
        not a reply of the next hop): its recipients are deferred at once, with the reason,
        and tried again in LOCAL_RETRY_SECONDS."""
        why = f"4.3.0 local error: {exc!r}"
        self.mail_log.event(MailEvent.DEFERRED, id=message.queue_id,
                            to=",".join(r.address for r in message.recipients), reply=why,
                            attempts=max(r.attempts for r in message.recipients) + 1)
        now = self._clock()
        retry_at = now + LOCAL_RETRY_SECONDS * random.uniform(0.9, 1.1)
        updates = [
            RecipientUpdate(idx=r.idx, status=RecipientStatus.QUEUED, next_attempt=retry_at,
                            attempts=r.attempts + 1, last_error=why,
                            delay_notified=r.delay_notified)
            for r in message.recipients]
        await self._record(_Record(message.queue_id, updates, [], [
            {"at": now, "idx": u.idx, "to": r.address, "outcome": "deferred",
             "reply": why, "ours": True, "attempts": u.attempts, "next_attempt": retry_at}
            for u, r in zip(updates, message.recipients)]))

    async def _body_of(self, message: DueMessage) -> bytes | Path | None:
        """The body to send, or None: the message was removed meanwhile (queue delete), or
        its body file is missing (then its recipients are held and the admin is told)."""
        if message.body is not None:
            return message.body
        try:
            return await self.store.locate_body(message.queue_id)
        except BodyMissing as exc:
            # Nothing can be sent, and retrying will not bring the file back: the
            # recipients are held (no more attempts) and the admin is told.
            self.mail_log.event(MailEvent.DEFERRED, id=message.queue_id, error=str(exc),
                                action="held")
            await self._record(_Record(message.queue_id, [
                RecipientUpdate(idx=r.idx, status=RecipientStatus.HELD,
                                attempts=r.attempts, last_error=str(exc), held_by="body")
                for r in message.recipients], [], [
                {"at": self._clock(), "idx": r.idx, "to": r.address, "outcome": "held",
                 "reply": str(exc), "ours": True, "attempts": r.attempts}
                for r in message.recipients]))
            return None

    async def _attempt(self, message: DueMessage) -> None:
        body: bytes | Path | None = message.body   # in memory (hand-off, a small body): no await
        if body is None:
            body = await self._body_of(message)
            if body is None:
                return
        started = time.monotonic()
        groups: dict[tuple[str, str, bool], tuple[Route, bool, list[DueRecipient]]] = {}
        for rcpt in message.recipients:
            route = self.router.route(rcpt.domain, sender=message.sender,
                                      group=message.client_group, user=message.auth_user)
            # A released recipient (admin, ETRN) goes out through the hold route's next hops.
            hold = route.kind is RouteKind.HOLD and not (rcpt.released and route.sends)
            # MX routes are per recipient domain; a smart host (or courier) takes every
            # domain at once.
            per_domain = any([h.mx for h in route.hops]) or not route.sends
            key = (route.name, rcpt.domain if per_domain else "", hold)
            groups.setdefault(key, (route, hold, []))[2].append(rcpt)
        if len(groups) == 1:   # the common case: no extra task for the one group
            [(route, hold, recipients)] = groups.values()
            outcomes = await self._deliver_group(message, body, route, recipients, hold=hold)
        else:
            results = await asyncio.gather(*(
                self._deliver_group(message, body, route, recipients, hold=hold)
                for route, hold, recipients in groups.values()
            ))
            outcomes = [o for group in results for o in group]
        # Released from a hold route (ETRN, admin) and not delivered now: back to the hold,
        # to wait for the next ETRN, rather than onto the retry schedule.
        rehold = {r.idx for route, hold, recipients in groups.values()
                  if route.kind is RouteKind.HOLD and not hold for r in recipients}
        await self._finish(message, body, outcomes, rehold=rehold, started=started)

    async def _deliver_group(self, message: DueMessage, body: bytes | Path, route: Route,
                             recipients: list[DueRecipient], *, hold: bool) -> list[Outcome]:
        if hold:
            return [Outcome(r, Kind.HELD, reply(250, "2.0.0", "held"), route=route.name)
                    for r in recipients]
        if route.courier is not None:
            return await self._by_courier(message, body, route, recipients)
        domain = recipients[0].domain
        hops, dns_failure = await self._hops(route, domain)
        if not hops:
            failure = dns_failure or reply(451, "4.4.1", "no next hop to try")
            kind = Kind.BOUNCED if failure.permanent else Kind.DEFERRED
            return [Outcome(r, kind, failure, route=route.name) for r in recipients]

        last = dns_failure or NO_HOP_ANSWERED
        last_remote = ""
        last_synth = True
        refused_everywhere = True   # every host refused us outright (5xx greeting or EHLO)
        for hop in hops:
            policy = self._policy(route, hop)
            remote = f"{hop.name} [{hop.address}]:{hop.port}"
            self.mail_log.event(MailEvent.ATTEMPT, id=message.queue_id, route=route.name,
                                relay=remote, to=",".join([r.address for r in recipients]))
            gate = self._pool.slot(hop)
            async with in_flight(hop.name):
                await gate.__aenter__()
                # The slot is given back when the final dot is out (the next message to this
                # hop may then go over the same connection, behind the dot) or at the end.
                holding = [True]

                def release(conn: Connection, hop=hop, policy=policy,
                            holding=holding, gate=gate) -> None:
                    if holding[0]:
                        holding[0] = False
                        self._pool.offer(hop, policy, conn)
                        gate.release()
                try:
                    try:
                        conn, result = await self._send(hop, policy, message, body, recipients,
                                                        route=route.name, on_dot=release)
                    except DeliveryError as err:
                        if err.stage != "reused":
                            raise
                        # The idle connection had gone stale (the host closed it, or said
                        # 421 at MAIL, or the message before ours on it broke it): that
                        # says nothing about the host; try a new one.
                        conn, result = await self._send(hop, policy, message, body,
                                                        recipients, fresh=True,
                                                        route=route.name, on_dot=release)
                except DeliveryError as err:
                    if holding[0]:
                        holding[0] = False
                        gate.release()
                    last, last_remote, last_synth = err.reply, remote, not err.from_server
                    if _permanent_stage(err):
                        return [Outcome(r, Kind.BOUNCED, err.reply, remote, route=route.name,
                                        synthesized=last_synth) for r in recipients]
                    # A refused greeting is final for that host only; TLS, AUTH or network
                    # trouble is something an admin or time can mend: never a bounce.
                    refused_everywhere &= err.permanent and err.stage in ("greeting", "ehlo")
                    self.mail_log.event(MailEvent.DEFERRED, id=message.queue_id, relay=remote,
                                        stage=err.stage, reply=_show(err.reply))
                    continue
                except BaseException:
                    if holding[0]:
                        holding[0] = False
                        gate.release()
                    raise
                passed_on = conn.extensions.dsn
                tls = f"{conn.tls_version} {conn.tls_cipher}" if conn.tls_version else ""
                if holding[0]:          # (not handed over at the final dot)
                    holding[0] = False
                    await self._pool.give_back(hop, policy, conn)
                    gate.release()
            outcomes = []
            for rcpt, answer in zip(recipients, result.recipients):
                kind = (Kind.DELIVERED if answer.positive
                        else Kind.BOUNCED if answer.permanent else Kind.DEFERRED)
                outcomes.append(Outcome(rcpt, kind, answer, remote, passed_on, route.name, tls,
                                        synthesized=result.synthesized))
            return outcomes
        kind = Kind.BOUNCED if refused_everywhere else Kind.DEFERRED
        return [Outcome(r, kind, last, last_remote, route=route.name, synthesized=last_synth)
                for r in recipients]

    def _policy(self, route: Route, hop: _Hop) -> ClientPolicy:
        """How to talk to ``hop`` for ``route``: made once per route, next hop and settings
        (not per message), so that the pool's look-ups hash the same object, whose hash is
        kept. Checked by identity: a reload brings new settings and routes, and an MX
        route is a new object per domain (not kept: the cache stays small)."""
        key = (route.name, hop.name)
        cached = self._policies.get(key)
        settings = self._settings
        if cached is not None and cached[0] is route and cached[1] is settings:
            return cached[2]
        policy = ClientPolicy(
            helo=settings.helo, tls=route.tls, implicit_tls=route.implicit_tls,
            ca_file=settings.ca_file, server_name=hop.name,
            username=route.username, password=route.password,
            auth_without_tls=route.auth_without_tls,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            data_timeout=settings.data_timeout,
        )
        if len(self._policies) >= _POLICIES_KEPT:
            self._policies.clear()
        self._policies[key] = (route, settings, policy)
        return policy

    async def deliver_over(self, conn: OutboundConnection,
                           messages: Sequence[DueMessage]) -> tuple[int, int]:
        """ATRN (RFC 2645): send messages claimed by `Store.start_atrn` over a connection
        the customer opened and the relay turned around. Outcomes are recorded as for any
        attempt, except that what is not delivered now (4xx, the connection lost) goes
        back to the hold, to wait for the next ATRN; a 5xx bounces. Returns (recipients
        delivered, recipients not)."""
        remote = f"ATRN {conn.peer}"
        broken: Reply | None = None      # the connection cannot carry more: hold the rest
        last: Reply | None = None
        delivered = not_delivered = 0
        for message in messages:
            recipients = list(message.recipients)
            rehold = {r.idx for r in recipients}
            route = self.router.route(recipients[0].domain, sender=message.sender,
                                      group=message.client_group, user=message.auth_user).name
            if broken is None and not conn.usable:
                broken = last or reply(451, "4.4.2", "the ATRN connection is not usable")
            if broken is not None:
                await self.hold_back([message], broken, remote=remote)
                not_delivered += len(recipients)
                continue
            body = await self._body_of(message)
            if body is None:
                continue
            self.mail_log.event(MailEvent.ATTEMPT, id=message.queue_id, route=route,
                                relay=remote, to=",".join(r.address for r in recipients))
            try:
                result = await _transaction(conn, message, body, recipients, route)
            except DeliveryError as err:
                kind = Kind.BOUNCED if _permanent_stage(err) else Kind.DEFERRED
                outcomes = [Outcome(r, kind, err.reply, remote, route=route,
                                    synthesized=not err.from_server) for r in recipients]
                last = err.reply
            else:
                tls = f"{conn.tls_version} {conn.tls_cipher}" if conn.tls_version else ""
                outcomes = [
                    Outcome(r, Kind.DELIVERED if answer.positive else
                            Kind.BOUNCED if answer.permanent else Kind.DEFERRED,
                            answer, remote, conn.extensions.dsn, route, tls,
                            synthesized=result.synthesized)
                    for r, answer in zip(recipients, result.recipients)]
            delivered += sum(o.kind is Kind.DELIVERED for o in outcomes)
            not_delivered += sum(o.kind is not Kind.DELIVERED for o in outcomes)
            await self._finish(message, body, outcomes, rehold=rehold)
        return delivered, not_delivered

    async def hold_back(self, messages: Sequence[DueMessage], why: Reply, *,
                        remote: str = "") -> None:
        """Messages claimed for ATRN that will not be sent now: back to the hold."""
        for message in messages:
            route = self.router.route(message.recipients[0].domain, sender=message.sender,
                                      group=message.client_group, user=message.auth_user).name
            await self._finish(message, b"", [Outcome(r, Kind.HELD, why, remote, route=route)
                                              for r in message.recipients])

    async def _send(self, hop: _Hop, policy: ClientPolicy, message: DueMessage,
                    body: bytes | Path,
                    recipients: list[DueRecipient], *, fresh: bool = False, route: str = "",
                    on_dot=None):
        conn, reused = await self._pool.take(hop, policy, fresh=fresh, log=self.protocol_log,
                                             queue_id=message.queue_id, route=route)
        conn.on_dot = on_dot
        try:
            result = await _transaction(conn, message, body, recipients, route)
        except DeliveryError as err:
            await conn.close()
            if reused and err.temporary and err.stage in ("mail", "rset"):
                raise DeliveryError(err.reply, "reused", err.detail) from err
            raise
        except BaseException:
            await conn.close()
            raise
        finally:
            if conn.on_dot is on_dot:    # no final dot sent (the next message's is its own)
                conn.on_dot = None
        return conn, result

    async def _by_courier(self, message: DueMessage, body: bytes | Path, route: Route,
                          recipients: list[DueRecipient]) -> list[Outcome]:
        """A route whose next hop is not SMTP (delivery.courier): the courier answers."""
        courier = route.courier
        assert courier is not None
        self.mail_log.event(MailEvent.ATTEMPT, id=message.queue_id, route=route.name,
                            relay=courier.label, to=",".join(r.address for r in recipients))
        context = CourierContext(settings=self.settings, mail_log=self.mail_log,
                                 protocol_log=self.protocol_log, clock=self._clock)
        async with in_flight(courier.label):
            return await courier.deliver(message, body, recipients, route, context)

    async def _hops(self, route: Route, domain: str) -> tuple[list[_Hop], Reply | None]:
        """Addresses to try, in order, and the DNS failure if there is nothing to try."""
        hops: list[_Hop] = []
        failure: Reply | None = None
        port_default = self._settings.mx_port
        for hop in route.hops:
            if hop.literal:
                hops.append(_Hop(hop.host, hop.port or port_default, hop.host))
                continue
            if hop.mx:
                result = await self.resolver.mx(domain)
            else:
                result = await self.resolver.addresses(hop.host)
            if result.status is MxStatus.HOSTS:
                for host in result.hosts:
                    for address in host.addresses:
                        hops.append(_Hop(address, hop.port or port_default, host.name))
            elif result.status is MxStatus.NULL_MX:
                # RFC 7505 3: a domain that publishes a null MX accepts no mail.
                failure = failure or reply(556, "5.1.10", f"{domain} does not accept mail (null MX)")
            elif result.status is MxStatus.NO_DOMAIN and hop.mx:
                # RFC 5321 5.1: the recipient's domain has no MX and no address: the
                # address is wrong, and no retry will change that.
                failure = failure or reply(550, "5.1.2", f"{domain}: host or domain not "
                                           f"found ({result.detail})")
            elif result.status is MxStatus.NO_DOMAIN:
                # A configured next hop (smart host) whose name does not resolve says nothing
                # about the recipient: a typo or a DNS fault an admin can mend. The mail
                # waits, like for TLS or AUTH trouble; never a bounce of everything routed here.
                failure = reply(451, "4.4.4", f"next hop {hop.host}: host not found "
                                f"({result.detail})")
            else:
                failure = reply(451, "4.4.3", f"DNS lookup failed: {result.detail}")
        return hops, failure

    # -- outcomes --------------------------------------------------------------------------

    async def _finish(self, message: DueMessage, body: bytes | Path,
                      outcomes: list[Outcome], *, rehold: Collection[int] = frozenset(),
                      started: float | None = None) -> None:
        """Record an attempt's outcomes: the decisions are `plan_outcomes`' (delivery/plan.py);
        here only what they need done, in one queue transaction (Store.record)."""
        # The attempt's time in the delivered/deferred/bounced lines (ms=, the metrics).
        ms = None if started is None else int((time.monotonic() - started) * 1000)
        now = self._clock()
        plan = plan_outcomes(message, outcomes, now=now, settings=self._settings,
                             rehold=rehold, ms=ms, jitter=_jitter)
        for line in plan.log:
            self.mail_log.event(line.event, **line.fields)
        await self._record(await self._planned_record(message, body, plan, now))

    async def _planned_record(self, message: DueMessage, body: bytes | Path, plan: Plan,
                              now: float) -> _Record:
        """The plan as the queue takes it, with the DSN messages it asks for made."""
        original = b""       # what the DSN returns of the message (RET, RFC 3461 4.3)
        if plan.notices:
            original = (body if isinstance(body, bytes)
                        else await asyncio.to_thread(_read_original, body))
        new_messages = [self._dsn_message(message, original, notice.recipients, now,
                                          notice.copy_to) for notice in plan.notices]
        dsn_ids = [env.queue_id for env, _ in new_messages]
        return _Record(message.queue_id, plan.updates, new_messages, plan.journal(dsn_ids))

    def _dsn_message(self, message: DueMessage, body: bytes, recipients: Sequence[DsnRecipient],
                     now: float, copy_to: str | None):
        data = build_dsn(
            reporting_mta=self.settings.hostname, sender=message.sender, recipients=recipients,
            original=body, ret=message.ret, envid=message.envid, arrival=message.received_at,
            now=now,
        )
        rcpts = [message.sender] + ([copy_to] if copy_to else [])
        env = Envelope(
            queue_id=new_queue_id(), received_at=now, listener="-", client_ip="127.0.0.1",
            client_name=None, helo=self.settings.hostname, auth_user=None, sender="",
            recipients=tuple(RecipientRecord(address=a, status=RecipientStatus.QUEUED,
                                             rule="dsn", reason=f"DSN for {message.queue_id}")
                             for a in rcpts),
        )
        spool = self.store.new_spool()
        spool.write(data)
        return env, spool
