"""The policy engine: may this client connect, send as this sender, to this recipient?

Pure functions of `ClientFacts`, addresses and the `ListenerPolicy` built from the config.
Every answer is a `Decision` that names the config entry (`rule`) that decided, so an
admin reading the log or `relaywarden explain` can find the line to change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from relaywarden.auth import AUTH_OK
from relaywarden.policy import dnsbl, gates, match
from relaywarden.policy.gates import Need, Refusal
from relaywarden.policy.model import (
    Action,
    ClientFacts,
    ClientGroup,
    Decision,
    ListenerPolicy,
)
from relaywarden.smtp.address import Address
from relaywarden.smtp.reply import reply

# Replies. The client gets a short generic text; the detail goes to the log
# (docs/architecture.md, house style 5). 5.7.1 is "delivery not authorized, message
# refused" (RFC 3463 3.8).
# A refused connection is answered with 554 instead of the 220 greeting (RFC 5321 3.1).
CONNECT_OK = reply(220, None, "Service ready")  # the server replaces it with its banner
ACCESS_DENIED = reply(554, "5.7.1", "Access denied")
SENDER_OK = reply(250, "2.1.0", "Ok")
SENDER_DENIED = reply(550, "5.7.1", "Sender address not allowed")
RECIPIENT_OK = reply(250, "2.1.5", "Ok")
ROUTING_DENIED = reply(550, "5.7.1", "Routing in the local part is not allowed")
RELAY_DENIED = reply(550, "5.7.1", "Unable to relay")
DOMAIN_DENIED = reply(550, "5.7.1", "Recipient domain not allowed for this sender")


def _show_client(client: ClientFacts) -> str:
    name = client.verified_name if client.verified_name is not None else "no verified name"
    who = f"{client.ip} ({name})"
    if client.user is not None:
        who += f" user {client.user!r}"
    return who


def _show_path(address: Address | None) -> str:
    return "<>" if address is None else f"<{address}>"


@dataclass(frozen=True, slots=True)
class Membership:
    group: ClientGroup
    reason: str  # which entry put the client in the group, e.g. "networks[0] 10.0.5.0/24"


def find_group(listener: ListenerPolicy, client: ClientFacts) -> Membership | None:
    """The first group of the listener, in order, that the client belongs to."""
    user = client.user.casefold() if client.user is not None else None
    directory = {name.casefold() for name in client.directory_groups}
    for group in listener.groups:
        index = match.first_network(group.networks, client.ip)
        if index is not None:
            return Membership(group, f"networks[{index}] {group.networks[index]}")
        for index, pattern in enumerate(group.hostnames):
            if match.hostname_matches(pattern, client.verified_name):
                return Membership(group, f"hostnames[{index}] {pattern}")
        if user is not None:
            for index, name in enumerate(group.users):
                if name.casefold() == user:
                    return Membership(group, f"users[{index}] {name}")
        for index, name in enumerate(group.directory_groups):
            if name.casefold() in directory:
                return Membership(group, f"directory_groups[{index}] {name}")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup:
    """One lookup `policy explain` made for a step: a DNS list zone asked at connect, or a
    recipient validation source (policy/recipients.py) asked at RCPT."""

    step: str                  # "connect" or "recipient"
    kind: str                  # "dnsbl", "dnswl", "recipient"
    source: str                # the zone; "file /path", "ldap", "callahead 10.0.0.5:25"
    answer: str                # "listed 127.0.0.2", "not listed", "known", "unknown", "failed"
    detail: str = ""           # the zone's TXT, the next hop's reply, why it failed
    cached: bool | None = None  # from a cache (None: not known, e.g. the resolver's)

    def render(self) -> str:
        text = f"  lookup {self.kind} {self.source}: {self.answer}"
        if self.detail:
            text += f" ({self.detail})"
        if self.cached is not None:
            text += " [cached]" if self.cached else " [not cached]"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    """Every step the server would take for one (client, sender, recipient), for
    `policy explain` (CLI and HTTP API).

    `auth` is asked only for a client that logs in (a user was given). The sender step
    includes the listener's gates (TLS or AUTH first, policy/gates.py) before the sender
    rules. Steps after the first refusal are None: the server would never have asked them.
    `need` says what the client must do first to get past a refusal (STARTTLS, AUTH), so
    that explain can ask for it (--tls, --user).
    """

    connect: Decision
    auth: Decision | None = None
    sender: Decision | None
    recipient: Decision | None
    need: Need | None = None
    lookups: tuple[Lookup, ...] = ()   # what was asked (DNS lists, recipient sources)

    def steps(self) -> list[tuple[str, Decision | None]]:
        steps: list[tuple[str, Decision | None]] = [("connect", self.connect)]
        if self.auth is not None:
            steps.append(("auth", self.auth))
        return steps + [("sender", self.sender), ("recipient", self.recipient)]

    def render(self, hints: Mapping[Need, str] | None = None) -> str:
        """One line per step; `hints` words what opens a refusal for the asker, e.g.
        {Need.TLS: "give --tls to see what happens after STARTTLS"}."""
        lines = []
        refused = False
        for step, decision in self.steps():
            if decision is None:
                lines.append(f"{step}: not reached")
                continue
            text = f"{step}: {decision.action.value}"
            # The accepted connection's 220 is a placeholder for the server's banner.
            if not (step == "connect" and decision.action is Action.ACCEPT):
                code = decision.reply.code
                text += f" {code} {decision.reply.enhanced}" if decision.reply.enhanced else f" {code}"
            text += f" ({decision.rule})"
            if decision.detail:
                text += f": {decision.detail}"
            if (decision.action is Action.REJECT and not refused and self.need is not None
                    and hints and self.need in hints):
                text += f" ({hints[self.need]})"
            refused = refused or decision.action is Action.REJECT
            lines.append(text)
            lines.extend(look.render() for look in self.lookups if look.step == step)
        return "\n".join(lines)


#: Verdicts kept per Policy object (see Policy.__init__): clients x senders or recipient
#: domains seen recently. A miss costs what no cache would; a hit saves the decision.
VERDICT_CACHE = 4096


class Policy:
    def __init__(self, listeners: Mapping[str, ListenerPolicy]) -> None:
        # Read-only: the cached verdicts below are only right while the rules stay as built.
        self.listeners = MappingProxyType(dict(listeners))
        # Every decision is a pure function of the rules (fixed for this object) and its
        # arguments: ClientFacts holds all that is known of the client (listener, address,
        # verified name, user, directory groups), so the same client sending as the same
        # sender, or to the same recipient domain, gets the same Decision. The caches belong
        # to this object: a SIGHUP reload builds a new Policy, and the old verdicts go with
        # the old one. Decisions are frozen values, safe to hand to every session.
        self.check_connect = functools.lru_cache(VERDICT_CACHE)(self._check_connect)
        self.check_sender = functools.lru_cache(VERDICT_CACHE)(self._check_sender)
        self.group_of = functools.lru_cache(VERDICT_CACHE)(self._group_of)
        self._domain_verdict = functools.lru_cache(VERDICT_CACHE)(self._check_domain)

    def _listener(self, client: ClientFacts) -> ListenerPolicy:
        try:
            return self.listeners[client.listener]
        except KeyError:
            # A programming error (the server only runs configured listeners), not a
            # client's fault: fail loudly rather than guess a policy.
            raise KeyError(f"no policy for listener {client.listener!r}") from None

    def hosted(self, client: ClientFacts, domain: str) -> bool:
        """Is this recipient domain one the client's listener hosts (inbound mail)?"""
        return match.first_domain(self._listener(client).hosted_domains, domain) is not None

    # ---------------------------------------------------------------- connect
    def _group_of(self, client: ClientFacts) -> str | None:
        """The name of the client group that applies to this client (sender routes use it)."""
        membership = find_group(self._listener(client), client)
        return None if membership is None else membership.group.name

    def _check_connect(self, client: ClientFacts) -> Decision:
        """Connection control: the most specific matching entry across allow and deny wins.

        "Most specific" is `match.specificity`; on a tie deny wins, so listing the same
        entry in both lists closes rather than opens. No match: the listener's default.
        """
        listener = self._listener(client)
        access = listener.access
        best: tuple[tuple[int, int], bool, int, match.Matcher] | None = None
        # deny is scanned first and only replaced by a strictly more specific allow entry.
        for is_deny, entries in ((True, access.deny), (False, access.allow)):
            for index, entry in enumerate(entries):
                if not match.entry_matches(entry, client.ip, client.verified_name):
                    continue
                rank = match.specificity(entry)
                if best is None or rank > best[0]:
                    best = (rank, is_deny, index, entry)
        prefix = f"listeners.{listener.name}.access"
        if best is None:
            action = access.default
            verdict = "allow" if action is Action.ACCEPT else "deny"
            return Decision(
                action=action,
                reply=CONNECT_OK if action is Action.ACCEPT else ACCESS_DENIED,
                rule=f"{prefix}.default",
                detail=f"no access entry matches {_show_client(client)}; default is {verdict}",
            )
        _, is_deny, index, entry = best
        kind = "deny" if is_deny else "allow"
        return Decision(
            action=Action.REJECT if is_deny else Action.ACCEPT,
            reply=ACCESS_DENIED if is_deny else CONNECT_OK,
            rule=f"{prefix}.{kind}[{index}]",
            detail=f"{_show_client(client)} matches {kind} entry {entry}",
        )

    # ---------------------------------------------------------------- MAIL FROM
    def _check_sender(self, client: ClientFacts, sender: Address | None) -> Decision:
        listener = self._listener(client)
        membership = find_group(listener, client)
        if membership is not None and membership.group.senders is not None:
            group = membership.group
            senders = membership.group.senders
            index = match.first_sender(senders, sender)
            if index is None:
                return Decision(
                    action=Action.REJECT,
                    reply=SENDER_DENIED,
                    rule=f"groups.{group.name}.senders",
                    detail=(
                        f"{_show_path(sender)} is not in {', '.join(senders)} "
                        f"(client in group {group.name} by {membership.reason})"
                    ),
                )
            return Decision(
                action=Action.ACCEPT,
                reply=SENDER_OK,
                rule="default",
                detail=f"{_show_path(sender)} matches groups.{group.name}.senders[{index}] "
                f"{senders[index]}",
            )
        reason = "no group restricts senders" if membership is None else (
            f"group {membership.group.name} does not restrict senders"
        )
        return Decision(action=Action.ACCEPT, reply=SENDER_OK, rule="default", detail=reason)

    # ---------------------------------------------------------------- RCPT TO
    def check_recipient(
        self, client: ClientFacts, sender: Address | None, recipient: Address
    ) -> Decision:
        """Decide one RCPT TO.

        The parser has already dropped any source route (RFC 5321 3.6.1 and appendix C:
        servers SHOULD ignore it) and normalised case and the trailing dot, so only the
        final mailbox `local@domain` is looked at here. `sender` is unused today (sender
        rules are decided at MAIL FROM) but is part of the seam for per-sender routes.
        """
        del sender
        # 1. RFC 5321 4.5.1: <postmaster> without a domain must always be accepted.
        if recipient.domain == "":
            listener = self._listener(client)
            return Decision(
                action=Action.ACCEPT,
                reply=RECIPIENT_OK,
                rule="postmaster",
                detail=f"<postmaster> goes to the configured postmaster <{listener.postmaster}>",
            )

        # 2. Routing characters in the local part ("user%evil.com@example.com",
        # "evil.com!user@example.com", "\"user@evil.com\"@example.com") ask the next hop
        # to relay further. If a hosted server downstream (Exchange, sendmail) honours the
        # percent hack or a bang path, accepting such an address for a hosted domain turns
        # the pair into an open relay. Postfix refuses them only from untrusted clients
        # (allow_untrusted_routing = no); we refuse them for everyone, because no
        # legitimate sender of today needs them and a trusted but compromised app is
        # exactly who would abuse them.
        if recipient.routing_chars:
            return Decision(
                action=Action.REJECT,
                reply=ROUTING_DENIED,
                rule="address.routing",
                detail=f"<{recipient}> has '%', '!' or '@' in the local part",
            )

        # 3.-5. depend on the domain alone: decided once per (client, domain).
        return self._domain_verdict(client, recipient.domain)

    def _check_domain(self, client: ClientFacts, domain: str) -> Decision:
        """check_recipient's steps 3 to 5, for a recipient without routing characters."""
        listener = self._listener(client)

        # 3. Relay permission: hosted domains are open to anyone (inbound mail); other
        # domains only to relay networks or, when allowed, authenticated users.
        prefix = f"listeners.{listener.name}.relay"
        index = match.first_domain(listener.hosted_domains, domain)
        if index is not None:
            rule = "relay.hosted_domains"
            permission = f"{domain} is hosted ({listener.hosted_domains[index]})"
        else:
            index = match.first_network(listener.relay_networks, client.ip)
            if index is not None:
                rule = f"{prefix}.networks[{index}]"
                permission = f"{client.ip} is in relay network {listener.relay_networks[index]}"
            elif client.user is not None and listener.relay_authenticated:
                rule = f"{prefix}.authenticated"
                permission = f"authenticated user {client.user!r} may relay"
            else:
                why = f"{domain} is not hosted and {_show_client(client)} may not relay"
                if client.user is not None:
                    why += f" ({prefix}.authenticated is off)"
                return Decision(
                    action=Action.REJECT, reply=RELAY_DENIED, rule="relay.denied", detail=why
                )

        # 4. Group restriction (the seed scenario: scanners may mail only the company's
        # own domains; anything else is refused or quarantined).
        membership = find_group(listener, client)
        if membership is not None and membership.group.recipient_domains is not None:
            group = membership.group
            domains = membership.group.recipient_domains
            if match.first_domain(domains, domain) is None:
                detail = f"{domain} is not in {', '.join(domains)}"
                if group.on_violation is Action.BADMAIL:
                    return Decision(
                        action=Action.BADMAIL,
                        reply=RECIPIENT_OK,
                        rule=f"groups.{group.name}.recipient_domains",
                        detail=detail,
                    )
                return Decision(
                    action=Action.REJECT,
                    reply=DOMAIN_DENIED,
                    rule=f"groups.{group.name}.recipient_domains",
                    detail=detail,
                )
            permission += f"; allowed for group {group.name}"

        # 5.
        return Decision(action=Action.ACCEPT, reply=RECIPIENT_OK, rule=rule, detail=permission)

    # ---------------------------------------------------------------- the listener's gates
    def check_gates(self, client: ClientFacts, *, tls: bool, verb: str = "MAIL") -> Refusal | None:
        """TLS first and AUTH first (policy/gates.py), before MAIL and ETRN: None when the
        client may go on. `tls`: the session has TLS (STARTTLS done, or implicit)."""
        listener = self._listener(client)
        return gates.check_gates(listener.name, listener.gates, client.ip, tls=tls,
                                 user=client.user, verb=verb)

    def check_rdns(self, client: ClientFacts, *, temporary: bool = False,
                   detail: str = "") -> Refusal | None:
        """access.require_rdns at connect (policy/gates.py): None when the client may go on."""
        listener = self._listener(client)
        return gates.check_rdns(listener.name, listener.gates, client.verified_name,
                                temporary=temporary, detail=detail)

    def dnsbl_zones(self, client: ClientFacts) -> tuple[str, ...]:
        """The DNS list zones to ask about this client at connect (allowlists first); none
        for a client in the listener's relay networks (the company's own machines)."""
        listener = self._listener(client)
        g = listener.gates
        if not (g.dnsbl or g.dnswl):
            return ()
        if match.first_network(listener.relay_networks, client.ip) is not None:
            return ()
        return tuple(dict.fromkeys(site.zone for site in (*g.dnswl, *g.dnsbl)))

    def check_dnsbl(self, client: ClientFacts,
                    answers: Mapping[str, dnsbl.ZoneAnswer]) -> tuple[Decision | None, str]:
        """The verdict of the DNS lists' answers (policy/dnsbl.py): (a REJECT or None, a
        note of what was found, for the log and explain)."""
        listener = self._listener(client)
        g = listener.gates
        return dnsbl.decide(listener.name, str(client.ip), g.dnsbl, g.dnswl,
                            g.dnsbl_threshold, dict(answers))

    def dnsbl_lookups(self, client: ClientFacts,
                      answers: Mapping[str, dnsbl.ZoneAnswer]) -> list[Lookup]:
        """One Lookup per zone asked, as explain shows it and the mail log records it."""
        allow = {site.zone for site in self._listener(client).gates.dnswl}
        out = []
        for zone, a in answers.items():
            kind = "dnswl" if zone in allow else "dnsbl"
            if a.failed:
                out.append(Lookup(step="connect", kind=kind, source=zone, answer="failed",
                                  detail=a.failed))
            elif a.answers:
                out.append(Lookup(step="connect", kind=kind, source=zone,
                                  answer="listed " + ",".join(a.answers),
                                  detail=dnsbl.sanitize_txt(a.txt)))
            else:
                out.append(Lookup(step="connect", kind=kind, source=zone, answer="not listed"))
        return out

    def check_auth(self, client: ClientFacts, *, tls: bool) -> Refusal | None:
        """May the client AUTH now (policy/gates.py)? None: AUTH is offered."""
        listener = self._listener(client)
        return gates.check_auth(listener.name, listener.gates, client.ip, tls=tls)

    # ---------------------------------------------------------------- explain
    def explain(
        self, client: ClientFacts, sender: Address | None, recipient: Address, *,
        tls: bool = False, dnsbl_answers: Mapping[str, dnsbl.ZoneAnswer] | None = None,
    ) -> Explanation:
        """What the server answers, step by step, to this client (`client.user`: it logs
        in as that user; `tls`: it uses STARTTLS, or the listener is implicit TLS).
        `dnsbl_answers`: what the DNS lists of dnsbl_zones() said (the caller asks them;
        this stays pure)."""
        connect = self.check_connect(client)
        if connect.action is not Action.ACCEPT:
            return Explanation(connect=connect, sender=None, recipient=None)
        refusal = self.check_rdns(client)
        if refusal is not None:
            return Explanation(connect=refusal.decision, sender=None, recipient=None,
                               need=refusal.need)
        if dnsbl_answers is not None:
            # In the server's order (_greet): connection rules, reverse DNS, DNS lists.
            listed, _ = self.check_dnsbl(client, dnsbl_answers)
            if listed is not None:
                return Explanation(connect=listed, sender=None, recipient=None)
        auth = None
        if client.user is not None:
            refusal = self.check_auth(client, tls=tls)
            if refusal is not None:
                return Explanation(connect=connect, auth=refusal.decision, sender=None,
                                   recipient=None, need=refusal.need)
            auth = Decision(action=Action.ACCEPT, reply=AUTH_OK,
                            rule=f"listeners.{client.listener}.auth.enabled",
                            detail=f"{client.user!r} logs in (if the password is right)")
        refusal = self.check_gates(client, tls=tls)
        if refusal is not None:
            return Explanation(connect=connect, auth=auth, sender=refusal.decision,
                               recipient=None, need=refusal.need)
        mail = self.check_sender(client, sender)
        if mail.action is not Action.ACCEPT:
            return Explanation(connect=connect, auth=auth, sender=mail, recipient=None)
        return Explanation(
            connect=connect, auth=auth, sender=mail,
            recipient=self.check_recipient(client, sender, recipient),
        )
