"""`relaywarden import iis`: the IIS 6 SMTP configuration as a relaywarden config.

Through the real command line (import, then `config check`), and a real relay started from
an imported config: it lets relay and connect exactly the clients IIS did.
"""

from __future__ import annotations

import smtplib
import struct
import subprocess
import sys
import tomllib
from ipaddress import IPv4Network as Net
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from iis_fixtures import (  # noqa: E402
    IPSEC_ALL_EXCEPT, IPSEC_ONLY, REAL_RELAY_127, RELAY_ALL_EXCEPT, RELAY_ONLY, metabase, wmi_export,
)

from relaywarden.importer.ipsec import IpSecError, IpSecList, NameEntry, decode, encode  # noqa: E402
from support.relay import free_port, start_relay  # noqa: E402


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaywarden", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def imported(tmp_path: Path, source_text: str, name: str = "MetaBase.xml", *extra: str):
    (tmp_path / name).write_text(source_text)
    done = cli("import", "iis", name, "-o", "relay.toml", *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    text = (tmp_path / "relay.toml").read_text()
    report = (tmp_path / "relay.toml.report.txt").read_text()
    return tomllib.loads(text), text, report


# ------------------------------------------------------------------ the binary lists


def test_the_relay_list_iis_writes_decodes_and_is_reproduced_byte_for_byte():
    value = decode(REAL_RELAY_127)
    assert value.grant_networks == [Net("127.0.0.1/32")]
    assert not value.deny_networks and not value.grant_names and not value.deny_names
    assert not value.grant_by_default
    assert encode(value) == REAL_RELAY_127


@pytest.mark.parametrize("value", [IPSEC_ALL_EXCEPT, IPSEC_ONLY, RELAY_ONLY, RELAY_ALL_EXCEPT,
                                   IpSecList()])
def test_lists_round_trip(value):
    back = decode(encode(value))
    assert sorted(back.grant_networks) == sorted(value.grant_networks)
    assert sorted(back.deny_networks) == sorted(value.deny_networks)
    assert back.grant_names == value.grant_names and back.deny_names == value.deny_names
    assert back.grant_by_default == value.grant_by_default


def test_masks_with_a_partial_byte_are_read_from_the_mask():
    value = decode(encode(IpSecList(grant_networks=[Net("10.16.0.0/20")])))
    assert value.grant_networks == [Net("10.16.0.0/20")]
    raw = bytearray(encode(IpSecList(grant_networks=[Net("10.16.0.0/20")])))
    mask_at = raw.index(bytes([255, 255, 240, 0]))
    raw[mask_at + 2] = 0x0F                          # 255.255.15.0: not contiguous
    with pytest.raises(IpSecError, match="not contiguous"):
        decode(bytes(raw))


def test_every_truncation_is_a_clear_error_never_a_crash():
    blob = encode(RELAY_ONLY)
    for cut in range(len(blob)):
        try:
            decode(blob[:cut])
        except IpSecError as exc:
            assert str(exc)
        # A cut inside the last name's bytes can still be whole up to its NUL: never an
        # exception of another kind, which is what this loop proves.


def test_domain_entries_keep_the_exact_flag():
    value = decode(encode(IpSecList(deny_names=[NameEntry("a.example"), NameEntry("b.example", True)])))
    assert value.deny_names == [NameEntry("a.example"), NameEntry("b.example", True)]


# ------------------------------------------------------------------ import, config check


def test_metabase_import_maps_every_property_and_passes_config_check(tmp_path):
    cfg, text, report = imported(tmp_path, metabase())
    check = cli("config", "check", "relay.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "relay.toml: ok; listeners: vs1 (0.0.0.0:25)" in check.stdout

    relay = cfg["relay"]
    assert relay["hostname"] == "relay.corp.example"             # FullyQualifiedDomainName
    assert relay["max_message_size"] == 2097152                   # MaxMessageSize (inherited)
    assert relay["max_hops"] == 15                                # HopCount
    assert relay["hosted_domains"] == ["alias.corp.example", "corp.example", "relay.corp.example"]
    vs1 = cfg["listeners"]["vs1"]
    assert (vs1["address"], vs1["port"]) == ("0.0.0.0", 25)       # ServerBindings ":25:"
    assert vs1["max_recipients"] == 100                           # MaxRecipients
    assert vs1["command_timeout"] == vs1["data_timeout"] == 600   # ConnectionTimeout
    assert vs1["limits"]["max_connections"] == 0                  # MaxConnections (unlimited)
    # IPSecurity, all except: single host, a /24, a domain and a domain without subdomains.
    assert vs1["access"] == {"default": "allow", "deny": [
        "127.0.0.66", "127.0.9.0/24", "spam.example.net", "*.spam.example.net", "one.example.org"]}
    assert cfg["dns"]["reverse_lookups"] is True                  # needed by those names
    # RelayIpList, only the list below: host, /24, /20; RelayForAuth.
    assert vs1["relay"] == {"networks": ["127.0.0.2/32", "127.0.1.0/24", "10.16.0.0/20"],
                            "authenticated": True}
    # AuthFlags 3 = anonymous + basic.
    assert vs1["auth"] == {"enabled": True, "required": False,
                           "plaintext_networks": ["0.0.0.0/0", "::/0"]}
    assert cfg["auth"]["users_file"] == "users"
    d = cfg["delivery"]
    assert d["retry_schedule"] == [600, 600, 600, 900]           # SmtpRemoteProgressiveRetry
    assert d["expire_after"] == 2880 * 60                         # SmtpRemoteNDRExpireMinutes
    assert d["delay_notice_after"] == 720 * 60                    # SmtpRemoteDelayExpireMinutes
    assert d["mx_port"] == 1                                      # RemoteSmtpPort
    assert d["tls"] == "opportunistic"                            # AlwaysUseSsl FALSE
    assert (d["max_concurrent"], d["per_destination"]) == (1000, 100)
    assert d["connect_timeout"] == d["command_timeout"] == 600    # RemoteTimeout
    assert d["ndr_copy_to"] == "ndr-copies@corp.example"          # SendNdrTo
    assert cfg["badmail"] == {"notify": "postmaster@corp.example", "dir": "badmail"}
    assert cfg["log"] == {"protocol": True, "protocol_formats": ["w3c", "json"]}   # LogType
    routes = cfg["routes"]
    assert routes["*"] == {"next_hops": ["[127.0.0.1]"]}          # SmartHost, type 2
    assert routes["corp.example"] == {"next_hops": ["[127.0.0.1]"], "tls": "required"}
    assert routes["branch.example.com"] == {
        "next_hops": ["mail.branch.example.com"], "hold": True, "etrn": True,
        "atrn_users": ["branch", "branch2"]}                      # ETRN_CMD, AuthTurnList
    assert routes["partner.example.org"] == {"next_hops": ["mx"]}
    assert routes["relay.corp.example"] == {"hold": True}          # the local (Drop) domain
    assert routes["alias.corp.example"] == {"hold": True}

    # Outbound security: the user name commented out, the password nowhere.
    assert '# username = "relay@isp.example.net"' in text
    assert '# password_file = "smarthost.password"' in text
    assert '# username = "relay-branch"' in text
    for secret in ("SECRETSECRET", "ANOTHERSECRET"):
        assert secret not in text and secret not in report
    assert "never imported: write the password in the first line of smarthost.password" in report
    # TLS not required; pickup commented out with how to turn it on.
    assert "# [pickup]" in text

    # Every property of the fixture is in the report, mapped or with a reason.
    for prop in ("ServerBindings", "FullyQualifiedDomainName", "MaxMessageSize", "MaxRecipients",
                 "MaxSessionSize", "ConnectionTimeout", "MaxConnections", "IPSecurity",
                 "RelayIpList", "RelayForAuth", "AuthFlags", "AccessSSLFlags", "SmartHost",
                 "SmartHostType", "RemoteSmtpPort", "RouteUserName", "RoutePassword",
                 "RouteAction", "SmtpRemoteProgressiveRetry", "SmtpRemoteDelayExpireMinutes",
                 "SmtpRemoteNDRExpireMinutes", "SmtpLocalDelayExpireMinutes", "SendNdrTo",
                 "SendBadTo", "BadMailDirectory", "MasqueradeDomain", "EnableReverseDnsLookup",
                 "LogType", "LogExtFileFlags", "LogFileDirectory", "LogFilePeriod", "HopCount",
                 "PickupDirectory", "DropDirectory", "QueueDirectory", "MaxBatchedMessages",
                 "DefaultDomain", "ServerComment", "AlwaysUseSsl", "MaxOutConnections",
                 "MaxOutConnectionsPerDomain", "RemoteTimeout", "AllowVerify",
                 "RouteActionString", "AuthTurnList"):
        assert f" {prop}" in report, prop
    assert "MasqueradeDomain" in report and "NOT MAPPED: relaywarden never rewrites" in report
    assert "MaxSessionSize" in report and "NOT MAPPED: relaywarden has no limit" in report
    assert "printers.example.com" in report      # the relay list's domain entry: why not mapped


def test_integrated_windows_and_tls_required_are_reported(tmp_path):
    # AuthFlags 6: basic + integrated, no anonymous; AccessSSLFlags 8: TLS required.
    cfg, text, report = imported(tmp_path, metabase(auth_flags=6, extra={"AccessSSLFlags": "8"}))
    assert cli("config", "check", "relay.toml", cwd=tmp_path).returncode == 0
    assert cfg["listeners"]["vs1"]["auth"] == {"enabled": True, "required": True}
    assert "(Integrated Windows authentication)" in report and "not NTLM" in report
    assert '# [listeners.vs1.tls]' in text and '# mode = "required"' in text


def test_smart_host_after_direct_delivery_and_open_relay_warning(tmp_path):
    cfg, _, report = imported(tmp_path, metabase(relay=IpSecList(),
                                                 extra={"SmartHostType": "1"}))
    assert cfg["routes"]["*"]["next_hops"] == ["mx", "[127.0.0.1]"]
    assert cfg["listeners"]["vs1"]["relay"]["networks"] == ["0.0.0.0/0", "::/0"]
    assert "open relay" in report


def test_relay_list_absent_means_nobody_relays(tmp_path):
    cfg, _, _ = imported(tmp_path, metabase(relay=None))
    assert cfg["listeners"]["vs1"]["relay"]["networks"] == []


def test_wmi_export_gives_the_same_config(tmp_path):
    cfg, _, report = imported(tmp_path, wmi_export(), "export.json")
    assert cli("config", "check", "relay.toml", cwd=tmp_path).returncode == 0
    vs1 = cfg["listeners"]["vs1"]
    assert vs1["relay"]["networks"] == ["127.0.0.2/32", "127.0.1.0/24", "10.16.0.0/20"]
    assert vs1["access"]["default"] == "allow"
    assert vs1["access"]["deny"][:2] == ["127.0.0.66", "127.0.9.0/24"]
    assert cfg["routes"]["branch.example.com"]["atrn_users"] == ["branch", "branch2"]
    assert cfg["routes"]["corp.example"] == {"next_hops": ["[127.0.0.1]"], "tls": "required"}
    assert cfg["relay"]["hosted_domains"] == ["corp.example", "relay.corp.example"]
    assert "IIsSmtpServerSetting SmtpSvc/1 MaxSessionSize" in report


@pytest.mark.parametrize("mangle, says", [
    (lambda xml: xml.replace('RelayIpList="', 'RelayIpList="zz', 1), "RelayIpList: not a hex string"),
    (lambda xml: xml.replace('RelayIpList="' + encode(RELAY_ONLY).hex(),
                             'RelayIpList="' + encode(RELAY_ONLY).hex()[:60], 1),
     "/LM/SmtpSvc/1 RelayIpList: truncated"),
    (lambda xml: xml.replace('IPSecurity="' + encode(IPSEC_ALL_EXCEPT).hex(),
                             'IPSecurity="' + encode(IPSEC_ALL_EXCEPT).hex()[:40], 1),
     "/LM/SmtpSvc/1 IPSecurity: truncated"),
    (lambda xml: xml.replace('MaxMessageSize="2097152"', 'MaxMessageSize="2 MB"'),
     "/LM/SmtpSvc (inherited) MaxMessageSize: '2 MB' is not a number"),
    (lambda xml: xml.replace('ServerBindings=":', 'ServerBindings="x', 1), "ServerBindings"),
    (lambda xml: xml.replace('SmtpRemoteProgressiveRetry="10,10,10,15"',
                             'SmtpRemoteProgressiveRetry="10,ten"'), "SmtpRemoteProgressiveRetry"),
    (lambda xml: xml[: len(xml) // 2], "not well-formed XML"),
])
def test_a_malformed_source_is_a_clear_error_naming_the_property(tmp_path, mangle, says):
    (tmp_path / "MetaBase.xml").write_text(mangle(metabase()))
    done = cli("import", "iis", "MetaBase.xml", "-o", "relay.toml", cwd=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: MetaBase.xml: ")
    assert says in done.stderr
    assert not (tmp_path / "relay.toml").exists()


def test_several_virtual_servers_need_a_choice(tmp_path):
    (tmp_path / "MetaBase.xml").write_text(metabase(servers=(1, 2)))
    done = cli("import", "iis", "MetaBase.xml", cwd=tmp_path)
    assert done.returncode == 2
    assert "2 SMTP virtual servers (1, 2); choose one with --virtual-server N" in done.stderr
    done = cli("import", "iis", "MetaBase.xml", "--virtual-server", "2", cwd=tmp_path)
    assert done.returncode == 0
    assert "[listeners.vs2]" in done.stdout


def test_a_truncated_json_export_is_a_clear_error(tmp_path):
    (tmp_path / "export.json").write_text(wmi_export()[:200])
    done = cli("import", "iis", "export.json", cwd=tmp_path)
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ the imported relay


def _rcpt(port: int, source: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=15) as c:
        c.ehlo("app.test")
        assert c.mail("app@corp.example")[0] == 250
        return c.rcpt("someone@elsewhere.example")[0]


def _connect(port: int, source: str) -> int:
    try:
        with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=15) as c:
            return c.noop()[0]
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code


@pytest.mark.parametrize("relay_list, relays, refused", [
    # "Only the list below": a host and a /24 may relay, nobody else.
    (RELAY_ONLY, ["127.0.0.2", "127.0.1.9"], ["127.0.0.3", "127.0.2.1", "127.0.0.1"]),
    # "All except the list below": everybody but a host and a /24.
    (RELAY_ALL_EXCEPT, ["127.0.0.2", "127.0.0.6", "127.0.1.9"], ["127.0.0.5", "127.0.7.4"]),
])
def test_an_imported_relay_restriction_refuses_and_allows_what_iis_did(tmp_path, relay_list,
                                                                       relays, refused):
    port = free_port()
    ipsec = IpSecList(deny_networks=[Net("127.0.0.66/32")])   # no names: no DNS in the test
    imported(tmp_path, metabase(address="127.0.0.1", port=port, relay=relay_list, ipsec=ipsec,
                                domains=False))
    relay = start_relay(tmp_path / "relay.toml", tmp_path / "var", {"vs1": port})
    try:
        for source in relays:
            assert _rcpt(port, source) == 250, source
        for source in refused:
            assert _rcpt(port, source) == 550, source
        assert _connect(port, "127.0.0.66") == 554      # IPSecurity: denied at connect
        assert _connect(port, "127.0.0.67") == 250
    finally:
        relay.stop()
