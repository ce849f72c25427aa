"""Policy explain: one function for `relaywarden policy explain` and POST /api/v1/explain.

Both ask the same question the same way (the listener, the client's address and verified
name, the user it logs in as, whether it uses TLS, its directory groups, sender and
recipient) and get the same `Explanation`: the connect decision, the AUTH gate for a user,
the listener's TLS and AUTH gates before MAIL (policy/gates.py, which the server asks
too), the sender rules and the recipient rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from relaywarden.config.build import build_policy
from relaywarden.config.schema import Config
from relaywarden.policy.engine import Explanation, Lookup
from relaywarden.policy.model import Action, ClientFacts
from relaywarden.policy.recipients import combine
from relaywarden.resolver.resolver import Resolver
from relaywarden.server.validate import RecipientValidator
from relaywarden.smtp.address import Address, AddressError, parse_path


class ExplainError(ValueError):
    """A question explain cannot answer; `field` names the input (listener, client, tls,
    from, to) so that the CLI can name its option and the API its JSON field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_address(text: str | None, field: str) -> Address | None:
    """A MAIL FROM / RCPT TO address as typed: with or without <>, '' or '<>' for null."""
    text = (text or "").strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    try:
        return parse_path(text, utf8=True)
    except AddressError as exc:
        raise ExplainError(field, " ".join(exc.reply.lines)) from None


def _question(cfg: Config, *, listener: str, client: str, sender: str | None,
              recipient: str | None, name: str | None = None, user: str | None = None,
              tls: bool = False, groups: Iterable[str] = ()):
    """The question checked and parsed: (ClientFacts, sender, recipient).

    tls: the client uses TLS (STARTTLS, or the listener is implicit TLS); on a listener
    with tls.mode = "none" it cannot, and the question is refused rather than answered
    for a session that cannot happen. user: the client logs in as this user (with the
    right password)."""
    if listener not in cfg.listeners:
        raise ExplainError("listener",
                           f"no listener {listener!r}; the config has: {', '.join(cfg.listeners)}")
    try:
        ip = ipaddress.ip_address(client.strip())
    except ValueError:
        raise ExplainError("client", f"{client!r} is not an IP address") from None
    if tls and cfg.listeners[listener].tls.mode == "none":
        raise ExplainError("tls", f'listeners.{listener}.tls.mode is "none": a client cannot '
                                  "use TLS there")
    from_ = parse_address(sender, "from")
    to = parse_address(recipient, "to")
    if to is None:
        raise ExplainError("to", "a recipient is needed")
    facts = ClientFacts(listener=listener, ip=ip, verified_name=name or None, user=user or None,
                        directory_groups=frozenset(groups))
    return facts, from_, to


def explain(cfg: Config, **question) -> Explanation:
    """`explain_async` for a caller without an event loop (the CLI)."""
    return asyncio.run(explain_async(cfg, **question))


async def explain_async(cfg: Config, *, validator: RecipientValidator | None = None,
                        resolver: Resolver | None = None, **question) -> Explanation:
    """What the relay running `cfg` answers this client, step by step, with the lookups
    the server would make: the listener's DNS lists at connect and the hosted domain's
    recipient validation sources at RCPT (each in `Explanation.lookups`, with its answer
    and whether it came from a cache). `validator` / `resolver`: ones to reuse (the admin
    API keeps them, so that their caches live across questions); new ones otherwise.

    Explain asks the sources itself: the running relay's caches are in its receiving
    process, so "cached" is this asker's cache, and a callahead is made for real."""
    from relaywarden.config.build import build_resolver, build_validator    # the server's own builders

    facts, from_, to = _question(cfg, **question)
    policy = build_policy(cfg)
    resolver = resolver or build_resolver(cfg)
    lookups: list[Lookup] = []
    answers = None
    zones = policy.dnsbl_zones(facts)
    if zones:
        answers = await resolver.dnsbl(str(facts.ip), zones)
        lookups.extend(policy.dnsbl_lookups(facts, answers))
    result = policy.explain(facts, from_, to, tls=question.get("tls", False),
                            dnsbl_answers=answers)
    rcpt = result.recipient
    if (rcpt is not None and rcpt.action is Action.ACCEPT and to.domain
            and policy.hosted(facts, to.domain)):
        own = validator is None
        validator = validator or build_validator(cfg, resolver)
        found = validator.for_domain(to.domain) if validator is not None else None
        if found is not None and validator is not None:
            key, settings = found
            try:
                said = await validator.lookup(str(to), settings)
            finally:
                if own:
                    await validator.close()
            verdict = combine(key, said, on_lookup_failure=settings.on_lookup_failure)
            if verdict.action is Action.ACCEPT:
                # As the server does (_validated): the policy's rule, and what was found.
                verdict = replace(rcpt, detail=f"{rcpt.detail}; {verdict.detail}"
                                  if rcpt.detail else verdict.detail)
            rcpt = verdict
            lookups.extend(Lookup(step="recipient", kind="recipient", source=a.source,
                                  answer=a.known.value, detail=a.detail, cached=a.cached)
                           for a in said)
    return replace(result, recipient=rcpt, lookups=tuple(lookups))

