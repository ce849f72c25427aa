"""What an attempt's outcomes mean for the queue: the decisions of `Engine._finish`, pure.

`plan_outcomes` takes one message as it was claimed, what each recipient's attempt came to
(`Outcome`), the time and the delivery settings, and returns a `Plan`: each recipient's
next state in the queue (`RecipientUpdate`), the DSNs to make and whom each tells about,
the journal entries and the mail log lines. It does no I/O and reads no clock: the engine
passes ``now`` in and does what the plan says (builds the DSN messages, records it all in
one transaction with `Store.record`, writes the lines), so the decisions (retry, expiry,
DSN, double bounce, back to the hold) can be table-tested without a process or a socket
(tests/delivery/test_plan.py).

The decisions, one recipient at a time:

- delivered: DELIVERED; a "relayed" DSN when the sender asked for NOTIFY=SUCCESS and the
  next hop did not take the DSN request on (RFC 3461 4.1, section 5).
- deferred (a 4xx, or no next hop answered), released from a hold route (ETRN, admin): back
  to the hold, whatever the age, to wait for the next release rather than the schedule.
- deferred at or past ``expire_after`` (the message's age): bounced with 4.4.7 (RFC 3463: "delivery time expired",
  reported with Action: failed, RFC 3464 2.3.3).
- deferred: QUEUED with the next attempt on the retry schedule (RFC 5321 4.5.4.1: retry,
  with growing intervals, until the give-up time), or at the courier's ``retry_at``; one
  delay DSN once the message is ``delay_notice_after`` old (RFC 3461 4.1; 0: none), marked
  in ``delay_notified`` so that it is sent once.
- bounced (a 5xx, or expired): BOUNCED with a failure DSN to the sender (RFC 3464), a copy
  to ``ndr_copy_to``. A message with the null sender is itself a notice, and a notice about
  it would go to nobody (RFC 5321 4.5.5): its recipient goes to BADMAIL (a double bounce;
  the badmail sweeper files it and tells the admin, delivery/badmail.py), no DSN.
- held (a hold route): HELD; the attempt count is not raised.

A message with the null sender never causes a DSN, whatever its NOTIFY says.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relaywarden.delivery.dsn import DsnAction, DsnRecipient, wants_notice
from relaywarden.logs.maillog import MailEvent
from relaywarden.queue.store import DueMessage, DueRecipient, RecipientStatus, RecipientUpdate
from relaywarden.smtp.reply import Reply, reply

__all__ = ["Decision", "Kind", "LogLine", "Notice", "Outcome", "Plan", "PlanSettings",
           "RecipientPlan", "dsn_recipient", "plan_outcomes", "remote_queue_id",
           "retry_delay", "show"]


class Kind(enum.Enum):
    """What one recipient's attempt came to, as the engine or a courier saw it."""
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Outcome:
    recipient: DueRecipient
    kind: Kind
    reply: Reply
    remote: str = ""            # "host [address]" of the next hop that answered
    dsn_passed_on: bool = False  # the next hop took NOTIFY/ORCPT itself (RFC 3461 4.1)
    route: str = ""
    tls: str = ""                # TLS version and cipher of the delivery, "" without TLS
    synthesized: bool = False    # the reply is ours (no connection, timeout, expiry), not the host's
    retry_at: float | None = None  # deferred: not before then (a courier's Retry-After)


class PlanSettings(Protocol):
    """The delivery settings the plan reads (`DeliverySettings` has them)."""

    @property
    def retry_schedule(self) -> tuple[float, ...]: ...
    @property
    def expire_after(self) -> float: ...
    @property
    def delay_notice_after(self) -> float: ...
    @property
    def ndr_copy_to(self) -> str | None: ...


class Decision(enum.Enum):
    """What the plan does with one recipient."""
    DELIVERED = "delivered"
    DEFERRED = "deferred"            # QUEUED, next attempt on the retry schedule
    BOUNCED = "bounced"              # a permanent failure
    EXPIRED = "expired"              # deferred past expire_after: bounced with 4.4.7
    DOUBLE_BOUNCE = "double-bounce"  # a bounce (or expiry) of a null-sender message: badmail
    REHELD = "reheld"                # released from a hold route, not delivered: held again
    HELD = "held"                    # on a hold route


@dataclass(frozen=True, slots=True)
class LogLine:
    """One mail log line: `MailLog.event(event, **fields)`."""
    event: MailEvent
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RecipientPlan:
    decision: Decision
    #: The outcome as recorded: an expired deferral is a bounce with our own 4.4.7 reply.
    outcome: Outcome
    update: RecipientUpdate
    #: The journal's ``attempt`` entry (queue.journal), without the id of a DSN it caused.
    journal: Mapping[str, object]
    log: LogLine


@dataclass(frozen=True, slots=True)
class Notice:
    """One DSN to make (RFC 3464): to the message's sender, and to ``copy_to``."""
    action: DsnAction
    recipients: tuple[DsnRecipient, ...]
    copy_to: str | None              # delivery.ndr_copy_to: failure DSNs only
    #: The entries of `Plan.recipients` whose journal entry names this DSN (the history
    #: shows which DSN told the sender about a recipient).
    tells: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    recipients: tuple[RecipientPlan, ...]
    notices: tuple[Notice, ...]      # in the order they are to be made

    @property
    def updates(self) -> list[RecipientUpdate]:
        return [p.update for p in self.recipients]

    @property
    def log(self) -> list[LogLine]:
        return [p.log for p in self.recipients]

    def journal(self, dsn_ids: Sequence[str] = ()) -> list[dict]:
        """The journal entries, each naming the DSN that told about it (``dsn_ids``: the
        queue ids of the DSNs made from `notices`, in order)."""
        entries = [dict(p.journal) for p in self.recipients]
        for notice, dsn_id in zip(self.notices, dsn_ids):
            for i in notice.tells:
                entries[i]["dsn_id"] = dsn_id
        return entries


#: The outcomes each DSN action reports on.
_DSN_OUTCOME = {DsnAction.FAILED: ("bounced",), DsnAction.DELAYED: ("deferred",),
                DsnAction.RELAYED: ("delivered",), DsnAction.DELIVERED: ("delivered",)}


def show(r: Reply) -> str:
    """A reply on one line, as the mail log and the queue show it."""
    # (Written out, not joined from a generator: twice per delivered message, issue 15.)
    text = r.text
    head = f"{r.code} {r.enhanced}" if r.enhanced else str(r.code)
    return f"{head} {text}" if text else head


# The next hop's own queue id in its reply to the final dot: Postfix and most MTAs say
# "queued as ID", others "id=ID" (Exim) or "<ID> Queued mail" (Exchange gives none).
_REMOTE_ID = re.compile(r"queued as:? ?<?([A-Za-z0-9._@-]+)|\bid=<?([A-Za-z0-9._@-]+)",
                        re.IGNORECASE)


def remote_queue_id(text: str) -> str | None:
    m = _REMOTE_ID.search(text)
    return None if m is None else (m.group(1) or m.group(2))


def _entry(o: Outcome, outcome: str, now: float, attempts: int, **extra: object) -> dict:
    """The journal's ``attempt`` entry of one recipient (queue.journal)."""
    shown = show(o.reply)
    return {"at": now, "idx": o.recipient.idx, "to": o.recipient.address, "outcome": outcome,
            "remote": o.remote, "tls": o.tls, "reply": shown, "route": o.route,
            "attempts": attempts, "ours": o.synthesized,
            "remote_id": remote_queue_id(shown) if outcome == "delivered" else None, **extra}


def dsn_recipient(r: DueRecipient, action: DsnAction, o: Outcome, now: float, *,
                  until: float | None = None) -> DsnRecipient:
    """One recipient's group of a DSN (RFC 3464 2.3)."""
    return DsnRecipient(
        final=r.address, original=r.orcpt, action=action,
        status=o.reply.enhanced or ("2.0.0" if o.reply.positive else
                                    "4.0.0" if o.reply.transient else "5.0.0"),
        remote_mta=o.remote.split(" ")[0] if o.remote else None,
        # RFC 3464 2.3.6: "smtp" only for what the remote host itself said.
        diagnostic=f"smtp; {show(o.reply)}" if o.remote and not o.synthesized else
        f"X-relaywarden; {o.reply.text}",
        last_attempt=now, will_retry_until=until,
    )


def retry_delay(schedule: Sequence[float], attempts: int) -> float:
    """Seconds to the next attempt after ``attempts`` of them (at least 1): the schedule's
    entry for that attempt, its last entry from then on (RFC 5321 4.5.4.1)."""
    return schedule[min(attempts, len(schedule)) - 1]


def _next_attempt_text(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def plan_outcomes(message: DueMessage, outcomes: Sequence[Outcome], *, now: float,
                  settings: PlanSettings, rehold: Collection[int] = frozenset(),
                  ms: int | None = None, jitter: Callable[[], float] = lambda: 1.0) -> Plan:
    """The plan for one attempt of ``message``: ``outcomes`` in the order of the lines to
    write. ``rehold``: the recipients (idx) released from a hold route for this attempt;
    ``ms``: the attempt's duration for the log lines; ``jitter``: a factor for each retry
    delay (the engine spreads a backlog's retries with 0.9-1.1)."""
    s = settings
    steps: list[RecipientPlan] = []
    notices: dict[DsnAction, list[DsnRecipient]] = {}
    bounces = message.sender != ""      # a null-sender message is a notice itself
    age = now - message.received_at
    qid = message.queue_id

    def tell(action: DsnAction, d: DsnRecipient) -> None:
        notices.setdefault(action, []).append(d)

    for o in outcomes:
        r = o.recipient
        attempts = r.attempts + (0 if o.kind is Kind.HELD else 1)
        if o.kind is Kind.DEFERRED and r.idx in rehold:
            steps.append(RecipientPlan(
                Decision.REHELD, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.HELD, attempts=attempts,
                                last_error=show(o.reply), remote_mta=o.remote,
                                delay_notified=r.delay_notified, held_by="route"),
                _entry(o, "held", now, attempts, deferred=True),
                LogLine(MailEvent.DEFERRED, dict(
                    id=qid, to=r.address, relay=o.remote, reply=show(o.reply),
                    attempts=attempts, route=o.route, action="held"))))
            continue
        expired = o.kind is Kind.DEFERRED and age >= s.expire_after
        if expired:
            # RFC 3463: 4.4.7 "delivery time expired" is reported with Action: failed.
            o = Outcome(r, Kind.BOUNCED, reply(
                451, "4.4.7", f"delivery time expired after {attempts} attempts; last: "
                f"{show(o.reply)}"), o.remote, route=o.route, synthesized=True)
        if o.kind is Kind.DELIVERED:
            steps.append(RecipientPlan(
                Decision.DELIVERED, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.DELIVERED,
                                attempts=attempts, remote_mta=o.remote),
                _entry(o, "delivered", now, attempts),
                LogLine(MailEvent.DELIVERED, dict(
                    id=qid, to=r.address, relay=o.remote, route=o.route, tls=o.tls or "none",
                    reply=show(o.reply), ms=ms))))
            # RFC 3461 4.1: NOTIFY=SUCCESS and a next hop that cannot take it on.
            if bounces and not o.dsn_passed_on and wants_notice(r.notify, DsnAction.RELAYED):
                tell(DsnAction.RELAYED, dsn_recipient(r, DsnAction.RELAYED, o, now))
        elif o.kind is Kind.BOUNCED and not bounces:
            # A bounce that cannot be delivered has nobody to go back to.
            steps.append(RecipientPlan(
                Decision.DOUBLE_BOUNCE, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.BADMAIL, attempts=attempts,
                                last_error=show(o.reply), remote_mta=o.remote),
                _entry(o, "badmail", now, attempts, double_bounce=True),
                LogLine(MailEvent.BADMAIL, dict(
                    id=qid, to=r.address, reason=f"double bounce: {show(o.reply)}"))))
        elif o.kind is Kind.BOUNCED:
            steps.append(RecipientPlan(
                Decision.EXPIRED if expired else Decision.BOUNCED, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.BOUNCED, attempts=attempts,
                                last_error=show(o.reply), remote_mta=o.remote),
                _entry(o, "bounced", now, attempts),
                LogLine(MailEvent.BOUNCED, dict(
                    id=qid, to=r.address, relay=o.remote, reply=show(o.reply), route=o.route,
                    ms=ms))))
            if wants_notice(r.notify, DsnAction.FAILED):
                tell(DsnAction.FAILED, dsn_recipient(r, DsnAction.FAILED, o, now))
        elif o.kind is Kind.DEFERRED:
            notified = r.delay_notified
            retry_at = (now + retry_delay(s.retry_schedule, attempts) * jitter()
                        if o.retry_at is None else o.retry_at)
            if (s.delay_notice_after and age >= s.delay_notice_after and not notified
                    and bounces and wants_notice(r.notify, DsnAction.DELAYED)):
                # RFC 3464 2.3.9: Will-Retry-Until, the time the message expires.
                tell(DsnAction.DELAYED, dsn_recipient(
                    r, DsnAction.DELAYED, o, now, until=message.received_at + s.expire_after))
                notified = True
            steps.append(RecipientPlan(
                Decision.DEFERRED, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.QUEUED,
                                next_attempt=retry_at, attempts=attempts,
                                last_error=show(o.reply), remote_mta=o.remote,
                                delay_notified=notified),
                _entry(o, "deferred", now, attempts, next_attempt=retry_at),
                LogLine(MailEvent.DEFERRED, dict(
                    id=qid, to=r.address, relay=o.remote, reply=show(o.reply),
                    attempts=attempts, route=o.route, ms=ms,
                    next=_next_attempt_text(retry_at)))))
        else:  # HELD
            steps.append(RecipientPlan(
                Decision.HELD, o,
                RecipientUpdate(idx=r.idx, status=RecipientStatus.HELD, attempts=attempts,
                                held_by="route"),
                _entry(o, "held", now, attempts),
                LogLine(MailEvent.DEFERRED, dict(
                    id=qid, to=r.address, route=o.route, reason="held"))))
    planned = []
    for action, told in notices.items():
        addresses = {d.final for d in told}
        planned.append(Notice(
            action, tuple(told), s.ndr_copy_to if action is DsnAction.FAILED else None,
            tuple(i for i, p in enumerate(steps) if p.journal["to"] in addresses
                  and p.journal["outcome"] in _DSN_OUTCOME[action])))
    return Plan(tuple(steps), tuple(planned))
