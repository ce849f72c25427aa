"""Turn a validated `Config` into the pure `Policy` values."""

from __future__ import annotations

from relaywarden.config.schema import Config, GroupSettings, ListenerSettings
from relaywarden.policy import (
    AccessRules,
    Action,
    ClientGroup,
    ListenerPolicy,
    Policy,
)


def _group(name: str, group: GroupSettings) -> ClientGroup:
    return ClientGroup(
        name=name,
        networks=tuple(group.networks),
        hostnames=tuple(group.hostnames),
        users=tuple(group.users),
        directory_groups=tuple(group.directory_groups),
        recipient_domains=None if group.recipient_domains is None else tuple(group.recipient_domains),
        senders=None if group.senders is None else tuple(group.senders),
        on_violation=Action.BADMAIL if group.on_violation == "badmail" else Action.REJECT,
    )


def _listener(cfg: Config, name: str, listener: ListenerSettings, groups: dict[str, ClientGroup]) -> ListenerPolicy:
    return ListenerPolicy(
        name=name,
        access=AccessRules(
            default=Action.ACCEPT if listener.access.default == "allow" else Action.REJECT,
            allow=tuple(listener.access.allow),
            deny=tuple(listener.access.deny),
        ),
        relay_networks=tuple(listener.relay.networks),
        relay_authenticated=listener.relay.authenticated,
        # listener.groups is resolved by the schema: names in file order.
        groups=tuple(groups[group] for group in listener.groups or ()),
        hosted_domains=tuple(cfg.relay.hosted_domains),
        postmaster=cfg.relay.postmaster or f"postmaster@{cfg.relay.hostname}",
    )


def build_policy(cfg: Config) -> Policy:
    groups = {name: _group(name, group) for name, group in cfg.groups.items()}
    return Policy({name: _listener(cfg, name, listener, groups) for name, listener in cfg.listeners.items()})
