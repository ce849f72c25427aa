"""`relaywarden import iis`: an IIS 6 SMTP virtual server as a relaywarden config.

Two sources give the same facts:

- the metabase file ``%windir%\\System32\\inetsrv\\MetaBase.xml``: an ``IIsSmtpServer``
  element at ``/LM/SmtpSvc/N`` (its properties as attributes; it inherits what it does not
  set from the ``IIsSmtpService`` element at ``/LM/SmtpSvc``) and ``IIsSmtpDomain``
  elements at ``/LM/SmtpSvc/N/Domain/NAME``. Binary values are hex strings, lists are
  one item a line;
- the JSON that ``scripts/export-iis-smtp.ps1`` writes on the Windows server from WMI
  (``root\\MicrosoftIISv2``: IIsSmtpServerSetting, IIsSmtpDomainSetting,
  IIsIPSecuritySetting), the way in on Windows Server 2012-2022.

``load()`` reads a source into an ``IisServer``; ``convert()`` maps it onto the config
schema (config/schema.py) and returns the commented TOML and the report. Every property
found appears in the report: what it became (the dotted config key) or why not. The
outbound password is never read into the result.

The property names, values and flags are Microsoft's metabase property reference (IIS 6.0,
Windows Server 2003): RouteAction flags (SMTP_DROP 0x1 ... SMTP_DOMAIN_RELAY 0x1000),
SmartHostType (0 none, 1 after direct delivery, 2 always), AuthFlags (MD_AUTH_ANONYMOUS 1,
MD_AUTH_BASIC 2, MD_AUTH_NT 4), SmtpRemoteProgressiveRetry (minutes), the *ExpireMinutes.
The binary lists are importer/ipsec.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from ipaddress import IPv4Network, collapse_addresses, ip_address
from pathlib import Path
from typing import Any

from relaywarden.importer.ipsec import IpSecError, IpSecList, NameEntry, decode

# RouteAction flags (metabase reference, RouteAction property).
SMTP_DROP = 0x1
SMTP_SMARTHOST = 0x2
SMTP_SSL = 0x4
SMTP_SASL = 0x8
SMTP_ALIAS = 0x10
SMTP_DELIVER = 0x20
SMTP_DEFAULT = 0x40
SMTP_AUTH_NTLM = 0x80
SMTP_AUTH_CLEARTEXT = 0x100
SMTP_ETRN_CMD = 0x200
SMTP_DOMAIN_RELAY = 0x1000
SMTP_DISABLE_ETRN = 0x8000

MD_AUTH_ANONYMOUS = 1
MD_AUTH_BASIC = 2
MD_AUTH_NT = 4
MD_ACCESS_SSL = 0x8            # AccessSSLFlags: "Require secure channel (TLS)"
#: MaxConnections at or above this is IIS's "not limited".
IIS_UNLIMITED = 2_000_000_000

#: Properties every metabase key has that say nothing about mail.
_INTERNAL = {"Location", "KeyType", "AdminACL", "AdminACLBin", "ServerState", "ServerAutoStart",
             "Win32Error", "Name", "SettingID", "Caption", "Description", "__CLASS",
             "ServerSize", "ServerListenBacklog", "ServerListenTimeout", "ConnectionTimeoutFlags"}


class IisImportError(Exception):
    """The source cannot be read as an IIS SMTP configuration; the text names the source,
    the metabase key and the property."""


@dataclass
class IisServer:
    source: str
    number: int
    props: dict[str, Any]                    # effective properties (service + server)
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    ipsecurity: IpSecList | None = None      # connection control (None: not set)
    relay: IpSecList | None = None           # relay restrictions (None: not set)
    origin: dict[str, str] = field(default_factory=dict)   # property -> where it was read

    def where(self, prop: str) -> str:
        return f"{self.origin.get(prop, f'/LM/SmtpSvc/{self.number}')} {prop}"


# ------------------------------------------------------------------------------ reading


def load(path: Path, number: int | None = None) -> IisServer:
    """Read MetaBase.xml or the PowerShell export; ``number``: the virtual server N
    (default: the only one, else an error listing them)."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IisImportError(f"{source}: cannot read: {exc.strerror or exc}") from None
    head = raw.lstrip()[:1]
    if head in (b"{", b"["):
        return _from_json(raw, source, number)
    if raw.startswith(b"\xef\xbb\xbf") and raw[3:].lstrip()[:1] == b"{":
        return _from_json(raw[3:], source, number)
    if head == b"<" or raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return _from_xml(raw, source, number)
    raise IisImportError(f"{source}: neither MetaBase.xml (XML) nor an export of "
                         "scripts/export-iis-smtp.ps1 (JSON)")


def _choose(found: list[int], number: int | None, source: str) -> int:
    if not found:
        raise IisImportError(f"{source}: no SMTP virtual server (IIsSmtpServer at /LM/SmtpSvc/N)")
    if number is None:
        if len(found) > 1:
            raise IisImportError(f"{source}: {len(found)} SMTP virtual servers "
                                 f"({', '.join(map(str, sorted(found)))}); choose one with "
                                 "--virtual-server N")
        return found[0]
    if number not in found:
        raise IisImportError(f"{source}: no SMTP virtual server {number} (found: "
                             f"{', '.join(map(str, sorted(found)))})")
    return number


_SERVER_PATH = re.compile(r"^/LM/SmtpSvc/(\d+)/?$", re.IGNORECASE)
_DOMAIN_PATH = re.compile(r"^/LM/SmtpSvc/(\d+)/Domain/([^/]+)/?$", re.IGNORECASE)
_SERVICE_PATH = re.compile(r"^/LM/SmtpSvc/?$", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _from_xml(raw: bytes, source: str, number: int | None) -> IisServer:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise IisImportError(f"{source}: not well-formed XML: {exc}") from None
    service: dict[str, Any] = {}
    servers: dict[int, dict[str, Any]] = {}
    domains: dict[int, dict[str, dict[str, Any]]] = {}
    for element in root.iter():
        location = element.get("Location", "").strip()
        if not location:
            continue
        props = {key: value for key, value in element.attrib.items()}
        # Properties without a friendly name are <Custom Name=... Value=.../> children.
        for child in element:
            custom = child.get("Name")
            if _local(child.tag) == "Custom" and custom:
                props[custom] = child.get("Value", "")
        kind = _local(element.tag)
        if kind == "IIsSmtpService" and _SERVICE_PATH.match(location):
            service = props
        elif kind == "IIsSmtpServer" and (found := _SERVER_PATH.match(location)):
            servers[int(found[1])] = props
        elif kind == "IIsSmtpDomain" and (found := _DOMAIN_PATH.match(location)):
            domains.setdefault(int(found[1]), {})[found[2].lower()] = props
    chosen = _choose(list(servers), number, source)
    props = {key: value for key, value in service.items() if key not in _INTERNAL}
    origin = {key: "/LM/SmtpSvc (inherited)" for key in props}
    props.update(servers[chosen])
    origin.update({key: f"/LM/SmtpSvc/{chosen}" for key in servers[chosen]})
    server = IisServer(source=source, number=chosen, props=props, origin=origin,
                       domains=domains.get(chosen, {}))
    for name in ("IPSecurity", "RelayIpList"):
        if name in props:
            text = str(props[name]).strip()
            try:
                data = bytes.fromhex(re.sub(r"\s+", "", text))
            except ValueError:
                raise IisImportError(f"{source}: {server.where(name)}: not a hex string "
                                     "(a binary metabase value)") from None
            value = _ipsec(data, source, server.where(name))
            if name == "IPSecurity":
                server.ipsecurity = value
            else:
                server.relay = value
    return server


def _ipsec(data: bytes, source: str, where: str) -> IpSecList | None:
    if not data:
        return IpSecList()      # an empty value: no entry at all
    try:
        return decode(data)
    except IpSecError as exc:
        raise IisImportError(f"{source}: {where}: {exc}") from None


def _from_json(raw: bytes, source: str, number: int | None) -> IisServer:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IisImportError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
        raise IisImportError(f"{source}: expected the object scripts/export-iis-smtp.ps1 writes "
                             '({"servers": [...], "domains": [...], "ipSecurity": [...]})')

    def server_number(item: Any, what: str) -> int:
        name = item.get("Name") if isinstance(item, dict) else None
        found = re.match(r"^SmtpSvc/(\d+)", str(name or ""), re.IGNORECASE)
        if found is None:
            raise IisImportError(f"{source}: {what}: Name {name!r} is not SmtpSvc/N")
        return int(found[1])

    servers = {server_number(item, f"servers[{i}]"): item for i, item in enumerate(data["servers"])}
    chosen = _choose(list(servers), number, source)
    props = {key: value for key, value in servers[chosen].items()}
    where = f"IIsSmtpServerSetting SmtpSvc/{chosen}"
    server = IisServer(source=source, number=chosen, props=props,
                       origin={key: where for key in props})
    for i, item in enumerate(data.get("domains") or []):
        name = str(item.get("Name", "")) if isinstance(item, dict) else ""
        found = re.match(r"^SmtpSvc/(\d+)/Domain/(.+)$", name, re.IGNORECASE)
        if found is None:
            raise IisImportError(f"{source}: domains[{i}]: Name {name!r} is not SmtpSvc/N/Domain/NAME")
        if int(found[1]) == chosen:
            server.domains[found[2].lower()] = dict(item)
    if "RelayIpList" in props:
        value = props["RelayIpList"]
        if value is None:
            server.relay = None
        else:
            server.relay = _ipsec(_json_bytes(value, source, server.where("RelayIpList")),
                                  source, server.where("RelayIpList"))
    for i, item in enumerate(data.get("ipSecurity") or []):
        if isinstance(item, dict) and server_number(item, f"ipSecurity[{i}]") == chosen:
            server.ipsecurity = _wmi_ipsecurity(item, source, f"IIsIPSecuritySetting SmtpSvc/{chosen}")
            server.props["IPSecurity"] = item
            server.origin["IPSecurity"] = f"IIsIPSecuritySetting SmtpSvc/{chosen}"
    return server


def _json_bytes(value: Any, source: str, where: str) -> bytes:
    """WMI gives binary values as arrays of numbers (0-255); a hex string is taken too."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise IisImportError(f"{source}: {where}: not a hex string") from None
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise IisImportError(f"{source}: {where}: expected an array of bytes (0-255)")


def _wmi_ipsecurity(item: dict, source: str, where: str) -> IpSecList:
    """IIsIPSecuritySetting: GrantByDefault, IPGrant/IPDeny ("10.0.0.0, 255.0.0.0"),
    DomainGrant/DomainDeny (names)."""
    result = IpSecList()
    for key, target in (("IPGrant", result.grant_networks), ("IPDeny", result.deny_networks)):
        for index, text in enumerate(item.get(key) or []):
            parts = [p.strip() for p in str(text).split(",")]
            try:
                mask = parts[1] if len(parts) > 1 and parts[1] else "255.255.255.255"
                target.append(IPv4Network(f"{parts[0]}/{mask}"))
            except ValueError as exc:
                raise IisImportError(f"{source}: {where} {key}[{index}]: {text!r}: {exc}") from None
    for key, names in (("DomainGrant", result.grant_names), ("DomainDeny", result.deny_names)):
        for index, text in enumerate(item.get(key) or []):
            name = str(text).strip().lower()
            if not name:
                raise IisImportError(f"{source}: {where} {key}[{index}]: empty name")
            names.append(NameEntry(name))
    grant = item.get("GrantByDefault")
    if grant is not None and not isinstance(grant, bool):
        raise IisImportError(f"{source}: {where} GrantByDefault: expected true or false")
    if grant is False and not (result.grant_networks or result.grant_names):
        # "Only the list below" with nothing listed: everybody refused.
        result.grant_networks = []
        result.deny_networks = [IPv4Network("0.0.0.0/0")]
    return result


# ------------------------------------------------------------------------------ values


class _Props:
    """Typed reads of the server's properties; every read marks the property as handled."""

    def __init__(self, server: IisServer, props: dict[str, Any], where: str | None = None) -> None:
        self.server = server
        self.props = props
        self.used: set[str] = set()
        self._where = where

    def where(self, name: str) -> str:
        return f"{self._where} {name}" if self._where else self.server.where(name)

    def error(self, name: str, message: str) -> IisImportError:
        return IisImportError(f"{self.server.source}: {self.where(name)}: {message}")

    def has(self, name: str) -> bool:
        return name in self.props and self.props[name] is not None

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.props.get(name)

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        return str(value).strip()

    def integer(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return int(value)
        try:
            number = int(str(value).strip(), 0) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise self.error(name, f"{value!r} is not a number") from None
        return number & 0xFFFFFFFF if number < 0 and number >= -(1 << 31) else number

    def flag(self, name: str) -> bool | None:
        value = self.raw(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "-1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise self.error(name, f"{value!r} is not TRUE or FALSE")

    def items(self, name: str) -> list[str]:
        value = self.raw(name)
        if value is None:
            return []
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
        # MetaBase.xml writes a list one item a line; an XML parser hands the attribute
        # over with its line breaks normalised to spaces (XML 1.0 3.3.3). No item of the
        # lists read here (bindings, user names) can contain white space.
        return [item for item in re.split(r"\s+", str(value)) if item]


# ------------------------------------------------------------------------------ the plan


@dataclass
class Entry:
    key: str
    value: Any
    comment: str = ""
    disabled: bool = False     # written commented out (needs something the admin must add)


@dataclass
class Plan:
    tables: dict[str, list[Entry]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)     # table -> comment above it
    report: list[tuple[str, str, str]] = field(default_factory=list)   # (setting, value, what)
    warnings: list[str] = field(default_factory=list)

    def set(self, table: str, key: str, value: Any, comment: str = "", *,
            disabled: bool = False) -> str:
        entries = self.tables.setdefault(table, [])
        for entry in entries:
            if entry.key == key:
                entry.value, entry.comment, entry.disabled = value, comment or entry.comment, disabled
                break
        else:
            entries.append(Entry(key, value, comment, disabled))
        return ".".join(_q(part) for part in (*_split(table), key))

    def mapped(self, setting: str, value: Any, keys: str) -> None:
        self.report.append((setting, _show(value), keys))

    def unmapped(self, setting: str, value: Any, why: str) -> None:
        self.report.append((setting, _show(value), f"NOT MAPPED: {why}"))


def _show(value: Any) -> str:
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\r", " ").replace("\n", " | ")
    return text if len(text) <= 70 else text[:67] + "..."


def _q(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)     # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(value)


def render(plan: Plan, header: list[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header] + [""]
    order = ["relay", "dns", "log", "delivery", "badmail", "auth", "routes", "listeners", "pickup"]
    tables = sorted(plan.tables.items(), key=lambda item: (
        order.index(_split(item[0])[0]) if _split(item[0])[0] in order else len(order),
        _split(item[0])[0] == "routes" and _split(item[0])[1] != "*"))
    for table, entries in tables:
        if plan.notes.get(table):
            lines += [f"# {line}" for line in plan.notes[table].splitlines()]
        all_disabled = entries and all(entry.disabled for entry in entries)
        head = "[" + ".".join(_q(part) for part in _split(table)) + "]"
        lines.append(("# " if all_disabled else "") + head)
        for entry in entries:
            text = f"{_q(entry.key)} = {_value(entry.value)}"
            if entry.disabled:
                text = "# " + text
            if entry.comment:
                text = f"{text:<44} # {entry.comment}"
            lines.append(text)
        lines.append("")
    return "\n".join(lines)


def _split(table: str) -> list[str]:
    # Table names are written with a "|" between parts so that domain names keep dots.
    return table.split("|")


def render_report(server: IisServer, plan: Plan, output: str) -> str:
    out = [f"relaywarden import iis: {server.source}, SMTP virtual server {server.number} -> {output}",
           ""]
    width = max((len(setting) for setting, _, _ in plan.report), default=10)
    for setting, value, what in plan.report:
        shown = f" = {value}" if value else ""
        out.append(f"{setting:<{width}}{shown}\n{'':<4}-> {what}")
    if plan.warnings:
        out += ["", "Warnings:"] + [f"  - {w}" for w in plan.warnings]
    not_mapped = sum(1 for _, _, what in plan.report if what.startswith("NOT MAPPED"))
    out += ["", f"{len(plan.report)} IIS settings found: {len(plan.report) - not_mapped} mapped, "
            f"{not_mapped} not mapped (each says why)."]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ mapping


def _hop(host: str, port: int | None, props: _Props, name: str) -> str:
    """An IIS smart host ("mail.example.net" or "[10.0.0.5]") as a next hop."""
    text = host.strip()
    if not text:
        raise props.error(name, "empty host name")
    if text.startswith("[") and text.endswith("]"):
        try:
            ip_address(text[1:-1])
        except ValueError:
            raise props.error(name, f"{text!r}: not an IP address in brackets") from None
    elif not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise props.error(name, f"{text!r} is not a host name or [IP address]")
    return text if port in (None, 25) else f"{text}:{port}"


def _access_names(entries: list[NameEntry]) -> list[str]:
    """An IIS domain entry matches that host and every host below it (unless the entry
    is marked exact); relaywarden writes the two as "name" and "*.name"."""
    out = []
    for entry in entries:
        out.append(entry.name)
        if not entry.exact:
            out.append(f"*.{entry.name}")
    return out


def _complement(networks: list[IPv4Network]) -> list[IPv4Network]:
    """Every IPv4 address except ``networks``, as few networks as possible."""
    remaining = [IPv4Network("0.0.0.0/0")]
    for excluded in collapse_addresses(networks):
        nxt: list[IPv4Network] = []
        for net in remaining:
            if excluded.subnet_of(net):
                nxt.extend(net.address_exclude(excluded))
            elif not net.subnet_of(excluded):
                nxt.append(net)
        remaining = nxt
    return sorted(collapse_addresses(remaining))


def _listener_endpoints(props: _Props, plan: Plan) -> list[tuple[str, int]]:
    bindings = props.items("ServerBindings")
    endpoints = []
    for index, binding in enumerate(bindings):
        # "IP:port:hostheader"; an empty IP is every address.
        parts = binding.rsplit(":", 2) if binding.count(":") >= 2 else None
        if parts is None or not parts[1].strip().isdigit():
            raise props.error("ServerBindings", f"line {index + 1} {binding!r} is not IP:port:")
        address = parts[0].strip() or "0.0.0.0"
        try:
            ip_address(address)
        except ValueError:
            raise props.error("ServerBindings", f"line {index + 1}: {address!r} is not an IP address") from None
        port = int(parts[1])
        if not 1 <= port <= 65535:
            raise props.error("ServerBindings", f"line {index + 1}: port {port} is not in 1..65535")
        endpoints.append((address, port))
    if not endpoints:
        endpoints = [("0.0.0.0", 25)]
    return endpoints


def convert(server: IisServer, *, output_dir: Path | None = None) -> tuple[str, Plan]:
    """(TOML text, plan) for ``server``; ``render_report(server, plan, ...)`` words the plan."""
    plan = Plan()
    p = _Props(server, server.props)
    n = server.number
    lname = f"vs{n}"

    # --- relay ----------------------------------------------------------------------------
    plan.notes["relay"] = "Names and sizes."
    fqdn = p.text("FullyQualifiedDomainName")
    if fqdn:
        plan.mapped(p.where("FullyQualifiedDomainName"), fqdn,
                    plan.set("relay", "hostname", fqdn.lower().rstrip("."), "IIS FullyQualifiedDomainName"))
    plan.set("relay", "data_dir", "var", "queue, logs and badmail (relative to this file)")
    size = p.integer("MaxMessageSize")
    if size is not None:
        plan.mapped(p.where("MaxMessageSize"), size,
                    plan.set("relay", "max_message_size", size, "IIS MaxMessageSize (bytes; 0 = unlimited)"))
    hops = p.integer("HopCount")
    if hops is not None:
        if hops >= 1:
            plan.mapped(p.where("HopCount"), hops, plan.set("relay", "max_hops", hops, "IIS HopCount"))
        else:
            plan.unmapped(p.where("HopCount"), hops, "must be >= 1; the relaywarden default 30 applies")

    # --- listeners ------------------------------------------------------------------------
    endpoints = _listener_endpoints(p, plan)
    names = [lname if i == 0 else f"{lname}_{i + 1}" for i in range(len(endpoints))]
    comment = p.text("ServerComment")
    p.raw("ServerBindings")
    listener_keys = []
    for name, (address, port) in zip(names, endpoints):
        table = f"listeners|{name}"
        if comment and name == names[0]:
            plan.notes[table] = f'IIS SMTP virtual server {n}: "{comment}"'
        plan.set(table, "address", address)
        plan.set(table, "port", port)
        listener_keys.append(f"listeners.{name}.address/port")
    plan.mapped(p.where("ServerBindings"), p.items("ServerBindings") or "(none: :25:)",
                ", ".join(listener_keys))
    if comment:
        plan.mapped(p.where("ServerComment"), comment, f"a comment above [listeners.{names[0]}]")

    def each(sub: str, key: str, value: Any, note: str = "", *, disabled: bool = False) -> str:
        for name in names:
            plan.set(f"listeners|{name}|{sub}" if sub else f"listeners|{name}", key, value, note,
                     disabled=disabled)
        return f"listeners.{names[0]}{'.' + sub if sub else ''}.{key}" + (
            f" (and {len(names) - 1} more listener(s))" if len(names) > 1 else "")

    recipients = p.integer("MaxRecipients")
    if recipients is not None:
        if recipients >= 1:
            plan.mapped(p.where("MaxRecipients"), recipients,
                        each("", "max_recipients", recipients, "IIS MaxRecipients"))
        else:
            plan.mapped(p.where("MaxRecipients"), recipients,
                        each("", "max_recipients", 100000, "IIS: not limited") + " = 100000 (IIS 0: not limited)")
    timeout = p.integer("ConnectionTimeout")
    if timeout is not None and timeout > 0:
        plan.mapped(p.where("ConnectionTimeout"), timeout,
                    each("", "command_timeout", timeout, "IIS ConnectionTimeout (seconds)") + ", "
                    + each("", "data_timeout", timeout, "IIS ConnectionTimeout (seconds)"))
    elif timeout is not None:
        plan.unmapped(p.where("ConnectionTimeout"), timeout, "0: relaywarden's 300 s default applies")

    # Limits: connections.
    connections = p.integer("MaxConnections")
    if connections is not None:
        limit = 0 if connections >= IIS_UNLIMITED or connections <= 0 else connections
        limit_keys = each("limits", "max_connections", limit, "IIS MaxConnections; 0 = unlimited")
        if limit:
            limit_keys += ", " + each("limits", "max_connections_per_ip", min(50, limit),
                                      "at most max_connections")
        plan.mapped(p.where("MaxConnections"), connections, limit_keys)
    for prop, why in (
        ("MaxSessionSize", "relaywarden has no limit on the bytes of one session; "
                           "relay.max_message_size limits each message"),
        ("MaxBatchedMessages", "relaywarden does not limit messages per connection; "
                               "listeners.NAME.limits.messages_per_window limits them per client "
                               "address and time window"),
    ):
        if p.has(prop):
            plan.unmapped(p.where(prop), p.raw(prop), why)

    # Connection control.
    if server.ipsecurity is not None or p.has("IPSecurity"):
        p.raw("IPSecurity")
        ipsec = server.ipsecurity or IpSecList()
        default = "allow" if ipsec.grant_by_default else "deny"
        allow = [str(net) if net.prefixlen < 32 else str(net.network_address)
                 for net in ipsec.grant_networks] + _access_names(ipsec.grant_names)
        deny = [str(net) if net.prefixlen < 32 else str(net.network_address)
                for net in ipsec.deny_networks] + _access_names(ipsec.deny_names)
        if deny == ["0.0.0.0/0"] and not allow:
            deny = []
        keys = [each("access", "default", default,
                     "IIS: " + ("all except the list below" if default == "allow"
                                else "only the list below"))]
        if allow:
            keys.append(each("access", "allow", allow))
        if deny:
            keys.append(each("access", "deny", deny))
        shown = (f"{'grant' if ipsec.grant_by_default else 'deny'} by default; grant "
                 f"{allow or 'none'}; deny {deny or 'none'}")
        plan.mapped(server.where("IPSecurity"), shown, ", ".join(keys))
        if ipsec.grant_names or ipsec.deny_names:
            plan.set("dns", "reverse_lookups", True,
                     "needed by the host-name entries in listeners.*.access")
            plan.warnings.append(
                "IPSecurity has domain entries: they match a client's verified reverse DNS "
                "name (PTR and forward lookup agree), so dns.reverse_lookups = true was set")

    # Relay restrictions.
    relay_auth = p.flag("RelayForAuth")
    if server.relay is None and not p.has("RelayIpList"):
        networks: list[str] = []
        plan.mapped(server.where("RelayIpList"), "(not set: only the list below, empty)",
                    each("relay", "networks", networks, "IIS: nobody may relay by address"))
    else:
        p.raw("RelayIpList")
        relay = server.relay
        if relay is None:
            networks = []
            shown = "(empty: only the list below)"
        elif relay.empty:
            networks = ["0.0.0.0/0", "::/0"]
            shown = "(no entry: all except the list below = everybody)"
            plan.warnings.append("RelayIpList grants everybody (all except an empty list): the "
                                 "imported listener relays for every client, an open relay. "
                                 "Narrow listeners.*.relay.networks before going live.")
        elif not relay.grant_by_default:
            networks = [str(net) for net in relay.grant_networks]
            shown = f"only the list below: {networks}"
            if relay.grant_names:
                plan.unmapped(server.where("RelayIpList") + " (domain entries)",
                              [e.name for e in relay.grant_names],
                              "relaywarden grants relaying by network or by SMTP AUTH, not by "
                              "host name; these hosts may NOT relay until their networks are "
                              "added to listeners.*.relay.networks")
        else:
            excluded = relay.deny_networks
            networks = [str(net) for net in _complement(excluded)]
            shown = f"all except the list below: {[str(net) for net in excluded]}"
            plan.warnings.append(
                "RelayIpList is \"all except the list below\": every other IPv4 client may relay "
                "(written as the networks around the excluded ones). Check that this is wanted.")
            if relay.deny_names:
                plan.unmapped(server.where("RelayIpList") + " (domain entries)",
                              [e.name for e in relay.deny_names],
                              "relaywarden cannot refuse relaying by host name: these hosts MAY "
                              "relay (they are in the networks above); refuse them by address in "
                              "listeners.*.access.deny if they must not")
        plan.mapped(server.where("RelayIpList"), shown,
                    each("relay", "networks", networks,
                         "IIS RelayIpList" if len(networks) < 8 else ""))
    if relay_auth is not None:
        plan.mapped(p.where("RelayForAuth"), relay_auth,
                    each("relay", "authenticated", relay_auth,
                         "IIS: allow computers that authenticate to relay"))

    # Authentication and TLS.
    auth = p.integer("AuthFlags")
    ssl_flags = p.integer("AccessSSLFlags") or 0
    tls_required = bool(ssl_flags & MD_ACCESS_SSL)
    if auth is not None:
        basic = bool(auth & MD_AUTH_BASIC)
        anonymous = bool(auth & MD_AUTH_ANONYMOUS)
        keys = [each("auth", "enabled", basic, "IIS: Basic authentication")]
        if basic:
            keys.append(each("auth", "required", not anonymous,
                             "IIS: anonymous access " + ("allowed" if anonymous else "off")))
            if not tls_required:
                keys.append(each("auth", "plaintext_networks", ["0.0.0.0/0", "::/0"],
                                 "IIS took Basic without TLS"))
                plan.warnings.append(
                    "Basic authentication without TLS was allowed by IIS: "
                    "listeners.*.auth.plaintext_networks lets every client send its password in "
                    "clear, as before. Add a certificate ([listeners.*.tls]) and narrow it.")
            plan.set("auth", "users_file", "users",
                     "relaywarden user add NAME --file users (or [auth.ldap] for AD)")
            keys.append("auth.users_file")
            plan.warnings.append(
                "IIS checked Basic logins against Windows accounts: create the users with "
                "`relaywarden user add NAME --file users` beside this config, or configure "
                "[auth.ldap] for Active Directory (README \"Authentication\")")
        plan.mapped(p.where("AuthFlags"), f"{auth} (anonymous={anonymous}, basic={basic}, "
                    f"integrated={bool(auth & MD_AUTH_NT)})", ", ".join(keys))
        if auth & MD_AUTH_NT:
            plan.unmapped(p.where("AuthFlags") + " (Integrated Windows authentication)", "NTLM",
                          "relaywarden offers AUTH PLAIN and LOGIN (over TLS) against local users "
                          "or LDAP/AD, not NTLM/GSSAPI; clients must use Basic")
    if p.has("DefaultLogonDomain"):
        plan.unmapped(p.where("DefaultLogonDomain"), p.text("DefaultLogonDomain"),
                      "the Windows domain for Basic logins: configure [auth.ldap] "
                      "user_dn_template = \"{user}@DOMAIN\" for Active Directory")
    if p.has("AccessSSLFlags"):
        if tls_required:
            each("tls", "mode", "required", "IIS: require secure channel (TLS)", disabled=True)
            each("tls", "cert_file", "relay.crt", "PEM certificate and chain", disabled=True)
            each("tls", "key_file", "relay.key", "PEM key, unencrypted", disabled=True)
            plan.mapped(p.where("AccessSSLFlags"), ssl_flags,
                        f"listeners.{names[0]}.tls.mode = \"required\" (COMMENTED OUT: export the "
                        "certificate from Windows as PEM, name it in cert_file/key_file, uncomment)")
            plan.warnings.append("TLS was required: until the certificate is in place the "
                                 "imported listener runs without TLS (see [listeners.*.tls])")
        else:
            plan.mapped(p.where("AccessSSLFlags"), ssl_flags,
                        f"listeners.{names[0]}.tls.mode stays \"none\" (TLS not required)")

    # --- delivery -------------------------------------------------------------------------
    retry = p.text("SmtpRemoteProgressiveRetry")
    if retry:
        try:
            minutes = [int(part) for part in retry.split(",") if part.strip()]
        except ValueError:
            raise p.error("SmtpRemoteProgressiveRetry", f"{retry!r} is not minutes separated by commas") from None
        if not minutes or any(m <= 0 for m in minutes):
            raise p.error("SmtpRemoteProgressiveRetry", f"{retry!r}: every interval must be > 0 minutes")
        plan.mapped(p.where("SmtpRemoteProgressiveRetry"), retry,
                    plan.set("delivery", "retry_schedule", [m * 60 for m in minutes],
                             "IIS retry intervals (minutes x 60)"))
    expire = p.integer("SmtpRemoteNDRExpireMinutes")
    delay = p.integer("SmtpRemoteDelayExpireMinutes")
    if expire is not None:
        plan.mapped(p.where("SmtpRemoteNDRExpireMinutes"), expire,
                    plan.set("delivery", "expire_after", expire * 60, "IIS expiration timeout"))
    if delay is not None:
        value = 0 if expire is not None and delay >= expire else delay * 60
        plan.mapped(p.where("SmtpRemoteDelayExpireMinutes"), delay,
                    plan.set("delivery", "delay_notice_after", value,
                             "IIS delay notification" + ("; not before expiry: never" if value == 0 else "")))
    for prop in ("SmtpLocalDelayExpireMinutes", "SmtpLocalNDRExpireMinutes"):
        if p.has(prop):
            plan.unmapped(p.where(prop), p.raw(prop),
                          "relaywarden has one retry schedule: a Drop route (IIS's local "
                          "delivery) follows [delivery] like every route")
    remote_port = p.integer("RemoteSmtpPort")
    if remote_port is not None:
        plan.mapped(p.where("RemoteSmtpPort"), remote_port,
                    plan.set("delivery", "mx_port", remote_port, "IIS outbound TCP port"))
    if p.has("RemoteSmtpSecurePort"):
        plan.unmapped(p.where("RemoteSmtpSecurePort"), p.raw("RemoteSmtpSecurePort"),
                      "IIS used it for TLS from the first byte; relaywarden writes the port "
                      "into each next hop (\"host:465\" with implicit_tls = true)")
    always_tls = p.flag("AlwaysUseSsl")
    if always_tls is not None:
        plan.mapped(p.where("AlwaysUseSsl"), always_tls,
                    plan.set("delivery", "tls", "required" if always_tls else "opportunistic",
                             "IIS outbound TLS encryption" if always_tls else "STARTTLS when offered"))
    out_conn = p.integer("MaxOutConnections")
    if out_conn is not None and out_conn > 0:
        plan.mapped(p.where("MaxOutConnections"), out_conn,
                    plan.set("delivery", "max_concurrent", min(out_conn, 10000),
                             "IIS limit of outbound connections"))
    per_domain = p.integer("MaxOutConnectionsPerDomain")
    if per_domain is not None and per_domain > 0:
        plan.mapped(p.where("MaxOutConnectionsPerDomain"), per_domain,
                    plan.set("delivery", "per_destination", min(per_domain, 10000),
                             "IIS limit of connections per domain"))
    remote_timeout = p.integer("RemoteTimeout")
    if remote_timeout is not None and remote_timeout > 0:
        plan.mapped(p.where("RemoteTimeout"), remote_timeout,
                    plan.set("delivery", "connect_timeout", remote_timeout, "IIS outbound time-out") + ", "
                    + plan.set("delivery", "command_timeout", remote_timeout, "IIS outbound time-out"))
    ndr = p.text("SendNdrTo")
    if ndr:
        plan.mapped(p.where("SendNdrTo"), ndr,
                    plan.set("delivery", "ndr_copy_to", ndr, "IIS: send copy of NDR to"))
    elif p.has("SendNdrTo"):
        plan.mapped(p.where("SendNdrTo"), "(empty)", "delivery.ndr_copy_to stays unset")

    # Smart host and outbound security: the route of everything else.
    smart = p.text("SmartHost")
    smart_type = p.integer("SmartHostType")
    default_hops = ["mx"]
    if smart:
        hop = _hop(smart, None, p, "SmartHost")
        if smart_type == 1:
            default_hops = ["mx", hop]
            what = "direct delivery (MX) first, then the smart host"
        else:
            default_hops = [hop]
            what = "always the smart host"
        plan.mapped(p.where("SmartHost"), smart,
                    plan.set("routes|*", "next_hops", default_hops, f"IIS smart host: {what}"))
    if smart_type is not None:
        plan.mapped(p.where("SmartHostType"), smart_type,
                    "routes.\"*\".next_hops order (0: MX, 1: MX then smart host, 2: smart host)")
    if "routes|*" not in plan.tables:
        plan.set("routes|*", "next_hops", default_hops, "IIS: direct delivery by MX")
    _outbound_auth(p, plan, "routes|*", 'routes."*"', output_dir,
                   p.integer("RouteAction") or 0, "smarthost.password")
    if p.has("RouteAction"):
        plan.mapped(p.where("RouteAction"), p.raw("RouteAction"),
                    "outbound security of the virtual server: TLS -> routes.\"*\".tls, "
                    "Basic -> routes.\"*\".username (see RouteUserName)")

    # Badmail.
    bad_to = p.text("SendBadTo")
    if bad_to:
        plan.mapped(p.where("SendBadTo"), bad_to,
                    plan.set("badmail", "notify", bad_to, "IIS: send copy of bad mail to"))
    elif p.has("SendBadTo"):
        plan.mapped(p.where("SendBadTo"), "(empty)", "badmail.notify stays unset")
    if p.has("BadMailDirectory"):
        plan.set("badmail", "dir", "badmail", "below relay.data_dir")
        plan.mapped(p.where("BadMailDirectory"), p.text("BadMailDirectory"),
                    "badmail.dir = \"badmail\" below relay.data_dir (a Windows path is no path "
                    "here; badmail is written as .eml files there)")

    # Masquerade, reverse DNS.
    if p.has("MasqueradeDomain"):
        plan.unmapped(p.where("MasqueradeDomain"), p.text("MasqueradeDomain"),
                      "relaywarden never rewrites the envelope sender; set it in the "
                      "applications or on the smart host")
    rdns = p.flag("EnableReverseDnsLookup")
    if rdns is not None:
        if not rdns and plan.tables.get("dns"):
            plan.mapped(p.where("EnableReverseDnsLookup"), rdns,
                        "dns.reverse_lookups = true all the same: the IPSecurity domain entries "
                        "need it (IIS looked names up for them too)")
        elif rdns:
            plan.mapped(p.where("EnableReverseDnsLookup"), rdns,
                        plan.set("dns", "reverse_lookups", True,
                                 "IIS: reverse DNS lookup on incoming messages"))
        else:
            plan.mapped(p.where("EnableReverseDnsLookup"), rdns,
                        plan.set("dns", "reverse_lookups", False, "IIS: no reverse DNS lookup"))

    # Logging.
    log_type = p.integer("LogType")
    if log_type is not None:
        plan.mapped(p.where("LogType"), log_type,
                    plan.set("log", "protocol", log_type == 1, "IIS: enable logging") + ", "
                    + plan.set("log", "protocol_formats", ["w3c", "json"],
                               "W3C extended, as IIS wrote it, and JSON lines"))
    if p.has("LogExtFileFlags"):
        plan.unmapped(p.where("LogExtFileFlags"), p.raw("LogExtFileFlags"),
                      "relaywarden writes a fixed set of W3C fields (date, time, c-ip, cs-username, "
                      "s-sitename, s-computername, s-ip, s-port, cs-method, cs-uri-query, sc-status, "
                      "sc-bytes, cs-bytes, time-taken, ...; README \"Logs\"); the field choice "
                      "is not configurable")
    for prop, why in (
        ("LogFileDirectory", "logs go to log.dir below relay.data_dir"),
        ("LogFilePeriod", "log.rotate = \"daily\" (or \"size\") replaces IIS's period"),
        ("LogFileTruncateSize", "log.max_size with log.rotate = \"size\""),
        ("LogPluginClsid", "the log format is W3C extended and JSON lines"),
        ("LogFileLocaltimeRollover", "daily files roll over at midnight UTC"),
    ):
        if p.has(prop):
            plan.unmapped(p.where(prop), p.raw(prop), why)

    # Directories.
    if p.has("PickupDirectory"):
        plan.set("pickup", "dir", "pickup", "the folder applications write .eml files into",
                 disabled=True)
        plan.set("pickup", "group", "pickup", "a [groups.NAME] whose rules apply to them",
                 disabled=True)
        plan.set("pickup", "poll_interval", 1, "seconds", disabled=True)
        plan.notes["pickup"] = ("The IIS Pickup directory: uncomment, point dir at the folder the\n"
                                "applications write to, and define [groups.pickup] (README \"Moving from IIS\").")
        plan.mapped(p.where("PickupDirectory"), p.text("PickupDirectory"),
                    "[pickup] (COMMENTED OUT: a Windows path; set pickup.dir to the folder the "
                    "applications write to, and pickup.group)")
    for prop, why in (
        ("DropDirectory", "a Windows path: mail for local domains is held in the queue until "
                          "you give their routes next_hops = [\"drop:/path/to/Drop\"] (the "
                          "folder the applications read; see the routes below)"),
        ("QueueDirectory", "the queue is queue.sqlite3 in relay.data_dir"),
    ):
        if p.has(prop):
            plan.unmapped(p.where(prop), p.text(prop), why)
    default_domain = p.text("DefaultDomain")

    # --- domains --------------------------------------------------------------------------
    hosted: list[str] = []
    etrn_any = False
    for domain in sorted(server.domains):
        _domain(server, domain, server.domains[domain], plan, hosted, output_dir,
                auth_enabled=bool(auth and auth & MD_AUTH_BASIC))
        etrn_any = etrn_any or "routes|" + domain in plan.tables
    if default_domain and default_domain.lower() not in server.domains:
        _local_domain(plan, default_domain.lower(), hosted)
    if default_domain:
        plan.mapped(p.where("DefaultDomain"), default_domain,
                    f"relay.hosted_domains, routes.\"{default_domain.lower()}\" (a local domain)")
    if hosted:
        plan.set("relay", "hosted_domains", hosted, "accepted from anyone")

    # --- everything else ------------------------------------------------------------------
    _rest(p, plan, server)
    header = [
        f"relaywarden config imported from IIS SMTP virtual server {n}",
        f"  source: {server.source}",
        f"  {'server comment: ' + comment if comment else ''}".rstrip(),
        "Every IIS setting found is in the import report (written beside this file),",
        "with the key it became or why it was not mapped. Check it with:",
        "  relaywarden config check THIS-FILE",
    ]
    header = [line for line in header if line.strip()]
    return render(plan, header), plan


def _outbound_auth(p: _Props, plan: Plan, table: str, shown: str, output_dir: Path | None,
                   flags: int, password_file: str) -> None:
    """IIS outbound security (RouteAction SASL/cleartext + RouteUserName): the user name,
    never the password."""
    user = p.text("RouteUserName")
    if p.has("RoutePassword"):
        p.raw("RoutePassword")
        plan.unmapped(p.where("RoutePassword"), "(secret, not shown)",
                      f"never imported: write the password in the first line of {password_file} "
                      f"beside the config (readable by the relay only), then uncomment "
                      f"{shown}.username and {shown}.password_file")
    if flags & SMTP_AUTH_NTLM and not flags & SMTP_AUTH_CLEARTEXT:
        plan.unmapped(p.where("RouteAction") + " (outbound Integrated Windows authentication)",
                      flags, "relaywarden authenticates to next hops with AUTH PLAIN/LOGIN only")
    if flags & SMTP_SSL:
        plan.mapped(p.where("RouteAction") + " (outbound TLS)", flags,
                    plan.set(table, "tls", "required", "IIS outbound TLS encryption"))
    if user:
        plan.set(table, "username", user, "IIS outbound security: Basic", disabled=True)
        plan.set(table, "password_file", password_file, "create it first: the password, never imported",
                 disabled=True)
        plan.mapped(p.where("RouteUserName"), user,
                    f"{shown}.username (COMMENTED OUT until {password_file} holds the password)")
        plan.warnings.append(f"outbound AUTH as {user!r}: put the password in {password_file} and "
                             f"uncomment {shown}.username and password_file; until then mail "
                             "goes out without AUTH")
    elif p.has("RouteUserName"):
        plan.mapped(p.where("RouteUserName"), "(empty)", f"{shown}: anonymous (no AUTH)")


def _local_domain(plan: Plan, domain: str, hosted: list[str]) -> None:
    if domain not in hosted:
        hosted.append(domain)
    table = f"routes|{domain}"
    plan.set(table, "hold", True, "IIS delivered it into the Drop directory")
    plan.notes[table] = ("A local IIS domain: its mail went into the Drop directory. It is held here\n"
                         "until you set next_hops = [\"drop:/path/to/Drop\"] (the folder the\n"
                         "applications read) and remove hold; then relaywarden queue flush\n"
                         f"--domain {domain} sends what was held.")
    plan.warnings.append(f"local domain {domain}: IIS dropped its mail into the Drop directory; "
                         f"it is accepted and HELD in the queue (routes.\"{domain}\".hold = true) "
                         "until you set next_hops = [\"drop:/path/to/Drop\"]")


def _domain(server: IisServer, domain: str, props: dict[str, Any], plan: Plan,
            hosted: list[str], output_dir: Path | None, *, auth_enabled: bool) -> None:
    where = f"/LM/SmtpSvc/{server.number}/Domain/{domain}"
    d = _Props(server, props, where)
    table = f"routes|{domain}"
    shown = f'routes."{domain}"'
    flags = d.integer("RouteAction")
    if flags is None:
        flags = 0
    action = d.text("RouteActionString")
    if flags & (SMTP_DROP | SMTP_ALIAS | SMTP_DEFAULT) and not flags & SMTP_DOMAIN_RELAY:
        _local_domain(plan, domain, hosted)
        plan.mapped(f"{where} RouteAction", flags,
                    f"relay.hosted_domains, {shown}.hold = true (a local domain: "
                    + ("default" if flags & SMTP_DEFAULT else "alias" if flags & SMTP_ALIAS else "drop")
                    + ")")
        _domain_rest(d, plan, where)
        return
    keys = []
    if flags & SMTP_DOMAIN_RELAY:
        hosted.append(domain)
        keys.append("relay.hosted_domains (allow incoming mail to be relayed to this domain)")
    hops = ["mx"]
    if action and flags & SMTP_SMARTHOST:
        hops = [_hop(action, None, d, "RouteActionString")]
        plan.mapped(f"{where} RouteActionString", action,
                    plan.set(table, "next_hops", hops, "IIS: forward all mail to smart host"))
    elif action:
        plan.mapped(f"{where} RouteActionString", action,
                    "not used: RouteAction has no SMTP_SMARTHOST flag (IIS ignored it too)")
    else:
        plan.set(table, "next_hops", hops, "IIS: use DNS (MX) to route to this domain")
    turn_users = d.items("AuthTurnList")
    if flags & SMTP_ETRN_CMD:
        plan.set(table, "next_hops", hops)
        plan.set(table, "hold", True, "IIS: queue messages for remote triggered delivery")
        keys.append(f"{shown}.hold = true")
        if not flags & SMTP_DISABLE_ETRN:
            plan.set(table, "etrn", True, "ETRN (RFC 1985) starts the queue")
            keys.append(f"{shown}.etrn = true")
        if turn_users:
            if auth_enabled:
                plan.set(table, "atrn_users", turn_users, "IIS: accounts authorized to use TURN/ATRN")
                plan.mapped(f"{where} AuthTurnList", turn_users, f"{shown}.atrn_users")
            else:
                plan.set(table, "atrn_users", turn_users, "needs a listener with auth.enabled", disabled=True)
                plan.mapped(f"{where} AuthTurnList", turn_users,
                            f"{shown}.atrn_users (COMMENTED OUT: ATRN needs AUTH, and the virtual "
                            "server had Basic authentication off)")
    elif turn_users:
        plan.unmapped(f"{where} AuthTurnList", turn_users,
                      "the domain does not queue for remote triggered delivery (no SMTP_ETRN_CMD)")
    if flags & SMTP_SSL:
        keys.append(plan.set(table, "tls", "required", "IIS outbound TLS encryption"))
    plan.mapped(f"{where} RouteAction", f"{flags:#x}", ", ".join(keys) or f"{shown} (remote domain)")
    if flags & SMTP_SASL or d.has("RouteUserName") or d.has("RoutePassword"):
        _outbound_auth(d, plan, table, shown, output_dir, flags,
                       f"{domain}.password")
    _domain_rest(d, plan, where)


def _domain_rest(d: _Props, plan: Plan, where: str) -> None:
    d.used |= {"RouteAction", "RouteActionString", "AuthTurnList"}
    for name in sorted(d.props):
        if name in d.used or name in _INTERNAL:
            continue
        plan.unmapped(f"{where} {name}", d.props[name],
                      "no relaywarden equivalent for a remote domain setting")


#: Properties that are known and deliberately not mapped, with the reason.
_KNOWN = {
    "AllowVerify": "relaywarden does not implement VRFY (it answers 252, RFC 5321 3.5.3)",
    "AllowExpand": "relaywarden does not implement EXPN",
    "ShouldDeliver": "IIS-internal switch",
    "ShouldPickupMail": "[pickup] is on when the table is present",
    "SmtpInboundCommandSupportOptions": "relaywarden's ESMTP extensions are fixed (PIPELINING, "
                                        "8BITMIME, SIZE, DSN, SMTPUTF8, STARTTLS, AUTH, ETRN, ATRN)",
    "SmtpOutboundCommandSupportOptions": "relaywarden uses what the next hop offers",
    "LimitRemoteConnections": "delivery.max_concurrent / per_destination limit outbound connections",
    "MaxOutConnectionsPerDomain": "",
    "EnablePipelining": "relaywarden always offers PIPELINING",
    "ConnectResponse": "the greeting is listeners.NAME.banner after the host name",
    "SaslLogonDomain": "see DefaultLogonDomain: [auth.ldap]",
    "MaxDirChangeIOSize": "IIS-internal",
    "MaxMailObjects": "IIS-internal",
    "SmtpUseTcpDns": "relaywarden's resolver chooses UDP/TCP itself",
    "SmtpDsnOptions": "relaywarden sends DSNs per RFC 3461/3464 as asked by the sender",
    "SmtpAdvQueueDsnOptions": "as SmtpDsnOptions",
    "SmtpIpRestrictionFlag": "IIS-internal",
    "NTAuthenticationProviders": "Integrated Windows authentication is not offered",
    "SmtpClearTextProvider": "IIS-internal",
    "SSLCertHash": "the certificate stays on Windows: export it as PEM for listeners.*.tls",
    "SSLStoreName": "as SSLCertHash",
    "SecureBindings": "listeners.NAME.tls.mode = \"implicit\" on a listener of its own",
    "SmtpRemoteRetryThreshold": "the retry schedule is delivery.retry_schedule",
    "SmtpLocalRetryAttempts": "no local delivery",
    "SmtpLocalRetryMinutes": "no local delivery",
    "SmtpRemoteRetryAttempts": "delivery.retry_schedule and expire_after decide",
    "SmtpRemoteRetryMinutes": "delivery.retry_schedule decides",
    "MaxSmtpErrors": "listeners.NAME.max_errors (kept at its default 10)",
    "SmtpDisableRelayForAuth": "see RelayForAuth",
    "RoutingDll": "IIS-internal",
    "RoutingSources": "IIS-internal",
    "DirectoryFlags": "IIS-internal",
    "DoMasquerade": "see MasqueradeDomain",
    "LogOdbcDataSource": "relaywarden does not log to ODBC",
    "LogOdbcTableName": "relaywarden does not log to ODBC",
    "LogOdbcUserName": "relaywarden does not log to ODBC",
    "LogOdbcPassword": "relaywarden does not log to ODBC (the password is not shown)",
    "ServerListenBacklog": "IIS-internal",
    "MaxConnectionsPerIP": "",
    "LogFileLocaltimeRollover": "",
    "FullyQualifiedDomainName": "",
    "ServerBindings": "",
}


def _rest(p: _Props, plan: Plan, server: IisServer) -> None:
    """Every property not handled above: in the report, never dropped silently."""
    for name in sorted(server.props):
        if name in p.used or name in _INTERNAL:
            continue
        value = server.props[name]
        if "password" in name.lower():
            value = "(secret, not shown)"
        why = _KNOWN.get(name) or "no relaywarden equivalent"
        plan.unmapped(server.where(name), value, why)
