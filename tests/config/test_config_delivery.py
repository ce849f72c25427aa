"""The send half of the config: [delivery], [dns], [badmail], routes and sender_routes
that load, their defaults, resolution, secrets and warnings."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from relaywarden.config import ConfigError, config_warnings, load_config
from relaywarden.delivery.tls import TlsMode

LISTENER = '[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n'


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text + LISTENER, "utf-8")
    return path


def load(tmp_path: Path, text: str):
    return load_config(write(tmp_path, text))


# ------------------------------------------------------------------- defaults


def test_defaults(tmp_path):
    cfg = load(tmp_path, '[relay]\nhostname = "relay.example.com"\n')
    d = cfg.delivery
    assert d.helo_name == "relay.example.com"
    assert (d.max_concurrent, d.per_destination) == (50, 10)
    assert d.retry_schedule == [600, 900, 1800, 3600, 7200, 14400]
    assert (d.expire_after, d.delay_notice_after) == (172_800, 43_200)
    assert d.mx_port == 25
    assert (d.connect_timeout, d.command_timeout, d.data_timeout) == (30, 300, 600)
    assert d.tls is TlsMode.OPPORTUNISTIC
    assert (d.ca_file, d.ndr_copy_to) == (None, None)
    assert (cfg.dns.nameservers, cfg.dns.port, cfg.dns.timeout) == ([], 53, 5)
    assert cfg.badmail.dir == cfg.data_dir / "badmail"
    assert cfg.badmail.dir.is_absolute()
    assert (cfg.badmail.notify, cfg.badmail.notify_interval, cfg.badmail.command) == (None, 300, [])
    assert cfg.sender_routes == {}


def test_empty_strings_mean_unset(tmp_path):
    text = (
        '[relay]\nhostname = "relay.example.com"\n'
        '[delivery]\nhelo_name = ""\nca_file = ""\nndr_copy_to = " "\n'
        '[badmail]\nnotify = ""\n'
        '[routes."*"]\nnext_hops = ["mx"]\nusername = ""\npassword_file = ""\npassword = ""\n'
    )
    cfg = load(tmp_path, text)
    assert cfg.delivery.helo_name == "relay.example.com"
    assert (cfg.delivery.ca_file, cfg.delivery.ndr_copy_to, cfg.badmail.notify) == (None, None, None)
    route = cfg.routes["*"]
    assert (route.username, route.password_file, route.password) == (None, None, None)


def test_values_are_resolved(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = """
[delivery]
helo_name = "Out.Example.COM."
retry_schedule = [60, 120.5]
expire_after = 3600
delay_notice_after = 0
tls = "Verify"
ca_file = "certs/ca.pem"
ndr_copy_to = "NDR@Example.com"
[dns]
nameservers = ["10.0.0.2", "2001:DB8::53"]
port = 5353
timeout = 1.5
[badmail]
dir = "/srv/badmail"
notify = "admin@example.com"
notify_interval = 60
command = ["/usr/local/bin/hook", "{path}"]
"""
    cfg = load(tmp_path, text)
    d = cfg.delivery
    assert d.helo_name == "out.example.com"
    assert d.retry_schedule == [60.0, 120.5]
    assert d.delay_notice_after is None            # 0 = never
    assert d.tls is TlsMode.VERIFY
    assert d.ca_file == tmp_path / "certs" / "ca.pem"
    assert d.ndr_copy_to == "NDR@example.com"
    assert cfg.dns.nameservers == [ip_address("10.0.0.2"), ip_address("2001:db8::53")]
    assert (cfg.dns.port, cfg.dns.timeout) == (5353, 1.5)
    assert cfg.badmail.dir == Path("/srv/badmail")
    assert (cfg.badmail.notify, cfg.badmail.notify_interval) == ("admin@example.com", 60)


def test_helo_name_address_literal(tmp_path):
    cfg = load(tmp_path, '[delivery]\nhelo_name = "[IPv6:2001:DB8::25]"\n')
    assert cfg.delivery.helo_name == "[ipv6:2001:db8::25]"


def test_route_tls_defaults_to_delivery_tls(tmp_path):
    text = (
        '[delivery]\ntls = "required"\n'
        '[routes."a.example"]\nnext_hops = ["[10.0.0.5]"]\n'
        '[routes."b.example"]\nnext_hops = ["[10.0.0.6]"]\ntls = "none"\n'
        '[sender_routes.s]\nusers = ["u"]\nnext_hops = ["smart.example.net:587"]\n'
    )
    cfg = load(tmp_path, text)
    assert cfg.routes["a.example"].tls is TlsMode.REQUIRED
    assert cfg.routes["b.example"].tls is TlsMode.NONE
    assert cfg.sender_routes["s"].tls is TlsMode.REQUIRED


def test_hold_route_needs_no_next_hops(tmp_path):
    cfg = load(tmp_path, '[routes."branch.example.com"]\nhold = true\n')
    route = cfg.routes["branch.example.com"]
    assert (route.hold, route.next_hops) == (True, [])


def test_sender_routes_keep_file_order(tmp_path):
    text = (
        '[groups.apps]\nnetworks = ["10.0.0.0/24"]\n'
        '[sender_routes.zeta]\nusers = ["a"]\nnext_hops = ["z.example.net"]\n'
        '[sender_routes.alpha]\ngroups = ["apps"]\nsender_domains = ["Example.COM", "*.example.com", "[10.0.0.9]"]\n'
        'next_hops = ["a.example.net:2525"]\nimplicit_tls = false\n'
    )
    cfg = load(tmp_path, text)
    assert list(cfg.sender_routes) == ["zeta", "alpha"]
    assert cfg.sender_routes["alpha"].sender_domains == ["example.com", "*.example.com", "[10.0.0.9]"]


# ------------------------------------------------------------------- badmail command


def test_badmail_argv(tmp_path):
    text = '[badmail]\ncommand = ["/usr/bin/hook", "--file={path}", "{id}", "{reason}", "{ literal }", "{{id}}"]\n'
    cfg = load(tmp_path, text)
    argv = cfg.badmail.argv(path=Path("/var/badmail/X1.eml"), queue_id="X1", reason="relay {id} denied")
    # One pass: "{id}" inside the reason is not substituted again; unknown-looking text with
    # spaces or doubled braces is left alone.
    assert argv == ["/usr/bin/hook", "--file=/var/badmail/X1.eml", "X1", "relay {id} denied", "{ literal }", "{X1}"]


def test_badmail_no_command(tmp_path):
    assert load(tmp_path, "").badmail.argv(path="/x.eml", queue_id="1", reason="r") == []


# ------------------------------------------------------------------- secrets


def test_password_file_is_read_relative_to_the_config(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "smarthost.password").write_text("\ufeff  p@ss word \r\nignored\n", "utf-8")
    text = (
        '[routes."*"]\nnext_hops = ["smart.example.net:587"]\n'
        'username = "relay@example.net"\npassword_file = "smarthost.password"\n'
    )
    path = write(etc, text)
    monkeypatch.chdir("/")
    cfg = load_config(path)
    route = cfg.routes["*"]
    assert route.password_file == etc / "smarthost.password"
    # The first line without its line ending (and without Notepad's byte order mark);
    # other spaces are part of the password.
    assert route.password.get_secret_value() == "  p@ss word "
    assert "p@ss" not in repr(cfg) and "p@ss" not in str(route)
    assert "p@ss" not in str(cfg.model_dump())
    assert config_warnings(cfg) == []


def test_inline_password_loads_with_a_warning(tmp_path):
    text = (
        '[routes."*"]\nnext_hops = ["smart.example.net:587"]\nusername = "relay"\npassword = "hunter2"\n'
        '[sender_routes.apps]\nusers = ["svc"]\nnext_hops = ["[10.0.0.7]:25"]\ntls = "none"\n'
        'username = "relay"\npassword = "hunter3"\nauth_without_tls = true\n'
    )
    path = write(tmp_path, text)
    cfg = load_config(path)
    assert cfg.routes["*"].password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg)
    assert config_warnings(cfg) == [
        f'{path}: routes."*".password: the password is written in the config file; '
        "prefer password_file (a file only the relay can read)",
        f"{path}: sender_routes.apps.password: the password is written in the config file; "
        "prefer password_file (a file only the relay can read)",
    ]


def test_secret_is_not_in_error_messages(tmp_path):
    (tmp_path / "pw").write_text("topsecret\n")
    text = (
        '[routes."*"]\nnext_hops = ["smart.example.net:587"]\n'
        'password = "hunter2"\npassword_file = "pw"\nimplicit_tls = "yes"\n'
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    text = str(info.value)
    assert "hunter2" not in text and "topsecret" not in text
    assert 'routes."*".implicit_tls: expected true or false' in text


# ------------------------------------------------------------------- warnings

HOSTED = [
    # hosted domains, routes, hosted domains warned about
    (["example.com"], {"example.com": "[10.0.0.5]"}, []),
    (["example.com"], {}, ["example.com"]),
    (["example.com"], {"*": "mx"}, ["example.com"]),                     # "*" does not count
    (["example.com"], {"*": "smart.example.net"}, ["example.com"]),
    (["sales.example.com"], {"*.example.com": "[10.0.0.5]"}, []),          # wildcard covers it
    (["example.com"], {"*.example.com": "[10.0.0.5]"}, ["example.com"]),   # strictly below only
    (["*.example.org"], {"*.example.org": "[10.0.0.5]"}, []),
    (["*.example.org"], {"*.org": "[10.0.0.5]"}, []),
    (["*.example.org"], {"example.org": "[10.0.0.5]"}, ["*.example.org"]),
    (["[10.0.0.1]"], {}, ["[10.0.0.1]"]),
    (["[10.0.0.1]"], {"[10.0.0.1]": "[10.0.0.5]"}, []),
    (["a.example", "b.example"], {"b.example": "[10.0.0.5]"}, ["a.example"]),
]


@pytest.mark.parametrize(("hosted", "routes", "warned"), HOSTED)
def test_hosted_domain_without_route(tmp_path, hosted, routes, warned):
    text = "[relay]\nhosted_domains = [" + ", ".join(f'"{d}"' for d in hosted) + "]\n"
    for key, hop in routes.items():
        text += f'[routes."{key}"]\nnext_hops = ["{hop}"]\n'
    path = write(tmp_path, text)
    found = config_warnings(load_config(path))
    assert [line.split(": ", 2)[1] for line in found] == [
        f"relay.hosted_domains[{hosted.index(domain)}]" for domain in warned
    ]
    for line, domain in zip(found, warned):
        assert f"{domain!r} has no route (routes.\"{domain}\")" in line
        assert "possibly back to this relay" in line


def test_hosted_warning_text(tmp_path):
    path = write(tmp_path, '[relay]\nhosted_domains = ["example.com", "[10.0.0.1]"]\n')
    assert config_warnings(load_config(path)) == [
        f"{path}: relay.hosted_domains[0]: 'example.com' has no route (routes.\"example.com\"); "
        "its mail would be delivered by MX lookup, possibly back to this relay",
        f"{path}: relay.hosted_domains[1]: '[10.0.0.1]' has no route (routes.\"[10.0.0.1]\"); "
        "its mail would be delivered to the address literal [10.0.0.1] itself, possibly back to this relay",
    ]
