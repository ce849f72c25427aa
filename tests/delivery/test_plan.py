"""The decisions after an attempt (delivery.plan.plan_outcomes), in process: one row per
case, each with the exact queue updates and DSNs it must plan. The relay's own tests
(tests/test_delivery.py and the others that spawn it) show the same decisions end to end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from relaywarden.delivery.dsn import DsnAction
from relaywarden.delivery.engine import DeliverySettings
from relaywarden.delivery.plan import (
    Decision,
    Kind,
    Outcome,
    Plan,
    plan_outcomes,
)
from relaywarden.logs.maillog import MailEvent
from relaywarden.queue.store import (
    DueMessage,
    DueRecipient,
    RecipientStatus,
    RecipientUpdate,
)
from relaywarden.smtp.reply import reply

NOW = 1_800_000_000.0
MX = "mx.example.org [192.0.2.1]:25"
ROUTE = 'routes."*"'
SETTINGS = DeliverySettings(hostname="relay.test", helo="relay.test",
                            postmaster="postmaster@relay.test",
                            retry_schedule=(600, 900, 1800), expire_after=172800,
                            delay_notice_after=43200)
DAY = 86400.0

OK = reply(250, "2.0.0", "Ok: queued as R123")
BUSY = reply(451, "4.3.0", "busy")
UNKNOWN = reply(550, "5.1.1", "no such user")
HELD = reply(250, "2.0.0", "held")


def rcpt(idx: int = 0, *, notify: tuple[str, ...] | None = None, attempts: int = 0,
         delay_notified: bool = False, released: bool = False) -> DueRecipient:
    address = f"r{idx}@example.org"
    return DueRecipient(idx=idx, address=address, domain="example.org",
                        orcpt=f"rfc822;{address}", notify=notify, attempts=attempts,
                        delay_notified=delay_notified, released=released)


def out(r: DueRecipient, kind: Kind, answer=None, **kw) -> Outcome:
    answer = answer or {Kind.DELIVERED: OK, Kind.DEFERRED: BUSY, Kind.BOUNCED: UNKNOWN,
                        Kind.HELD: HELD}[kind]
    if kind is not Kind.HELD:
        kw.setdefault("remote", MX)
    return Outcome(r, kind, answer, route=ROUTE, **kw)


@dataclass(frozen=True)
class Row:
    outcomes: list[Outcome]
    # (decision, update) per recipient, in order
    expect: list[tuple[Decision, RecipientUpdate]]
    # (action, [(final, status, diagnostic, will_retry_until)], copy_to, tells) per DSN
    notices: list[tuple] = field(default_factory=list)
    sender: str = "s@example.net"
    age: float = 60.0                   # seconds since the message was received
    rehold: frozenset[int] = frozenset()
    settings: DeliverySettings = SETTINGS


def update(idx: int, status: RecipientStatus, **kw) -> RecipientUpdate:
    return RecipientUpdate(idx=idx, status=status, **kw)


Q, D, B, H, X = (RecipientStatus.QUEUED, RecipientStatus.DELIVERED, RecipientStatus.BOUNCED,
                 RecipientStatus.HELD, RecipientStatus.BADMAIL)
EXPIRED_TEXT = "451 4.4.7 delivery time expired after 5 attempts; last: 451 4.3.0 busy"

ROWS = {
    # -- delivered -----------------------------------------------------------------------
    "delivered": Row(
        [out(rcpt(0), Kind.DELIVERED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))]),
    "delivered, NOTIFY=SUCCESS, next hop without DSN: relayed DSN (RFC 3461 4.1)": Row(
        [out(rcpt(0, notify=("SUCCESS",)), Kind.DELIVERED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))],
        [(DsnAction.RELAYED, [("r0@example.org", "2.0.0",
                               "smtp; 250 2.0.0 Ok: queued as R123", None)], None, (0,))]),
    "delivered, NOTIFY=SUCCESS passed on to the next hop: no DSN of ours": Row(
        [out(rcpt(0, notify=("SUCCESS",)), Kind.DELIVERED, dsn_passed_on=True)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))]),
    "delivered, no NOTIFY: no success DSN": Row(
        [out(rcpt(0), Kind.DELIVERED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))]),
    # -- deferred: the retry schedule (RFC 5321 4.5.4.1) ----------------------------------
    "4xx, first attempt: the schedule's first delay": Row(
        [out(rcpt(0), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 600, attempts=1,
                                    last_error="451 4.3.0 busy", remote_mta=MX))]),
    "4xx, second attempt: the second delay": Row(
        [out(rcpt(0, attempts=1), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 900, attempts=2,
                                    last_error="451 4.3.0 busy", remote_mta=MX))]),
    "4xx, third attempt: the last delay": Row(
        [out(rcpt(0, attempts=2), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=3,
                                    last_error="451 4.3.0 busy", remote_mta=MX))]),
    "4xx past the schedule's end: its last delay again": Row(
        [out(rcpt(0, attempts=9), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=10,
                                    last_error="451 4.3.0 busy", remote_mta=MX))]),
    "4xx with a courier's Retry-After: that time, not the schedule": Row(
        [out(rcpt(0), Kind.DEFERRED, retry_at=NOW + 42)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 42, attempts=1,
                                    last_error="451 4.3.0 busy", remote_mta=MX))]),
    "4xx just before expiry: still deferred": Row(
        [out(rcpt(0, attempts=4, delay_notified=True), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=5,
                                    last_error="451 4.3.0 busy", remote_mta=MX,
                                    delay_notified=True))],
        age=172800 - 1),
    # -- the delay DSN, once (RFC 3461 4.1, RFC 3464 2.3.9) -------------------------------
    "4xx past delay_notice_after: a delay DSN, until the expiry": Row(
        [out(rcpt(0, attempts=3), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX,
                                    delay_notified=True))],
        [(DsnAction.DELAYED, [("r0@example.org", "4.3.0", "smtp; 451 4.3.0 busy",
                               NOW - 43200 + 172800)], None, (0,))],
        age=43200),
    "4xx, delay DSN already sent: not again": Row(
        [out(rcpt(0, attempts=3, delay_notified=True), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX,
                                    delay_notified=True))],
        age=DAY),
    "4xx before delay_notice_after: no delay DSN": Row(
        [out(rcpt(0, attempts=3), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX))],
        age=43200 - 1),
    "4xx, NOTIFY=FAILURE only: no delay DSN, and none owed": Row(
        [out(rcpt(0, notify=("FAILURE",), attempts=3), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX))],
        age=DAY),
    "4xx, delay_notice_after = 0: delay DSNs off": Row(
        [out(rcpt(0, attempts=3), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX))],
        age=DAY, settings=dataclasses.replace(SETTINGS, delay_notice_after=0)),
    "no next hop answered (our own reply): the delay DSN says so as X-relaywarden": Row(
        [out(rcpt(0), Kind.DEFERRED, reply(451, "4.4.1", "no next hop answered"),
             remote="", synthesized=True)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 600, attempts=1,
                                    last_error="451 4.4.1 no next hop answered",
                                    delay_notified=True))],
        [(DsnAction.DELAYED, [("r0@example.org", "4.4.1",
                               "X-relaywarden; no next hop answered", NOW - DAY + 172800)],
          None, (0,))],
        age=DAY),
    # -- expiry (RFC 3463 4.4.7, Action: failed) -----------------------------------------
    "4xx at expire_after: bounced with 4.4.7 and a failure DSN": Row(
        [out(rcpt(0, attempts=4, delay_notified=True), Kind.DEFERRED, tls="TLSv1.3 X")],
        [(Decision.EXPIRED, update(0, B, attempts=5, last_error=EXPIRED_TEXT,
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r0@example.org", "4.4.7",
                              "X-relaywarden; delivery time expired after 5 attempts; last: "
                              "451 4.3.0 busy", None)], None, (0,))],
        age=172800),
    "expired, NOTIFY=NEVER: bounced, no DSN": Row(
        [out(rcpt(0, notify=("NEVER",), attempts=4), Kind.DEFERRED)],
        [(Decision.EXPIRED, update(0, B, attempts=5, last_error=EXPIRED_TEXT,
                                   remote_mta=MX))],
        age=2 * 172800),
    # -- bounced (RFC 3464) ---------------------------------------------------------------
    "5xx: bounced with a failure DSN quoting the host": Row(
        [out(rcpt(0), Kind.BOUNCED)],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r0@example.org", "5.1.1", "smtp; 550 5.1.1 no such user",
                              None)], None, (0,))]),
    "5xx with delivery.ndr_copy_to: the failure DSN goes there too": Row(
        [out(rcpt(0), Kind.BOUNCED)],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r0@example.org", "5.1.1", "smtp; 550 5.1.1 no such user",
                              None)], "ndr@relay.test", (0,))],
        settings=dataclasses.replace(SETTINGS, ndr_copy_to="ndr@relay.test")),
    "5xx, NOTIFY=NEVER: bounced, no DSN": Row(
        [out(rcpt(0, notify=("NEVER",)), Kind.BOUNCED)],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX))]),
    "5xx, NOTIFY=SUCCESS,DELAY: bounced, no failure DSN": Row(
        [out(rcpt(0, notify=("SUCCESS", "DELAY")), Kind.BOUNCED)],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX))]),
    "5xx without a status code: the DSN says 5.0.0": Row(
        [out(rcpt(0), Kind.BOUNCED, reply(554, None, "go away"))],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="554 go away",
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r0@example.org", "5.0.0", "smtp; 554 go away", None)],
          None, (0,))]),
    # -- the null sender: a bounce of a bounce goes to badmail, never a DSN ---------------
    "null sender, 5xx: double bounce to badmail, no DSN": Row(
        [out(rcpt(0), Kind.BOUNCED)],
        [(Decision.DOUBLE_BOUNCE, update(0, X, attempts=1,
                                         last_error="550 5.1.1 no such user", remote_mta=MX))],
        sender=""),
    "null sender, expired: double bounce with 4.4.7": Row(
        [out(rcpt(0, attempts=4), Kind.DEFERRED)],
        [(Decision.DOUBLE_BOUNCE, update(0, X, attempts=5, last_error=EXPIRED_TEXT,
                                         remote_mta=MX))],
        sender="", age=172800),
    "null sender, 4xx past delay_notice_after: no delay DSN, none marked sent": Row(
        [out(rcpt(0, attempts=3), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX))],
        sender="", age=DAY),
    "null sender, delivered with NOTIFY=SUCCESS: no DSN": Row(
        [out(rcpt(0, notify=("SUCCESS",)), Kind.DELIVERED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))],
        sender=""),
    # -- hold routes ----------------------------------------------------------------------
    "on a hold route: held, the attempt not counted": Row(
        [out(rcpt(0, attempts=2), Kind.HELD)],
        [(Decision.HELD, update(0, H, attempts=2, held_by="route"))]),
    "released from a hold route, 4xx: held again, not on the schedule": Row(
        [out(rcpt(0, attempts=2, released=True), Kind.DEFERRED)],
        [(Decision.REHELD, update(0, H, attempts=3, last_error="451 4.3.0 busy",
                                  remote_mta=MX, held_by="route"))],
        rehold=frozenset({0})),
    "released, 4xx past expiry and delay notice: held again, no bounce, no DSN": Row(
        [out(rcpt(0, attempts=2, released=True, delay_notified=True), Kind.DEFERRED)],
        [(Decision.REHELD, update(0, H, attempts=3, last_error="451 4.3.0 busy",
                                  remote_mta=MX, delay_notified=True, held_by="route"))],
        rehold=frozenset({0}), age=10 * 172800),
    "released, 5xx: bounced": Row(
        [out(rcpt(0, released=True), Kind.BOUNCED)],
        [(Decision.BOUNCED, update(0, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r0@example.org", "5.1.1", "smtp; 550 5.1.1 no such user",
                              None)], None, (0,))],
        rehold=frozenset({0})),
    "released, delivered": Row(
        [out(rcpt(0, released=True), Kind.DELIVERED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX))],
        rehold=frozenset({0})),
    # -- several recipients of one message ------------------------------------------------
    "mixed: one failure DSN for the two that asked, in order of the outcomes": Row(
        [out(rcpt(0), Kind.DELIVERED), out(rcpt(1), Kind.BOUNCED),
         out(rcpt(2, attempts=1), Kind.DEFERRED), out(rcpt(3, notify=("NEVER",)), Kind.BOUNCED),
         out(rcpt(4, notify=("FAILURE",)), Kind.BOUNCED, reply(552, "5.2.2", "full"))],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX)),
         (Decision.BOUNCED, update(1, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX)),
         (Decision.DEFERRED, update(2, Q, next_attempt=NOW + 900, attempts=2,
                                    last_error="451 4.3.0 busy", remote_mta=MX)),
         (Decision.BOUNCED, update(3, B, attempts=1, last_error="550 5.1.1 no such user",
                                   remote_mta=MX)),
         (Decision.BOUNCED, update(4, B, attempts=1, last_error="552 5.2.2 full",
                                   remote_mta=MX))],
        [(DsnAction.FAILED, [("r1@example.org", "5.1.1", "smtp; 550 5.1.1 no such user", None),
                             ("r4@example.org", "5.2.2", "smtp; 552 5.2.2 full", None)],
          None, (1, 4))]),
    "mixed past delay_notice_after: a delay DSN and a failure DSN, the first needed first": Row(
        [out(rcpt(0, attempts=3), Kind.DEFERRED), out(rcpt(1, attempts=3), Kind.BOUNCED),
         out(rcpt(2, attempts=3, released=True), Kind.DEFERRED),
         out(rcpt(3, attempts=3, delay_notified=True), Kind.DEFERRED)],
        [(Decision.DEFERRED, update(0, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX,
                                    delay_notified=True)),
         (Decision.BOUNCED, update(1, B, attempts=4, last_error="550 5.1.1 no such user",
                                   remote_mta=MX)),
         (Decision.REHELD, update(2, H, attempts=4, last_error="451 4.3.0 busy",
                                  remote_mta=MX, held_by="route")),
         (Decision.DEFERRED, update(3, Q, next_attempt=NOW + 1800, attempts=4,
                                    last_error="451 4.3.0 busy", remote_mta=MX,
                                    delay_notified=True))],
        [(DsnAction.DELAYED, [("r0@example.org", "4.3.0", "smtp; 451 4.3.0 busy",
                               NOW - DAY + 172800)], None, (0,)),
         (DsnAction.FAILED, [("r1@example.org", "5.1.1", "smtp; 550 5.1.1 no such user",
                              None)], None, (1,))],
        rehold=frozenset({2}), age=DAY),
    "mixed, null sender: a double bounce beside a delivery and a deferral": Row(
        [out(rcpt(0), Kind.DELIVERED), out(rcpt(1), Kind.BOUNCED),
         out(rcpt(2), Kind.DEFERRED)],
        [(Decision.DELIVERED, update(0, D, attempts=1, remote_mta=MX)),
         (Decision.DOUBLE_BOUNCE, update(1, X, attempts=1,
                                         last_error="550 5.1.1 no such user", remote_mta=MX)),
         (Decision.DEFERRED, update(2, Q, next_attempt=NOW + 600, attempts=1,
                                    last_error="451 4.3.0 busy", remote_mta=MX))],
        sender=""),
}


def message(row: Row) -> DueMessage:
    return DueMessage(queue_id="Q1", received_at=NOW - row.age, sender=row.sender,
                      client_group=None, auth_user=None, ret=None, envid=None,
                      body_type=None, smtputf8=False, size=100,
                      recipients=tuple(o.recipient for o in row.outcomes))


def planned(row: Row, **kw) -> Plan:
    return plan_outcomes(message(row), row.outcomes, now=NOW, settings=row.settings,
                         rehold=row.rehold, **kw)


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_plan(row: Row):
    plan = planned(row)
    assert [(p.decision, p.update) for p in plan.recipients] == row.expect
    assert [(n.action,
             [(d.final, d.status, d.diagnostic, d.will_retry_until) for d in n.recipients],
             n.copy_to, n.tells) for n in plan.notices] == row.notices
    for n in plan.notices:
        for d, p in zip(n.recipients, (plan.recipients[i] for i in n.tells)):
            assert d.original == p.outcome.recipient.orcpt and d.last_attempt == NOW
            assert d.remote_mta == ("mx.example.org" if p.outcome.remote else None)
    # The journal names each recipient's outcome as the history shows it.
    outcome = {Decision.DELIVERED: "delivered", Decision.DEFERRED: "deferred",
               Decision.BOUNCED: "bounced", Decision.EXPIRED: "bounced",
               Decision.DOUBLE_BOUNCE: "badmail", Decision.REHELD: "held",
               Decision.HELD: "held"}
    assert [e["outcome"] for e in plan.journal()] == [outcome[d] for d, _ in row.expect]


def test_the_retry_delay_takes_the_jitter_once_per_scheduled_recipient():
    """The engine spreads a backlog's retries (0.9-1.1 of the delay): the factor applies to
    the schedule, not to a courier's own retry time."""
    row = Row([out(rcpt(0), Kind.DEFERRED), out(rcpt(1), Kind.DEFERRED, retry_at=NOW + 5),
               out(rcpt(2, attempts=1), Kind.DEFERRED)], [])
    factors = iter([0.9, 1.1])
    plan = planned(row, jitter=lambda: next(factors))
    assert [u.next_attempt for u in plan.updates] == [NOW + 540, NOW + 5, NOW + 990]


def test_log_lines_and_journal_of_a_mixed_attempt():
    """The mail log lines and journal entries, exactly: the DSN's id goes on the entries of
    the recipients it tells about."""
    row = Row([out(rcpt(0), Kind.DELIVERED, tls="TLSv1.3 TLS_AES_256_GCM_SHA384"),
               out(rcpt(1), Kind.BOUNCED), out(rcpt(2), Kind.DEFERRED),
               out(rcpt(3, released=True), Kind.DEFERRED), out(rcpt(4), Kind.HELD)], [],
              rehold=frozenset({3}))
    plan = planned(row, ms=12)
    assert [(line.event, dict(line.fields)) for line in plan.log] == [
        (MailEvent.DELIVERED, dict(id="Q1", to="r0@example.org", relay=MX, route=ROUTE,
                                   tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
                                   reply="250 2.0.0 Ok: queued as R123", ms=12)),
        (MailEvent.BOUNCED, dict(id="Q1", to="r1@example.org", relay=MX,
                                 reply="550 5.1.1 no such user", route=ROUTE, ms=12)),
        (MailEvent.DEFERRED, dict(id="Q1", to="r2@example.org", relay=MX,
                                  reply="451 4.3.0 busy", attempts=1, route=ROUTE, ms=12,
                                  next="2027-01-15T08:10:00Z")),
        (MailEvent.DEFERRED, dict(id="Q1", to="r3@example.org", relay=MX,
                                  reply="451 4.3.0 busy", attempts=1, route=ROUTE,
                                  action="held")),
        (MailEvent.DEFERRED, dict(id="Q1", to="r4@example.org", route=ROUTE, reason="held")),
    ]
    common = dict(at=NOW, route=ROUTE)
    assert plan.journal(["DSN1"]) == [
        dict(common, idx=0, to="r0@example.org", outcome="delivered", remote=MX,
             tls="TLSv1.3 TLS_AES_256_GCM_SHA384", reply="250 2.0.0 Ok: queued as R123",
             attempts=1, ours=False, remote_id="R123"),
        dict(common, idx=1, to="r1@example.org", outcome="bounced", remote=MX, tls="",
             reply="550 5.1.1 no such user", attempts=1, ours=False, remote_id=None,
             dsn_id="DSN1"),
        dict(common, idx=2, to="r2@example.org", outcome="deferred", remote=MX, tls="",
             reply="451 4.3.0 busy", attempts=1, ours=False, remote_id=None,
             next_attempt=NOW + 600),
        dict(common, idx=3, to="r3@example.org", outcome="held", remote=MX, tls="",
             reply="451 4.3.0 busy", attempts=1, ours=False, remote_id=None, deferred=True),
        dict(common, idx=4, to="r4@example.org", outcome="held", remote="", tls="",
             reply="250 2.0.0 held", attempts=0, ours=False, remote_id=None),
    ]
    assert plan.journal() == [{k: v for k, v in e.items() if k != "dsn_id"}
                              for e in plan.journal(["DSN1"])]


def test_a_double_bounce_is_logged_as_badmail():
    row = Row([out(rcpt(0), Kind.BOUNCED)], [], sender="")
    plan = planned(row, ms=3)
    assert [(line.event, dict(line.fields)) for line in plan.log] == [
        (MailEvent.BADMAIL, dict(id="Q1", to="r0@example.org",
                                 reason="double bounce: 550 5.1.1 no such user"))]
    [entry] = plan.journal()
    assert entry["outcome"] == "badmail" and entry["double_bounce"] is True


def test_the_plan_is_the_same_for_the_same_facts():
    """No clock, no randomness of its own: the same input gives the same plan."""
    row = ROWS["mixed past delay_notice_after: a delay DSN and a failure DSN, the first needed first"]
    assert planned(row) == planned(row)
