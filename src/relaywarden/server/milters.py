"""A listener's milters (listeners.NAME.milters) asked about one message, in order.

Each milter sees the message as the ones before left it (their header changes applied),
as in Postfix. The first refusal ends the chain; a quarantine or a discard marks the
message for badmail and the chain goes on (a later milter may still refuse it, which the
sender then learns: better than keeping it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from relaywarden.milter import Facts, MilterSpec, check, rewrite
from relaywarden.milter.protocol import EnvelopeChange
from relaywarden.queue.spool import BodySpool
from relaywarden.queue.store import RecipientRecord, RecipientStatus
from relaywarden.smtp.reply import Reply, reply

# RFC 3463 5.7.1 / 4.7.1: delivery not authorized (by the content filter), for good or
# for now. A milter's own SMFIR_REPLYCODE text replaces these.
REJECTED = reply(550, "5.7.1", "Message rejected by content filter")
TEMPFAILED = reply(451, "4.7.1", "Message temporarily refused by content filter, try again later")
UNAVAILABLE = reply(451, "4.7.1", "Content filter unavailable, try again later")


@dataclass(slots=True)
class Filtered:
    """The chain's result. ``refusal``: the reply to the final dot instead of 250 (and the
    ``rule`` and ``reason`` for the mail log). Otherwise ``spool``: the message to commit
    (a new spool if headers changed), ``badmail``: why its recipients go to badmail, or
    None; ``notes``: milters that failed and were passed (on_failure = "accept")."""
    spool: BodySpool
    refusal: Reply | None = None
    rule: str = ""
    reason: str = ""
    badmail: str | None = None
    badmail_rule: str = "milters"
    notes: list[str] = field(default_factory=list)
    envelope: list[tuple[str, EnvelopeChange]] = field(default_factory=list)  # (rule, change)


def apply_envelope(sender: str, recipients: list[RecipientRecord],
                   changes: list[tuple[str, EnvelopeChange]]
                   ) -> tuple[str, list[RecipientRecord]]:
    """The milters' change from / add recipient / delete recipient, in order. A message
    left without a recipient is not dropped: its removed recipients go to badmail."""
    out = list(recipients)
    removed: list[RecipientRecord] = []
    for rule, change in changes:
        if change.kind == "e":
            sender = change.address
        elif change.kind in ("+", "2"):
            if not any(r.address.lower() == change.address.lower() for r in out):
                out.append(RecipientRecord(address=change.address,
                                           status=RecipientStatus.QUEUED, rule=rule))
        else:
            removed += [r for r in out if r.address.lower() == change.address.lower()]
            out = [r for r in out if r.address.lower() != change.address.lower()]
    if not out:
        out = [RecipientRecord(address=r.address, status=RecipientStatus.BADMAIL,
                               rule=rules_of(changes),
                               reason="every recipient was removed by the milters",
                               orcpt=r.orcpt, notify=r.notify) for r in removed]
    return sender, out


def rules_of(changes: list[tuple[str, EnvelopeChange]]) -> str:
    return next((rule for rule, c in changes if c.kind == "-"), "milters")


async def run_chain(milters: tuple[MilterSpec, ...], facts: Facts, spool: BodySpool,
                    new_spool: Callable[[], BodySpool]) -> Filtered:
    """Ask every milter; the spool given is discarded if a changed one replaces it."""
    result = Filtered(spool=spool)
    for spec in milters:
        rule = f"milters.{spec.name}"
        outcome = await check(spec, facts, result.spool.chunks())
        if outcome.action == "failed":
            if spec.on_failure == "accept":
                result.notes.append(f"{rule}: {outcome.reason} (passed: on_failure = accept)")
                continue
            result.refusal, result.rule, result.reason = UNAVAILABLE, rule, outcome.reason
            return result
        if outcome.action in ("reject", "tempfail"):
            if outcome.reply is not None:
                code, enhanced, text = outcome.reply
                result.refusal = reply(code, enhanced, text)
            else:
                result.refusal = REJECTED if outcome.action == "reject" else TEMPFAILED
            result.rule = rule
            result.reason = outcome.reason or f"{outcome.action} by milter {spec.name}"
            return result
        if result.badmail is None and outcome.action in ("discard", "quarantine"):
            # Sendmail drops a discarded message in silence; kept in badmail here, so that
            # nothing accepted with 250 is ever lost without the admin seeing it.
            result.badmail = (f"discarded by milter {spec.name}" if outcome.action == "discard"
                              else f"quarantined by milter {spec.name}: {outcome.reason}")
            result.badmail_rule = rule
        result.envelope += [(rule, change) for change in outcome.envelope]
        if outcome.changes or outcome.body is not None:
            changed = new_spool()
            try:
                for chunk in rewrite(result.spool.chunks(), outcome.changes, outcome.body):
                    changed.write(chunk)
            except Exception as exc:
                # A header the milter sent that cannot be written (a bad name): its fault.
                changed.discard()
                if spec.on_failure == "accept":
                    result.notes.append(f"{rule}: {exc} (changes not applied)")
                    continue
                result.refusal, result.rule, result.reason = UNAVAILABLE, rule, str(exc)
                return result
            if result.spool is not spool:
                result.spool.discard()
            result.spool = changed
    return result
