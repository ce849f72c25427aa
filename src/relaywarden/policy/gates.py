"""A listener's own gates, asked before the policy's sender rules.

- TLS first on a listener with ``tls.mode = "required"`` (RFC 3207 4: "530 5.7.0 Must
  issue a STARTTLS command first"), except for ``tls.optional_networks``;
- AUTH first on a listener with ``auth.required = true`` (RFC 4954 6: "530 5.7.0
  Authentication required");
- a verified host name at connect on a listener with ``access.require_rdns`` (forward-
  confirmed reverse DNS; RFC 8601 2.7.3 "iprev"): 554 5.7.25, or 421 4.7.25 when the lookup
  itself failed and may work later (RFC 7372 3.3: X.7.25 "reverse DNS validation failed");
- AUTH itself only over TLS unless the client is in ``auth.plaintext_networks`` (RFC 4954
  4 warns against plaintext passwords; 538 5.7.11 "Encryption required", RFC 4954 6), and
  not at all when ``auth.enabled = false`` (503 5.5.1, as the SMTP core answers).

Pure, like the rest of policy/: the server (server/session.py, at MAIL, ETRN and AUTH) and
``policy explain`` (CLI and HTTP API) ask these same functions, so that explain says what
the server answers.

The listener's limits are gates too, asked by the session only (they count what happens at
run time, which ``explain`` cannot know): the counters are policy/limits.py's and the hop
counter policy/hops.py's; the functions below say what a full one answers, from plain
numbers (connections at connect, free space at MAIL, the message and recipient windows at
MAIL and RCPT, Received fields at the end of DATA). Each returns the ``Decision`` the
session answers and logs (``rule`` is the config key that set the limit).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from relaywarden.policy.match import first_network
from relaywarden.policy.model import Action, Decision, Gates
from relaywarden.smtp.reply import AUTH_NOT_AVAILABLE, TOO_MANY_RECIPIENTS, reply

MUST_STARTTLS = reply(530, "5.7.0", "Must issue a STARTTLS command first")      # RFC 3207 4
AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")                  # RFC 4954 6
ENCRYPTION_REQUIRED = reply(538, "5.7.11",
                            "Encryption required for requested authentication mechanism")


class Need(enum.Enum):
    """What a client must do before the refused step can go further."""

    TLS = "tls"      # STARTTLS (policy explain: --tls, API "tls": true)
    USER = "user"    # AUTH (policy explain: --user NAME, API "user")
    NAME = "name"    # a verified reverse DNS name (policy explain: --name, API "name")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A gate that closed: the decision (code, rule, detail) and what would open it, if
    anything the client can do (None: nothing, e.g. AUTH on a listener without AUTH)."""

    decision: Decision
    need: Need | None


def has_tls(gates: Gates, tls: bool) -> bool:
    """An implicit-TLS listener (RFC 8314 3.3) has TLS from the first byte."""
    return tls or gates.tls_mode == "implicit"


def tls_required(gates: Gates, ip: IPv4Address | IPv6Address) -> bool:
    """Must this client STARTTLS before MAIL?"""
    return gates.tls_mode == "required" and first_network(gates.tls_optional_networks, ip) is None


def check_gates(listener: str, gates: Gates, ip: IPv4Address | IPv6Address, *,
                tls: bool, user: str | None, verb: str = "MAIL") -> Refusal | None:
    """The gates before MAIL (and ETRN, `verb`): None when the client may go on to the
    policy's sender rules. TLS is asked first, as the server answers it first."""
    if not has_tls(gates, tls) and tls_required(gates, ip):
        key = f"listeners.{listener}"    # (made only for a refusal: before every MAIL)
        detail = f"TLS required: {verb} before STARTTLS"
        if gates.tls_optional_networks:
            detail += f" ({ip} is not in {key}.tls.optional_networks)"
        return Refusal(decision=Decision(action=Action.REJECT, reply=MUST_STARTTLS,
                                         rule=f"{key}.tls.mode", detail=detail),
                       need=Need.TLS)
    if gates.auth_required and user is None:
        return Refusal(decision=Decision(action=Action.REJECT, reply=AUTH_REQUIRED,
                                         rule=f"listeners.{listener}.auth.required",
                                         detail=f"{verb} before AUTH"),
                       need=Need.USER)
    return None


RDNS_FAILED = reply(554, "5.7.25", "Client host rejected: cannot verify your host name")
RDNS_TEMPFAIL = reply(421, "4.7.25", "Cannot verify your host name, try again later")


def check_rdns(listener: str, gates: Gates, verified_name: str | None, *,
               temporary: bool = False, detail: str = "") -> Refusal | None:
    """At connect: a listener with access.require_rdns refuses a client without a
    verified (forward-confirmed) host name. `temporary`: the lookup failed (SERVFAIL,
    timeout) rather than answered, so the client is told to try again later."""
    if not gates.require_rdns or verified_name is not None:
        return None
    return Refusal(decision=Decision(
        action=Action.REJECT, reply=RDNS_TEMPFAIL if temporary else RDNS_FAILED,
        rule=f"listeners.{listener}.access.require_rdns",
        detail=detail or "the client has no verified reverse DNS name"), need=Need.NAME)


def check_auth(listener: str, gates: Gates, ip: IPv4Address | IPv6Address, *,
               tls: bool) -> Refusal | None:
    """May this client authenticate (AUTH) now? None: AUTH is offered."""
    key = f"listeners.{listener}.auth"
    if not gates.auth_enabled:
        return Refusal(decision=Decision(action=Action.REJECT, reply=AUTH_NOT_AVAILABLE,
                                         rule=f"{key}.enabled",
                                         detail="this listener does not offer AUTH"),
                       need=None)
    if not has_tls(gates, tls) and first_network(gates.auth_plaintext_networks, ip) is None:
        # STARTTLS opens it, where the listener offers STARTTLS at all.
        offered = gates.tls_mode in ("starttls", "required")
        detail = f"AUTH before STARTTLS: {ip} is not in {key}.plaintext_networks"
        if not offered:
            detail += (f' and listeners.{listener}.tls.mode = "{gates.tls_mode}": '
                       "this client can never AUTH here")
        return Refusal(decision=Decision(action=Action.REJECT, reply=ENCRYPTION_REQUIRED,
                                         rule=f"{key}.plaintext_networks", detail=detail),
                       need=Need.TLS if offered else None)
    return None


# -- The listener's limits --------------------------------------------------------------

# RFC 3463 4.7.0 (security or policy status), as Postfix and Exchange answer a connection
# beyond their limits; 421 closes the channel (RFC 5321 3.8).
TOO_MANY_CONNECTIONS = reply(421, "4.7.0", "Too many connections, try again later")
# RFC 3463 4.3.1: mail system full. The queue is not harmed: nothing new is accepted.
INSUFFICIENT_STORAGE = reply(452, "4.3.1", "Insufficient system storage")
# RFC 3463 4.7.1 (delivery not authorized, temporary): a rate limit at MAIL.
TOO_MANY_MESSAGES = reply(451, "4.7.1", "Too many messages, slow down and try again later")
# RFC 3463 5.4.6 (routing loop detected). Never sent: a looping message is accepted (250,
# so that the sending server stops retrying) and kept in badmail; the log says 554 5.4.6.
LOOP_DETECTED = reply(554, "5.4.6", "Routing loop detected")


def check_connections(listener: str, ip: str, *, total: int, from_ip: int, max_total: int,
                      max_per_ip: int) -> Decision | None:
    """One more connection from ``ip``, with ``total`` open on the listener and ``from_ip``
    open from that address? None: yes (a maximum of 0 is no limit)."""
    if max_total and total >= max_total:
        return Decision(action=Action.REJECT, reply=TOO_MANY_CONNECTIONS,
                        rule=f"listeners.{listener}.limits.max_connections",
                        detail=f"too many connections on the listener ({total} open, "
                               f"max_connections = {max_total})")
    if max_per_ip and from_ip >= max_per_ip:
        return Decision(action=Action.REJECT, reply=TOO_MANY_CONNECTIONS,
                        rule=f"listeners.{listener}.limits.max_connections_per_ip",
                        detail=f"too many connections from {ip} ({from_ip} open, "
                               f"max_connections_per_ip = {max_per_ip})")
    return None


def check_disk(free: int | None, min_free: int) -> Decision | None:
    """``relay.min_free_space`` at MAIL: ``free`` is the disk guard's reading of the data
    directory's free bytes (None: it could not be read, which never refuses: the guard
    protects the disk, it must not stop the relay by itself)."""
    if min_free <= 0 or free is None or free >= min_free:
        return None
    return Decision(action=Action.REJECT, reply=INSUFFICIENT_STORAGE,
                    rule="relay.min_free_space",
                    detail=f"free space in data_dir {free} < relay.min_free_space {min_free}")


def rate_limited(listener: str, what: str, *, limit: int, window: float, ip: str,
                 user: str | None) -> Decision:
    """The refusal of a rate window that is full (the window itself, which counts, is
    policy/limits.WindowLimiter): ``what`` is "messages" (at MAIL: 451 4.7.1) or
    "recipients" (at RCPT: 452 4.5.3, RFC 5321's flow control, 4.5.3.1.10: the client sends
    the accepted recipients now and the rest in a later transaction, which is what a rate
    limit wants; and the core does not count that reply as an error). The windows count
    per client address and, once authenticated, per user too."""
    subject = ip if user is None else f"{ip} or user {user}"
    return Decision(action=Action.REJECT,
                    reply=TOO_MANY_MESSAGES if what == "messages" else TOO_MANY_RECIPIENTS,
                    rule=f"listeners.{listener}.limits.{what}_per_window",
                    detail=f"more than {limit} {what} in {window:g} s from {subject}")


def check_hops(count: int, max_hops: int) -> Decision | None:
    """``relay.max_hops`` at the end of DATA (RFC 5321 6.3): more Received fields than that
    is a loop. The decision is BADMAIL: every recipient goes to badmail with its rule and
    detail, where the admin sees it; ``reply`` is what the log line says (554 5.4.6)."""
    if count <= max_hops:
        return None
    return Decision(action=Action.BADMAIL, reply=LOOP_DETECTED, rule="relay.max_hops",
                    detail=f"loop detected (5.4.6): {count} Received headers")
