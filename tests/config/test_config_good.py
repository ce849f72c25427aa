"""Configs that load: the embedded default, the shipped example, defaults and resolution."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest

from relaywarden.config import (
    ConfigError,
    build_policy,
    config_warnings,
    load_config,
    parse_config,
    parse_next_hop,
)
from relaywarden.config.schema import parse_size
from relaywarden.delivery.tls import TlsMode
from relaywarden.policy import Action, ClientFacts, HostnameEntry, NetworkEntry
from relaywarden.smtp.address import Address

EXAMPLE = Path(__file__).parents[2] / "examples" / "relay.example.toml"


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


MINIMAL = '[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n'


def addr(text: str | None) -> Address | None:
    if text is None:
        return None
    local, _, domain = text.rpartition("@") if "@" in text else (text, "", "")
    return Address(local=local, domain=domain, literal=domain.startswith("["), route=(), quoted=False)


# ------------------------------------------------------------------- embedded default


def test_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.source == "<default>"
    assert list(cfg.listeners) == ["default"]
    listener = cfg.listeners["default"]
    assert (listener.address, listener.port) == (IPv4Address("127.0.0.1"), 2525)
    assert listener.relay.networks == [ip_network("127.0.0.0/8"), ip_network("::1/128")]
    assert listener.relay.authenticated is False
    assert cfg.relay.hosted_domains == []
    # Relative paths of the embedded default are relative to the current directory.
    assert cfg.data_dir == tmp_path / "var"
    assert cfg.log_dir == tmp_path / "var" / "log"
    assert cfg.relay.postmaster == f"postmaster@{cfg.relay.hostname}"
    assert config_warnings(cfg) == []


DEFAULT_RELAY = [
    # ip, recipient, action, rule — closed by default: localhost only
    ("127.0.0.1", "a@gmail.com", Action.ACCEPT, "listeners.default.relay.networks[0]"),
    ("127.8.9.10", "a@gmail.com", Action.ACCEPT, "listeners.default.relay.networks[0]"),
    ("::1", "a@gmail.com", Action.ACCEPT, "listeners.default.relay.networks[1]"),
    ("::ffff:127.0.0.1", "a@gmail.com", Action.ACCEPT, "listeners.default.relay.networks[0]"),
    ("10.0.0.1", "a@gmail.com", Action.REJECT, "relay.denied"),
    ("10.0.0.1", "postmaster", Action.ACCEPT, "postmaster"),
]


@pytest.mark.parametrize(("ip", "recipient", "action", "rule"), DEFAULT_RELAY)
def test_default_policy(ip, recipient, action, rule):
    policy = build_policy(load_config(None))
    facts = ClientFacts(listener="default", ip=ip_address(ip))
    decision = policy.check_recipient(facts, None, addr(recipient))
    assert (decision.action, decision.rule) == (action, rule)


# ------------------------------------------------------------------- the shipped example


def test_example_loads_everything():
    cfg = load_config(EXAMPLE)
    assert cfg.source == str(EXAMPLE)
    # The one warning: the example's users file is for the admin to create.
    users = EXAMPLE.parent.absolute() / "users"
    assert config_warnings(cfg) == [
        f"{EXAMPLE}: auth.users_file: {users} does not exist: only [auth.ldap] users can log "
        "in on listeners.outbound.auth.enabled until it is created (relaywarden user add NAME "
        f"--file {users}; read without a reload)"]
    assert cfg.data_dir == EXAMPLE.parent.absolute() / "var"
    assert cfg.relay.hostname == "relay.example.com"
    assert cfg.relay.hosted_domains == ["example.com"]
    assert cfg.routes["example.com"].next_hops == ["[10.0.0.5]:25", "[10.0.0.6]:25"]
    assert cfg.routes["example.com"].tls is TlsMode.REQUIRED
    assert cfg.routes["branch.example.com"].hold is True
    assert cfg.routes["*"].next_hops == ["mx"]
    assert cfg.routes["*"].tls is TlsMode.OPPORTUNISTIC          # from delivery.tls
    assert list(cfg.sender_routes) == ["apps"]
    assert cfg.sender_routes["apps"].next_hops == ["smarthost.example.net:587"]
    assert cfg.sender_routes["apps"].tls is TlsMode.VERIFY
    assert cfg.delivery.helo_name == "relay.example.com"          # "" = relay.hostname
    assert cfg.delivery.retry_schedule == [600, 900, 1800, 3600, 7200, 14400]
    assert (cfg.delivery.ca_file, cfg.delivery.ndr_copy_to) == (None, None)
    assert cfg.dns.nameservers == []
    assert cfg.badmail.dir == cfg.data_dir / "badmail"
    assert cfg.badmail.notify == "postmaster@example.com"
    assert list(cfg.groups) == ["scanners", "apps"]
    assert cfg.groups["scanners"].on_violation == "badmail"
    assert set(cfg.listeners) == {"inbound", "outbound"}
    assert cfg.listeners["inbound"].groups == []
    assert cfg.listeners["inbound"].max_message_size == 50_000_000
    assert cfg.listeners["outbound"].max_message_size == 35_000_000   # from [relay]
    assert cfg.listeners["outbound"].groups == ["scanners", "apps"]


def test_example_covers_every_setting():
    import tomllib

    from relaywarden.config.schema import GroupConfig, ListenerConfig, RouteConfig

    data = tomllib.loads(EXAMPLE.read_text("utf-8"))

    def present(table: dict, model, prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if name not in table:
                missing.append(prefix + name)
            elif hasattr(field.annotation, "model_fields"):
                missing += present(table[name], field.annotation, f"{prefix}{name}.")
        return missing

    from relaywarden.config.schema import (
        BadmailConfig,
        DeliveryConfig,
        DnsConfig,
        LogConfig,
        QueueConfig,
        RelayConfig,
        ScreeningConfig,
        SenderRouteConfig,
    )

    missing = present(data["relay"], RelayConfig, "relay.")
    missing += present(data["queue"], QueueConfig, "queue.")
    missing += present(data["log"], LogConfig, "log.")
    missing += present(data["routes"]["example.com"], RouteConfig, "routes.X.")
    missing += present(data["delivery"], DeliveryConfig, "delivery.")
    missing += present(data["dns"], DnsConfig, "dns.")
    missing += present(data["badmail"], BadmailConfig, "badmail.")
    missing += present(data["screening"], ScreeningConfig, "screening.")
    missing += present(data["sender_routes"]["apps"], SenderRouteConfig, "sender_routes.apps.")
    missing += present(data["groups"]["scanners"], GroupConfig, "groups.scanners.")
    missing += present(data["listeners"]["inbound"], ListenerConfig, "listeners.inbound.")
    assert missing == []


EXAMPLE_CASES = [
    # listener, ip, verified name, user, sender, recipient, step, action, code, rule
    # Inbound: hosted example.com from anyone, nothing else.
    ("inbound", "203.0.113.9", None, None, "a@gmail.com", "boss@example.com", "recipient", Action.ACCEPT, 250, "relay.hosted_domains"),
    ("inbound", "203.0.113.9", None, None, "a@gmail.com", "x@gmail.com", "recipient", Action.REJECT, 550, "relay.denied"),
    ("inbound", "203.0.113.9", None, None, "a@gmail.com", "x%gmail.com@example.com", "recipient", Action.REJECT, 550, "address.routing"),
    ("inbound", "198.51.100.3", None, None, "a@gmail.com", "boss@example.com", "connect", Action.REJECT, 554, "listeners.inbound.access.deny[0]"),
    ("inbound", "203.0.113.9", "ppp1.dialup.example.net", None, "a@gmail.com", "boss@example.com", "connect", Action.REJECT, 554, "listeners.inbound.access.deny[1]"),
    # Inbound ignores groups: a scanner address from outside is just another client.
    ("inbound", "10.0.5.7", None, None, "a@gmail.com", "boss@example.com", "recipient", Action.ACCEPT, 250, "relay.hosted_domains"),
    # Apps relay anywhere.
    ("outbound", "10.0.0.20", None, None, "app@example.com", "customer@gmail.com", "recipient", Action.ACCEPT, 250, "listeners.outbound.relay.networks[0]"),
    ("outbound", "10.0.0.99", None, None, "app@example.com", "customer@gmail.com", "connect", Action.REJECT, 554, "listeners.outbound.access.deny[0]"),
    ("outbound", "192.0.2.1", None, None, "app@example.com", "customer@gmail.com", "connect", Action.REJECT, 554, "listeners.outbound.access.default"),
    ("outbound", "192.0.2.1", None, "alice", "alice@example.com", "customer@gmail.com", "connect", Action.REJECT, 554, "listeners.outbound.access.default"),
    # AUTH only over TLS or from auth.plaintext_networks: the outbound listener has no TLS,
    # so alice cannot log in from monitor.example.com; from 127.0.0.1 she can, and relays.
    ("outbound", "192.0.2.1", "monitor.example.com", "alice", "alice@example.com", "customer@gmail.com", "auth", Action.REJECT, 538, "listeners.outbound.auth.plaintext_networks"),
    ("outbound", "127.0.0.1", "monitor.example.com", "alice", "alice@example.com", "customer@gmail.com", "recipient", Action.ACCEPT, 250, "listeners.outbound.relay.authenticated"),
    # Scanners: example.com and subdomains, the rest to badmail.
    ("outbound", "10.0.5.7", None, None, "scan@example.com", "boss@example.com", "recipient", Action.ACCEPT, 250, "relay.hosted_domains"),
    ("outbound", "10.0.5.7", None, None, "scan@example.com", "boss@sales.example.com", "recipient", Action.ACCEPT, 250, "listeners.outbound.relay.networks[1]"),
    ("outbound", "10.0.5.7", None, None, "scan@example.com", "me@gmail.com", "recipient", Action.BADMAIL, 250, "groups.scanners.recipient_domains"),
    ("outbound", "10.0.5.7", None, None, "scan@example.com", "me@example.com.evil.com", "recipient", Action.BADMAIL, 250, "groups.scanners.recipient_domains"),
    ("outbound", "10.0.5.7", None, None, "me@gmail.com", "boss@example.com", "sender", Action.REJECT, 550, "groups.scanners.senders"),
    ("outbound", "10.0.5.7", None, None, None, "boss@example.com", "recipient", Action.ACCEPT, 250, "relay.hosted_domains"),
]


@pytest.mark.parametrize(
    ("listener", "ip", "name", "user", "sender", "recipient", "step", "action", "code", "rule"),
    EXAMPLE_CASES,
)
def test_example_policy(listener, ip, name, user, sender, recipient, step, action, code, rule):
    policy = build_policy(load_config(EXAMPLE))
    facts = ClientFacts(listener=listener, ip=ip_address(ip), verified_name=name, user=user)
    explanation = policy.explain(facts, addr(sender), addr(recipient))
    decision = getattr(explanation, step)
    assert decision is not None, explanation.render()
    assert (decision.action, decision.reply.code, decision.rule) == (action, code, rule)
    # The step before the deciding one accepted; the one after was not reached on refusal.
    if step == "recipient":
        assert explanation.sender.action is Action.ACCEPT


def test_build_policy_values():
    policy = build_policy(load_config(EXAMPLE))
    outbound = policy.listeners["outbound"]
    assert outbound.access.default is Action.REJECT
    assert outbound.access.allow[3] == HostnameEntry("monitor.example.com")
    assert outbound.access.deny == (NetworkEntry(ip_network("10.0.0.99/32")),)
    assert outbound.relay_authenticated is True
    assert [group.name for group in outbound.groups] == ["scanners", "apps"]
    scanners = outbound.groups[0]
    assert scanners.on_violation is Action.BADMAIL
    assert scanners.recipient_domains == ("example.com", "*.example.com")
    assert scanners.senders == ("example.com", "noreply@example.org", "<>")
    assert outbound.postmaster == "postmaster@example.com"
    assert policy.listeners["inbound"].groups == ()


# ------------------------------------------------------------------- resolution and defaults


def test_relative_paths_follow_the_file(tmp_path, monkeypatch):
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, '[relay]\ndata_dir = "../spool"\n[log]\ndir = "logs"\n' + MINIMAL)
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.data_dir == conf / ".." / "spool"
    assert cfg.data_dir.is_absolute()
    assert cfg.log_dir == cfg.data_dir / "logs"


def test_absolute_paths_are_kept(tmp_path):
    path = write(tmp_path, f'[relay]\ndata_dir = "{tmp_path / "q"}"\n[log]\ndir = "/var/log/rw"\n' + MINIMAL)
    cfg = load_config(path)
    assert cfg.data_dir == tmp_path / "q"
    assert cfg.log_dir == Path("/var/log/rw")


def test_relative_source_path(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("relay.toml")
    assert cfg.source == "relay.toml"
    assert cfg.data_dir == tmp_path / "var"


def test_minimal_listener_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    listener = cfg.listeners["main"]
    assert listener.banner == "ESMTP relaywarden"
    assert listener.max_message_size == 35_000_000
    assert (listener.max_recipients, listener.max_errors) == (100, 10)
    assert (listener.command_timeout, listener.data_timeout) == (300.0, 300.0)
    assert listener.groups == []
    assert listener.access.default == "allow"
    assert (listener.access.allow, listener.access.deny) == ([], [])
    assert (listener.relay.networks, listener.relay.authenticated) == ([], False)   # closed
    assert (listener.line_endings.bare_lf, listener.line_endings.normalize_networks) == ("reject", [])
    assert cfg.queue.backend == "sqlite"
    log = cfg.log
    assert (log.protocol, log.protocol_formats, log.mail) == (True, ["w3c", "json"], True)
    assert (log.rotate, log.max_size, log.keep) == ("daily", 100_000_000, 30)
    assert cfg.routes == {}
    assert cfg.sender_routes == {}


def test_listener_groups_default_to_all_in_file_order(tmp_path):
    text = (
        '[groups.b]\nusers = ["x"]\n[groups.a]\nusers = ["y"]\n[groups.c]\nusers = ["z"]\n'
        + MINIMAL
        + '[listeners.other]\naddress = "127.0.0.1"\nport = 2526\ngroups = ["c", "b"]\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.listeners["main"].groups == ["b", "a", "c"]
    # The listener chooses which groups apply; the file decides the order they are tried.
    assert cfg.listeners["other"].groups == ["b", "c"]
    policy = build_policy(cfg)
    assert [group.name for group in policy.listeners["other"].groups] == ["b", "c"]


def test_values_are_normalised(tmp_path):
    text = """
[relay]
hostname = "Relay.Example.COM."
hosted_domains = ["Example.COM.", "*.Example.org", "[IPv6:2001:DB8::25]", "bücher.example"]
[routes."Example.COM"]
next_hops = ["[10.0.0.5]", "Mail.Example.com:587", "MX", "[IPv6:2001:db8::5]:25"]
[groups.g]
networks = ["10.0.5.0/24", "2001:DB8::/32", "10.0.9.9"]
hostnames = ["*.Scan.Example.com."]
senders = ["NoReply@Example.ORG", "<>"]
[listeners.main]
address = "::"
port = 25
command_timeout = 2.5
[listeners.main.access]
allow = ["10.1.2.3", "Host.Example.com"]
[dns]
reverse_lookups = true
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.relay.hostname == "relay.example.com"
    assert cfg.relay.postmaster == "postmaster@relay.example.com"
    assert cfg.relay.hosted_domains == [
        "example.com", "*.example.org", "[ipv6:2001:db8::25]", "xn--bcher-kva.example",
    ]
    assert cfg.routes["example.com"].next_hops == [
        "[10.0.0.5]", "mail.example.com:587", "mx", "[2001:db8::5]:25",
    ]
    group = cfg.groups["g"]
    assert group.networks == [ip_network("10.0.5.0/24"), ip_network("2001:db8::/32"), ip_network("10.0.9.9/32")]
    assert group.hostnames == ["*.scan.example.com"]
    assert group.senders == ["NoReply@example.org", "<>"]
    assert group.recipient_domains is None and group.on_violation == "reject"
    listener = cfg.listeners["main"]
    assert listener.address == IPv6Address("::")
    assert listener.command_timeout == 2.5
    assert listener.access.allow == [
        NetworkEntry(ip_network("10.1.2.3/32")), HostnameEntry("host.example.com"),
    ]


SIZES = [
    (0, 0),
    (1024, 1024),
    ("1024", 1024),
    ("35MB", 35_000_000),
    ("35 MB", 35_000_000),
    ("512KiB", 524_288),
    ("1GB", 1_000_000_000),
    ("1GiB", 1_073_741_824),
    ("1.5MB", 1_500_000),
    ("10kb", 10_000),
    ("7B", 7),
]


@pytest.mark.parametrize(("text", "size"), SIZES)
def test_sizes(text, size):
    assert parse_size(text) == size


BAD_SIZES = [True, -5, "", "MB", "10 TB", "ten MB", "-1MB", 1.5]


@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_sizes(value):
    with pytest.raises(ValueError):
        parse_size(value)


NEXT_HOPS = [
    ("mx", ("mx", None)),
    ("[10.0.0.5]:25", ("[10.0.0.5]", 25)),
    ("[10.0.0.5]", ("[10.0.0.5]", None)),
    ("[2001:db8::5]:2525", ("[2001:db8::5]", 2525)),
    ("smtp.example.net", ("smtp.example.net", None)),
    ("smtp.example.net:587", ("smtp.example.net", 587)),
]


@pytest.mark.parametrize(("text", "expected"), NEXT_HOPS)
def test_next_hops(text, expected):
    assert parse_next_hop(text) == expected


@pytest.mark.parametrize("text", ["[10.0.0.5", "[host.example.com]", "host:0", "a:b:c", "", "*.example.com"])
def test_bad_next_hops(text):
    with pytest.raises(ValueError):
        parse_next_hop(text)


def test_overlapping_wildcard_bind_is_a_warning(tmp_path):
    text = (
        '[listeners.inbound]\naddress = "0.0.0.0"\nport = 25\n'
        '[listeners.outbound]\naddress = "10.0.0.1"\nport = 25\n'
        '[listeners.v6]\naddress = "::1"\nport = 25\n'
    )
    path = write(tmp_path, text)
    cfg = load_config(path)
    assert config_warnings(cfg) == [
        f"{path}: listeners.outbound.address: 10.0.0.1:25 overlaps 0.0.0.0:25 of listener "
        "'inbound'; on Linux the second bind fails with 'address in use'"
    ]


def test_parse_config_from_data(tmp_path):
    cfg = parse_config(
        {"listeners": {"x": {"address": "127.0.0.1", "port": 25}}}, source="inline", base_dir=tmp_path
    )
    assert cfg.source == "inline" and cfg.data_dir == tmp_path / "var"
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": {}}, source="inline", base_dir=tmp_path)
    assert info.value.messages == ["inline: listeners: at least one listener is required ([listeners.NAME])"]


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert list(load_config(path).listeners) == ["main"]


def test_source_is_not_a_config_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'source = "x"\n' + MINIMAL))
    assert info.value.messages == [f"{tmp_path / 'relay.toml'}: source: unknown key"]


# ------------------------------------------------------------------- [admin], [history]


def test_admin_and_history_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.admin.enabled is False
    assert (cfg.admin.address, cfg.admin.port) == (IPv4Address("127.0.0.1"), 8025)
    assert cfg.admin.users_file == tmp_path / "admin-users"     # next to the config file
    assert cfg.admin.session_timeout == 8 * 3600
    assert (cfg.admin.cert_file, cfg.admin.key_file, cfg.admin.tls) == (None, None, False)
    assert cfg.admin.metrics_token() is None
    assert cfg.admin.ldap_roles.admin == cfg.admin.ldap_roles.viewer == []
    assert (cfg.history.enabled, cfg.history.keep_days) == (True, 30)


def test_embedded_default_enables_admin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.admin.enabled is True
    assert cfg.admin.address == IPv4Address("127.0.0.1")
    assert cfg.admin.users_file == tmp_path / "admin-users"


def test_admin_on_public_address_with_tls(tmp_path):
    files = Path(__file__).parent / "bad" / "files"
    (tmp_path / "metrics.token").write_text("s3cret-token\n")
    cfg = load_config(write(tmp_path, MINIMAL + f"""
[admin]
enabled = true
address = "0.0.0.0"
port = 9443
cert_file = "{files / 'relay.crt'}"
key_file = "{files / 'relay.key'}"
session_timeout = "30m"
users_file = "etc/console-users"
metrics_token_file = "metrics.token"
[admin.ldap_roles]
admin = ["mail-admins"]
operator = ["helpdesk", "noc"]
[history]
enabled = false
keep_days = 7
"""))
    assert cfg.admin.tls is True
    assert cfg.admin.session_timeout == 1800
    assert cfg.admin.users_file == tmp_path / "etc" / "console-users"
    assert cfg.admin.metrics_token() == "s3cret-token"
    assert cfg.admin.ldap_roles.operator == ["helpdesk", "noc"]
    assert (cfg.history.enabled, cfg.history.keep_days) == (False, 7)


@pytest.mark.parametrize("text,seconds", [(90, 90.0), ("90s", 90.0), ("15m", 900.0),
                                          ("8h", 28800.0), ("1d", 86400.0), ("1.5h", 5400.0)])
def test_admin_session_timeout_forms(tmp_path, text, seconds):
    value = f'"{text}"' if isinstance(text, str) else text
    cfg = load_config(write(tmp_path, MINIMAL + f"[admin]\nsession_timeout = {value}\n"))
    assert cfg.admin.session_timeout == seconds


def test_example_documents_admin_and_history():
    import tomllib

    from relaywarden.config.schema import AdminConfig, HistoryConfig, LdapRoleConfig

    data = tomllib.loads(EXAMPLE.read_text("utf-8"))
    assert set(AdminConfig.model_fields) == set(data["admin"])
    assert set(LdapRoleConfig.model_fields) == set(data["admin"]["ldap_roles"])
    assert set(HistoryConfig.model_fields) == set(data["history"])
