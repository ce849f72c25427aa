"""ATRN (RFC 2645, On-Demand Mail Relay): an authenticated client collects its domains' mail
over its own connection.

The session asks ``check`` (pure: may this user collect these domains?), claims the mail
from the queue (``Store.start_atrn``, leased for ``ATRN_LEASE``), answers, and on 250 hands
its transport to ``deliver``: the roles reverse (RFC 2645 5.3), the relay is the client on
this connection (``OutboundConnection.adopt``) and the delivery engine sends the claimed
messages (``Engine.deliver_over``). The one exception to "smtpd never delivers"
(docs/architecture.md, invariants): the client asked for its mail over this connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from relaywarden.delivery.client import ClientPolicy, DeliveryError, OutboundConnection
from relaywarden.delivery.tls import TlsMode
from relaywarden.policy.model import Action, Decision
from relaywarden.smtp.reply import reply

if TYPE_CHECKING:
    from relaywarden.delivery.engine import Engine

# RFC 2645 5.2.1 and 7.
ATRN_REFUSED = reply(450, "4.7.1", "ATRN request refused")
ATRN_NOT_NOW = reply(451, "4.3.0", "Unable to process ATRN request now")
ATRN_NO_MAIL = reply(453, "4.3.0", "You have no mail")
ATRN_REVERSING = reply(250, "2.0.0", "OK now reversing the connection")
#: How long mail claimed for an ATRN session is kept from the scheduler (it is held
#: again, or delivered, well before: this only matters if the process dies meanwhile).
ATRN_LEASE = 3600.0
#: What the mail claimed for a client that went away before the turnaround is held with.
CLIENT_GONE = reply(451, "4.4.2", "the ATRN client went away")


def check(user: str | None, asked: tuple[str, ...], allowed: tuple[str, ...]) -> Decision | None:
    """May ``user`` collect the mail of the domains ``asked`` (none: all of its own)?
    ``allowed``: the domains whose routes name the user in ``atrn_users``
    (``Router.atrn_domains``). None: yes; else the refusal (450 4.7.1)."""
    refused = [d for d in asked if d not in allowed]
    if allowed and not refused:
        return None
    if refused:
        rule = f'routes."{refused[0]}".atrn_users'
        detail = f"user {user} may not collect mail for {','.join(refused)}"
    else:
        rule = "atrn_users"
        detail = f"user {user} may collect no domain's mail"
    return Decision(action=Action.REJECT, reply=ATRN_REFUSED, rule=rule, detail=detail)


async def deliver(engine: Engine, transport: asyncio.Transport, messages: list, *,
                  initial: bytes, session_id: str | None, client_ip: str) -> tuple[int, int]:
    """After 250 to ATRN: be the client on ``transport`` and send ``messages`` (claimed by
    ``Store.start_atrn``). ``initial``: what the peer sent that the core did not read.
    Returns (delivered, held) recipients; what is not sent is held again."""
    s = engine.settings
    policy = ClientPolicy(helo=s.helo, tls=TlsMode.NONE, connect_timeout=s.connect_timeout,
                          command_timeout=s.command_timeout, data_timeout=s.data_timeout)
    first = messages[0]
    try:
        # Its outbound protocol log lines carry the inbound session's ID: the two halves
        # of the connection are found together.
        conn = await OutboundConnection.adopt(
            transport, policy, initial=initial, log=engine.protocol_log,
            session_id=session_id, queue_id=first.queue_id,
            route=engine.router.route(first.recipients[0].domain, sender=first.sender,
                                      group=first.client_group, user=first.auth_user).name)
    except DeliveryError as err:
        await engine.hold_back(messages, err.reply, remote=f"ATRN {client_ip}")
        return 0, sum(len(m.recipients) for m in messages)
    try:
        return await engine.deliver_over(conn, messages)
    finally:
        await conn.close()
