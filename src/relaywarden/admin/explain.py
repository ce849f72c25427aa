"""Policy explain: one function for `relaywarden policy explain` and POST /api/v1/explain.

Both ask the same question the same way (the listener, the client's address and verified
name, the user it logs in as, whether it uses TLS, its directory groups, sender and
recipient) and get the same `Explanation`: the connect decision, the AUTH gate for a user,
the listener's TLS and AUTH gates before MAIL (policy/gates.py, which the server asks
too), the sender rules and the recipient rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from relaywarden.config.build import build_policy
from relaywarden.config.schema import Config
from relaywarden.policy.engine import Explanation
from relaywarden.policy.model import ClientFacts
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


def explain(cfg: Config, *, listener: str, client: str, sender: str | None, recipient: str | None,
            name: str | None = None, user: str | None = None, tls: bool = False,
            groups: Iterable[str] = ()) -> Explanation:
    """What the relay running `cfg` answers this client, step by step.

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
    return build_policy(cfg).explain(facts, from_, to, tls=tls)
