"""IIS 6 SMTP configurations as the Windows server stores them, for the import tests.

Built from Microsoft's metabase property reference (names, flag values, units) and the
ADDRESS_CHECK layout of the binary IP lists (relaywarden/importer/ipsec.py). One value is
not built but copied as published: the RelayIpList IIS writes for "only 127.0.0.1"
(REAL_RELAY_127), which the encoder must reproduce byte for byte.
"""

from __future__ import annotations

import json
import struct
from ipaddress import IPv4Network as Net

from relaywarden.importer.ipsec import IpSecList, NameEntry, encode

# The relay list for "Only the list below: 127.0.0.1", as WMI lists it (DWORDs, then the
# mask 255.255.255.255 and the address 127.0.0.1): published with Salt's win_smtp_server
# module and in the PowerShell relay scripts admins share.
REAL_RELAY_127 = struct.pack(
    "<19I", 0x80000018, 0x80000020, 0x8000003C, 0x80000044, 1, 76, 0, 0, 1, 1,
    2, 2, 4, 0, 0x8000004C, 0, 0, 0, 0) + bytes([255, 255, 255, 255, 127, 0, 0, 1])

# Connection control: "All except the list below" with a single host, a /24 and a name.
IPSEC_ALL_EXCEPT = IpSecList(
    deny_networks=[Net("127.0.0.66/32"), Net("127.0.9.0/24")],
    deny_names=[NameEntry("spam.example.net"), NameEntry("one.example.org", exact=True)])
# Connection control: "Only the list below".
IPSEC_ONLY = IpSecList(grant_networks=[Net("127.0.0.0/8"), Net("10.1.2.3/32")],
                       grant_names=[NameEntry("apps.example.com")])
# Relay: "Only the list below": a single host, a /24 (mask 255.255.255.0), a /20 (a mask
# with a partial last byte, 255.255.240.0) and a domain entry.
RELAY_ONLY = IpSecList(grant_networks=[Net("127.0.0.2/32"), Net("127.0.1.0/24"), Net("10.16.0.0/20")],
                       grant_names=[NameEntry("printers.example.com")])
# Relay: "All except the list below": a single host and a /24, and a domain entry.
RELAY_ALL_EXCEPT = IpSecList(deny_networks=[Net("127.0.0.5/32"), Net("127.0.7.0/24")],
                             deny_names=[NameEntry("guest.example.com")])


def metabase(*, port: int = 25, address: str = "", relay: IpSecList | None | bytes = RELAY_ONLY,
             ipsec: IpSecList | None = IPSEC_ALL_EXCEPT, auth_flags: int = 3,
             extra: dict[str, str] | None = None, servers: tuple[int, ...] = (1,),
             domains: bool = True, smart_host: str = "[127.0.0.1]", remote_port: int = 1) -> str:
    """A MetaBase.xml with the service key, virtual server(s) and remote/local domains."""
    def attrs(props: dict[str, str]) -> str:
        return "".join(f'\n\t\t{key}="{value}"' for key, value in props.items())

    service = {
        "AdminACL": "496f0000...",
        "BadMailDirectory": r"C:\Inetpub\mailroot\Badmail",
        "ConnectionTimeout": "600",
        "DropDirectory": r"C:\Inetpub\mailroot\Drop",
        "HopCount": "15",
        "LogFileDirectory": r"C:\WINDOWS\System32\LogFiles",
        "LogFilePeriod": "1",
        "MaxBatchedMessages": "0",
        "MaxMessageSize": "2097152",
        "MaxRecipients": "100",
        "MaxSessionSize": "10485760",
        "PickupDirectory": r"C:\Inetpub\mailroot\Pickup",
        "QueueDirectory": r"C:\Inetpub\mailroot\Queue",
        "SmtpLocalDelayExpireMinutes": "720",
        "SmtpLocalNDRExpireMinutes": "2880",
        "SmtpRemoteDelayExpireMinutes": "720",
        "SmtpRemoteNDRExpireMinutes": "2880",
        "SmtpRemoteProgressiveRetry": "15,30,60,240",
    }
    server = {
        "AccessSSLFlags": "0",
        "AlwaysUseSsl": "FALSE",
        "AuthFlags": str(auth_flags),
        "DefaultDomain": "relay.corp.example",
        "EnableReverseDnsLookup": "FALSE",
        "FullyQualifiedDomainName": "relay.corp.example",
        "LogExtFileFlags": "1414",
        "LogType": "1",
        "MasqueradeDomain": "corp.example",
        "MaxConnections": "2000000000",
        "MaxOutConnections": "1000",
        "MaxOutConnectionsPerDomain": "100",
        "RelayForAuth": "TRUE",
        "RemoteSmtpPort": str(remote_port),
        "RemoteTimeout": "600",
        "RouteAction": "264",
        "RouteUserName": "relay@isp.example.net",
        "RoutePassword": "496f0000SECRETSECRET",
        "SendBadTo": "postmaster@corp.example",
        "SendNdrTo": "ndr-copies@corp.example",
        "ServerBindings": f"{address}:{port}:",
        "ServerComment": "Default SMTP Virtual Server",
        "SmartHost": smart_host,
        "SmartHostType": "2",
        "SmtpRemoteProgressiveRetry": "10,10,10,15",
        "AllowVerify": "FALSE",
    }
    if isinstance(relay, bytes):
        server["RelayIpList"] = relay.hex()
    elif relay is not None:
        server["RelayIpList"] = encode(relay).hex()
    if ipsec is not None:
        server["IPSecurity"] = encode(ipsec).hex()
    server.update(extra or {})
    parts = ['<?xml version ="1.0"?>',
             '<configuration xmlns="urn:microsoft-catalog:XML_Metabase_V64_0">', "<MBProperty>",
             f'<IIsSmtpService\tLocation ="/LM/SmtpSvc"{attrs(service)}\n\t>', "</IIsSmtpService>"]
    for number in servers:
        parts += [f'<IIsSmtpServer\tLocation ="/LM/SmtpSvc/{number}"{attrs(server)}\n\t>',
                  "</IIsSmtpServer>"]
        if domains:
            parts += _domains(number)
    parts += ["</MBProperty>", "</configuration>", ""]
    return "\n".join(parts)


def _domains(number: int) -> list[str]:
    base = f"/LM/SmtpSvc/{number}/Domain"
    entries = [
        # The default local domain (SMTP_DEFAULT | SMTP_DROP-ish: 0x40 + 0x10).
        ("relay.corp.example", {"RouteAction": "80"}),
        # An alias (local) domain.
        ("alias.corp.example", {"RouteAction": "16"}),
        # Inbound: "allow incoming mail to be relayed to this domain", forwarded to
        # Exchange (SMTP_DOMAIN_RELAY | SMTP_SMARTHOST | SMTP_SSL).
        ("corp.example", {"RouteAction": str(0x1000 | 0x2 | 0x4),
                          "RouteActionString": "[127.0.0.1]"}),
        # A branch office collecting by ETRN/ATRN (SMTP_ETRN_CMD | SMTP_SMARTHOST), with
        # TURN accounts, and outbound Basic auth (SMTP_SASL | SMTP_AUTH_CLEARTEXT).
        ("branch.example.com", {"RouteAction": str(0x200 | 0x2 | 0x8 | 0x100),
                                "RouteActionString": "mail.branch.example.com",
                                "AuthTurnList": "branch\n\t\t\tbranch2",
                                "RouteUserName": "relay-branch",
                                "RoutePassword": "496f0000ANOTHERSECRET"}),
        # A plain remote domain delivered by DNS.
        ("partner.example.org", {"RouteAction": "0"}),
    ]
    out = []
    for name, props in entries:
        body = "".join(f'\n\t\t{key}="{value}"' for key, value in props.items())
        out += [f'<IIsSmtpDomain\tLocation ="{base}/{name}"{body}\n\t>', "</IIsSmtpDomain>"]
    return out


def wmi_export(*, port: int = 25, relay: IpSecList | None = RELAY_ONLY,
               ipsec: IpSecList = IPSEC_ALL_EXCEPT) -> str:
    """What scripts/export-iis-smtp.ps1 writes for the same server (WMI's shapes: numbers,
    booleans, byte arrays, ServerBindings as "IP:port:host" strings, IPSecurity as the
    IIsIPSecuritySetting lists)."""
    server = {
        "Name": "SmtpSvc/1", "ServerComment": "Default SMTP Virtual Server",
        "ServerBindings": [f":{port}:"], "FullyQualifiedDomainName": "relay.corp.example",
        "MaxMessageSize": 2097152, "MaxRecipients": 100, "MaxSessionSize": 10485760,
        "ConnectionTimeout": 600, "MaxConnections": 2000000000, "HopCount": 15,
        "AuthFlags": 3, "AccessSSLFlags": 0, "RelayForAuth": True,
        "SmartHost": "[127.0.0.1]", "SmartHostType": 2, "RemoteSmtpPort": 1,
        "RouteAction": 264, "RouteUserName": "relay@isp.example.net",
        "SmtpRemoteProgressiveRetry": "10,10,10,15", "SmtpRemoteDelayExpireMinutes": 720,
        "SmtpRemoteNDRExpireMinutes": 2880, "SendNdrTo": "ndr-copies@corp.example",
        "SendBadTo": "postmaster@corp.example", "BadMailDirectory": r"C:\Inetpub\mailroot\Badmail",
        "PickupDirectory": r"C:\Inetpub\mailroot\Pickup", "DefaultDomain": "relay.corp.example",
        "EnableReverseDnsLookup": False, "LogType": 1, "LogExtFileFlags": 1414,
        "MasqueradeDomain": "corp.example", "AlwaysUseSsl": False,
        "RelayIpList": None if relay is None else list(encode(relay)),
    }

    def ip_lines(nets):
        return [f"{n.network_address}, {n.netmask}" for n in nets]

    return json.dumps({
        "exportedBy": "export-iis-smtp.ps1", "computer": "WIN2019",
        "servers": [server],
        "domains": [
            {"Name": "SmtpSvc/1/Domain/corp.example", "RouteAction": 0x1006,
             "RouteActionString": "[127.0.0.1]"},
            {"Name": "SmtpSvc/1/Domain/branch.example.com", "RouteAction": 0x30A,
             "RouteActionString": "mail.branch.example.com", "AuthTurnList": ["branch", "branch2"],
             "RouteUserName": "relay-branch"},
        ],
        "ipSecurity": [{
            "Name": "SmtpSvc/1", "GrantByDefault": ipsec.grant_by_default,
            "IPGrant": ip_lines(ipsec.grant_networks), "IPDeny": ip_lines(ipsec.deny_networks),
            "DomainGrant": [e.name for e in ipsec.grant_names],
            "DomainDeny": [e.name for e in ipsec.deny_names],
        }],
    }, indent=2)
