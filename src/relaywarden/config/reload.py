"""What a reload (SIGHUP) does with each setting: applied to the running relay, or listed as
needing a restart. Nothing is ignored in silence.

`SETTINGS` is the one table: every setting of the schema by its dotted key, ``*`` standing
for the names of a table's entries (``routes.*``, ``listeners.*``).
tests/config/test_reload_table.py walks the schema and fails for a setting missing here,
so a new setting must be classified when it is added. `changes` compares two loaded configs key by key and
returns what changed, split into applied and needs-a-restart.

Applied means: new sessions, new attempts and new connections use the new value (the
receiving process rebuilds policy, router, listener settings, TLS contexts, password
checkers; the delivery process its settings, router, resolver and per-next-hop connection
cap; the admin process its users and roles). What is under way goes on as it began.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relaywarden.config.schema import Config

APPLIED = "applied"
RESTART = "restart"
#: listeners.*.tls.mode: applied, except a switch to or from "implicit" (an implicit-TLS
#: listener does its handshakes in its own server object, made at start).
IMPLICIT_TLS = "restart if implicit TLS switches"

SETTINGS: dict[str, str] = {
    "relay.hostname": APPLIED,
    "relay.data_dir": RESTART,             # the queue, logs and metrics are open there
    "relay.postmaster": APPLIED,
    "relay.max_message_size": APPLIED,
    "relay.hosted_domains": APPLIED,
    "relay.min_free_space": APPLIED,
    "relay.max_hops": APPLIED,
    "queue.backend": RESTART,
    # The log files are opened by each process at start.
    "log.dir": RESTART,
    "log.protocol": RESTART,
    "log.protocol_outbound": RESTART,
    "log.protocol_formats": RESTART,
    "log.mail": RESTART,
    "log.rotate": RESTART,
    "log.max_size": RESTART,
    "log.keep": RESTART,
    "delivery.process": RESTART,           # which processes run
    "delivery.handoff": RESTART,           # where a received message is made durable
    "delivery.in_flow_delay": APPLIED,     # the next 250s
    "delivery.nice": RESTART,              # set once, as the delivery process starts
    "delivery.helo_name": APPLIED,
    "delivery.max_concurrent": APPLIED,
    "delivery.per_destination": APPLIED,   # the next connections to each next hop
    "delivery.retry_schedule": APPLIED,
    "delivery.expire_after": APPLIED,
    "delivery.delay_notice_after": APPLIED,
    "delivery.mx_port": APPLIED,
    "delivery.connect_timeout": APPLIED,
    "delivery.command_timeout": APPLIED,
    "delivery.data_timeout": APPLIED,
    "delivery.tls": APPLIED,
    "delivery.ca_file": APPLIED,
    "delivery.ndr_copy_to": APPLIED,
    "dns.nameservers": APPLIED,
    "dns.port": APPLIED,
    "dns.timeout": APPLIED,
    "dns.reverse_lookups": APPLIED,
    "badmail.dir": APPLIED,
    "badmail.notify": APPLIED,
    "badmail.notify_interval": APPLIED,
    "badmail.command": APPLIED,
    "screening.blocked_extensions": APPLIED,
    "screening.blocked_content_types": APPLIED,
    "screening.max_attachment_size": APPLIED,
    "screening.look_inside_zip": APPLIED,
    "screening.action": APPLIED,
    "screening.scope": APPLIED,
    "auth.users_file": APPLIED,
    "auth.ldap.url": APPLIED,
    "auth.ldap.mode": APPLIED,
    "auth.ldap.start_tls": APPLIED,
    "auth.ldap.ca_file": APPLIED,
    "auth.ldap.user_dn_template": APPLIED,
    "auth.ldap.bind_dn": APPLIED,
    "auth.ldap.bind_password_file": APPLIED,
    "auth.ldap.search_base": APPLIED,
    "auth.ldap.search_filter": APPLIED,
    "auth.ldap.group_attribute": APPLIED,
    "auth.ldap.group_search_base": APPLIED,
    "auth.ldap.group_filter": APPLIED,
    "auth.ldap.group_name_attribute": APPLIED,
    "auth.ldap.timeout": APPLIED,
    "auth.order": APPLIED,
    # The throttle (SMTP AUTH and console logins) is made once: a reload keeps its memory
    # of failures, so that it cannot be used to lift a brute-force lockout.
    "auth.throttle.delays": RESTART,
    "auth.throttle.client_limit": RESTART,
    "auth.throttle.user_limit": RESTART,
    "auth.throttle.window": RESTART,
    "auth.throttle.lockout": RESTART,
    "auth.cram_md5_file": APPLIED,
    # The console's HTTP server listens from the start of the admin process.
    "admin.enabled": RESTART,
    "admin.address": RESTART,
    "admin.port": RESTART,
    "admin.cert_file": RESTART,
    "admin.key_file": RESTART,
    "admin.users_file": APPLIED,
    "admin.session_timeout": APPLIED,
    "admin.metrics_token_file": APPLIED,
    "admin.ldap_roles.admin": APPLIED,
    "admin.ldap_roles.operator": APPLIED,
    "admin.ldap_roles.viewer": APPLIED,
    # The pickup task is made at start (server/pickup.py).
    "pickup.dir": RESTART,
    "pickup.group": RESTART,
    "pickup.poll_interval": RESTART,
    "pickup.watch": RESTART,
    "pickup.settle": RESTART,
    "history.enabled": RESTART,            # the indexer (or the trimmer) starts with the process
    "history.keep_days": RESTART,
    "routes.*.next_hops": APPLIED,
    "routes.*.tls": APPLIED,
    "routes.*.implicit_tls": APPLIED,
    "routes.*.username": APPLIED,
    "routes.*.password_file": APPLIED,
    "routes.*.password": APPLIED,
    "routes.*.auth_without_tls": APPLIED,
    "routes.*.hold": APPLIED,
    "routes.*.etrn": APPLIED,
    "routes.*.etrn_networks": APPLIED,
    "routes.*.atrn_users": APPLIED,
    "sender_routes.*.next_hops": APPLIED,
    "sender_routes.*.tls": APPLIED,
    "sender_routes.*.implicit_tls": APPLIED,
    "sender_routes.*.username": APPLIED,
    "sender_routes.*.password_file": APPLIED,
    "sender_routes.*.password": APPLIED,
    "sender_routes.*.auth_without_tls": APPLIED,
    "routes.*.auth": APPLIED,
    "routes.*.oauth": APPLIED,
    "routes.*.mailbox": APPLIED,
    "sender_routes.*.auth": APPLIED,
    "sender_routes.*.oauth": APPLIED,
    "sender_routes.*.mailbox": APPLIED,
    # A changed provider is a new one (its tokens fetched anew); an unchanged one keeps its
    # tokens across the reload (relaywarden.oauth.providers).
    "oauth.*.kind": APPLIED,
    "oauth.*.flow": APPLIED,
    "oauth.*.tenant": APPLIED,
    "oauth.*.client_id": APPLIED,
    "oauth.*.client_secret_file": APPLIED,
    "oauth.*.certificate_file": APPLIED,
    "oauth.*.key_file": APPLIED,
    "oauth.*.authority": APPLIED,
    "oauth.*.graph_endpoint": APPLIED,
    "oauth.*.service_account_file": APPLIED,
    "oauth.*.subject": APPLIED,
    "oauth.*.token_uri": APPLIED,
    "oauth.*.auth_uri": APPLIED,            # (oauth login only; the relay never uses it)
    "oauth.*.refresh_token_file": APPLIED,
    "oauth.*.scopes": APPLIED,
    "oauth.*.ca_file": APPLIED,
    "oauth.*.refresh_margin": APPLIED,
    "oauth.*.timeout": APPLIED,
    # Recipient validation: a new validator (its files re-read, its cache starts over).
    "recipients.*.files": APPLIED,
    "recipients.*.callahead": APPLIED,
    "recipients.*.ldap": APPLIED,
    "recipients.*.ldap_filter": APPLIED,
    "recipients.*.positive_ttl": APPLIED,
    "recipients.*.negative_ttl": APPLIED,
    "recipients.*.on_lookup_failure": APPLIED,
    # New limits at once; the counts of unknown recipients so far are kept (app.py).
    "recipient_throttle.delays": APPLIED,
    "recipient_throttle.connection_limit": APPLIED,
    "recipient_throttle.client_limit": APPLIED,
    "recipient_throttle.window": APPLIED,
    # Milters: the next message uses the new settings (a conversation is per message).
    "milters.*.socket": APPLIED,
    "milters.*.connect_timeout": APPLIED,
    "milters.*.command_timeout": APPLIED,
    "milters.*.eom_timeout": APPLIED,
    "milters.*.on_failure": APPLIED,
    "sender_routes.*.groups": APPLIED,
    "sender_routes.*.users": APPLIED,
    "sender_routes.*.sender_domains": APPLIED,
    "groups.*.networks": APPLIED,
    "groups.*.hostnames": APPLIED,
    "groups.*.users": APPLIED,
    "groups.*.directory_groups": APPLIED,
    "groups.*.recipient_domains": APPLIED,
    "groups.*.senders": APPLIED,
    "groups.*.on_violation": APPLIED,
    "listeners.*.address": RESTART,        # the listening sockets are made at start
    "listeners.*.port": RESTART,
    "listeners.*.banner": APPLIED,
    "listeners.*.max_message_size": APPLIED,
    "listeners.*.max_recipients": APPLIED,
    "listeners.*.max_errors": APPLIED,
    "listeners.*.command_timeout": APPLIED,
    "listeners.*.data_timeout": APPLIED,
    "listeners.*.groups": APPLIED,
    "listeners.*.access.default": APPLIED,
    "listeners.*.access.allow": APPLIED,
    "listeners.*.access.deny": APPLIED,
    "listeners.*.access.require_rdns": APPLIED,
    "listeners.*.access.dnsbl": APPLIED,
    "listeners.*.access.dnsbl_threshold": APPLIED,
    "listeners.*.access.dnswl": APPLIED,
    "listeners.*.relay.networks": APPLIED,
    "listeners.*.relay.authenticated": APPLIED,
    "listeners.*.line_endings.bare_lf": APPLIED,
    "listeners.*.line_endings.normalize_networks": APPLIED,
    "listeners.*.tls.mode": IMPLICIT_TLS,
    "listeners.*.tls.cert_file": APPLIED,   # new handshakes get the new certificate
    "listeners.*.tls.key_file": APPLIED,
    "listeners.*.tls.min_version": APPLIED,
    "listeners.*.tls.optional_networks": APPLIED,
    "listeners.*.limits.max_connections": APPLIED,
    "listeners.*.limits.max_connections_per_ip": APPLIED,
    "listeners.*.limits.messages_per_window": APPLIED,
    "listeners.*.limits.recipients_per_window": APPLIED,
    "listeners.*.limits.window": APPLIED,
    "listeners.*.auth.enabled": APPLIED,
    "listeners.*.auth.required": APPLIED,
    "listeners.*.auth.plaintext_networks": APPLIED,
    "listeners.*.milters": APPLIED,
}

#: Tables of named entries, and what adding or removing an entry takes: a route, a sender
#: route or a group comes and goes with the policy; a listener is a socket made at start
#: (one removed from the file goes on as it was until the restart).
TABLES: dict[str, str] = {"routes": APPLIED, "sender_routes": APPLIED, "groups": APPLIED,
                          "listeners": RESTART, "oauth": APPLIED,
                          "recipients": APPLIED, "milters": APPLIED}


@dataclass(frozen=True, slots=True)
class Changes:
    applied: list[str]      # dotted keys, with the real names of table entries
    restart: list[str]

    def __bool__(self) -> bool:
        return bool(self.applied or self.restart)


def classify(key: str) -> str:
    """APPLIED, RESTART or IMPLICIT_TLS for a setting's key in SETTINGS' form
    (``listeners.*.tls.mode``). A whole sub-table (``auth.ldap``) is what its settings are:
    a restart if any of them needs one. KeyError: a key the table does not know."""
    found = SETTINGS.get(key)
    if found is not None:
        return found
    below = [kind for name, kind in SETTINGS.items() if name.startswith(key + ".")]
    if not below:
        raise KeyError(key)
    return RESTART if RESTART in below else APPLIED


def _flatten(value: Any, shown: str, key: str, out: dict[str, tuple[str, Any]]) -> None:
    """Leaves of a dumped config: shown key (real names) -> (SETTINGS key, value)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{shown}.{k}" if shown else str(k), f"{key}.{k}" if key else str(k),
                     out)
    else:
        out[shown] = (key, value)


def _leaves(dumped: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for section, value in dumped.items():
        if section in TABLES:
            # Entry names may hold dots (routes."example.com"): "*" in SETTINGS' form.
            for name, entry in value.items():
                _flatten(entry, f"{section}.{name}", f"{section}.*", out)
        else:
            _flatten(value, section, section, out)
    return out


def changes(old: Config, new: Config) -> Changes:
    """The settings that differ between two configs, by what a reload does with them."""
    a, b = old.model_dump(), new.model_dump()
    applied: list[str] = []
    restart: list[str] = []
    for table, kind in TABLES.items():
        gone_or_new = sorted(set(a[table]) ^ set(b[table]))
        (applied if kind == APPLIED else restart).extend(f"{table}.{n}" for n in gone_or_new)
        for name in gone_or_new:
            a[table].pop(name, None)
            b[table].pop(name, None)
    flat_a, flat_b = _leaves(a), _leaves(b)
    for shown in sorted(set(flat_a) | set(flat_b)):
        # The key as the new config names it, else as the old one did.
        before = flat_a[shown][1] if shown in flat_a else None
        key, after = flat_b[shown] if shown in flat_b else (flat_a[shown][0], None)
        if before == after:
            continue
        kind = classify(key)
        if kind == IMPLICIT_TLS:
            kind = RESTART if (before == "implicit") != (after == "implicit") else APPLIED
        (restart if kind == RESTART else applied).append(shown)
    return Changes(applied=applied, restart=restart)
