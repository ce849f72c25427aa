"""A listener's milters (listeners.NAME.milters) asked about one message, in order.

Each milter sees the message as the ones before left it (their header changes applied),
as in Postfix. The first refusal ends the chain; a quarantine or a discard marks the
message for badmail and the chain goes on (a later milter may still refuse it, which the
sender then learns: better than keeping it).

A session keeps one connection per milter (MilterChain) for all its messages, as Postfix
does, and closes them when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relaywarden.milter import (Connection, Facts, MilterSpec, Outcome, check, connect,
                                connection_key, rewrite)
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


class MilterChain:
    """The milter connections of one SMTP session: one per milter, opened at the first
    message it is asked about and kept for the session's next messages (negotiation,
    connect and helo once); ``close`` (the session's end) sends each one SMFIC_QUIT.

    A connection that failed (refused, timed out, answered garbage, closed by the milter)
    is dropped: the message in hand gets the milter's on_failure, the next one a new
    connection. One the milter closed between two messages is found out before it is used
    (its end arrived meanwhile), or, if that end comes with the next message before the
    milter answered any of it, that message is sent once more on a new connection. A new
    EHLO (after STARTTLS) or a config reload that changed the milter also means a new
    connection."""

    __slots__ = ("_conns", "_closed")

    def __init__(self) -> None:
        self._conns: dict[str, Connection] = {}
        self._closed = False

    async def ask(self, spec: MilterSpec, facts: Facts,
                  chunks: Callable[[], Iterable[bytes]]) -> Outcome:
        """One milter's verdict on one message (``chunks`` gives the message, each time
        from its start); never raises for the milter's faults."""
        conn = self._conns.pop(spec.name, None)
        if conn is not None:
            if conn.spec == spec and conn.key == connection_key(facts) and conn.reusable:
                outcome = await self._over(conn, facts, chunks)
                if outcome.action != "failed" or not conn.stale or self._closed:
                    return outcome
                # The milter had closed the connection, and its end came with this message
                # before it answered any of it: once more, on a new connection.
            else:
                conn.close()
        made = await connect(spec, facts)
        if isinstance(made, Outcome):
            return made
        return await self._over(made, facts, chunks)

    async def _over(self, conn: Connection, facts: Facts,
                    chunks: Callable[[], Iterable[bytes]]) -> Outcome:
        if self._closed:                      # the session ended while it was opened
            conn.close()
            return Outcome("failed", reason="the SMTP session ended")
        name = conn.spec.name
        self._conns[name] = conn
        outcome = await conn.message(facts, chunks())
        if conn.closed or self._closed:
            conn.close()
            if self._conns.get(name) is conn:
                del self._conns[name]
        return outcome

    def close(self) -> None:
        """The session is over: SMFIC_QUIT to every milter (a message under way is
        abandoned: the client is gone)."""
        self._closed = True
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


async def run_chain(milters: tuple[MilterSpec, ...], facts: Facts, spool: BodySpool,
                    new_spool: Callable[[], BodySpool],
                    chain: MilterChain | None = None) -> Filtered:
    """Ask every milter (over the session's connections, ``chain``, or a connection per
    milter for this message alone); the spool given is discarded if a changed one
    replaces it."""
    result = Filtered(spool=spool)
    for spec in milters:
        rule = f"milters.{spec.name}"
        if chain is not None:
            outcome = await chain.ask(spec, facts, result.spool.chunks)
        else:
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
