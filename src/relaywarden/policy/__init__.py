"""Pure policy decisions: facts in, `Decision` out (see docs/internals.md, policy/)."""

from relaywarden.policy.engine import Explanation, Policy, find_group
from relaywarden.policy.match import HostnameEntry, Matcher, NetworkEntry
from relaywarden.policy.model import (
    AccessRules,
    Action,
    ClientFacts,
    ClientGroup,
    Decision,
    Gates,
    ListenerPolicy,
)

__all__ = [
    "AccessRules",
    "Action",
    "ClientFacts",
    "ClientGroup",
    "Decision",
    "Explanation",
    "Gates",
    "HostnameEntry",
    "ListenerPolicy",
    "Matcher",
    "NetworkEntry",
    "Policy",
    "find_group",
]
