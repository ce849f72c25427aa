"""The TOML config schema (pydantic v2).

Strict on purpose: an unknown or misspelt key is an error (`extra="forbid"` on every
table), values are not coerced between types (`strict=True`: `port = "25"` is a mistake
worth pointing at), and cross-field mistakes (two listeners on one port, a listener
naming an undefined group) are reported with the dotted key of the offending entry.

Validators raise `ValueError` with a short "what is wrong" text; `config/load.py` turns
pydantic's errors into `FILE: dotted.key: what is wrong`. Errors that belong to a key
below the validated field are raised with `problem(...)`, which carries the extra path.

After validation every value is resolved: sizes are ints, networks are `ip_network`
objects, patterns are normalised, relative paths are absolute, listener defaults taken
from `[relay]` are filled in. Code using the config never re-derives a default.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    PrivateAttr,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relaywarden.config.checks import certificate_problem, cram_file_problem
from relaywarden.config.errors import dotted_key
from relaywarden.policy import match
from relaywarden.policy.tls import TlsMode

# Context key passed to `model_validate(..., context=...)`: the directory relative paths
# are resolved against (the config file's directory; cwd for the embedded default).
BASE_DIR = "base_dir"

# Names of groups and listeners appear in rule names and log lines ("groups.scanners.
# senders"); keep them to TOML bare keys so a dotted key is never ambiguous.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def problem(path: Sequence[str | int], message: str) -> PydanticCustomError:
    """An error about `path` below the field being validated (see load.py)."""
    return PydanticCustomError("relaywarden_problems", "{message}", {
        "message": message, "problems": ((tuple(path), message),),
    })


def problems(found: Sequence[tuple[Sequence[str | int], str]]) -> PydanticCustomError:
    return PydanticCustomError("relaywarden_problems", "{message}", {
        "message": "; ".join(message for _, message in found), "problems": tuple(found),
    })


def found_in(exc: PydanticCustomError) -> list[tuple[tuple[str | int, ...], str]]:
    """The (path, message) pairs of an error made by problem() or problems()."""
    assert exc.context is not None
    return list(exc.context["problems"])


# ---------------------------------------------------------------------------- value types

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(value: Any) -> int:
    """Bytes from 10485760, "10MB" (1000-based) or "10MiB" (1024-based)."""
    if isinstance(value, bool):
        raise ValueError("expected a size: an integer (bytes) or a string like \"35MB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a size is >= 0 (0 = unlimited)")
        return value
    if isinstance(value, str):
        found = _SIZE.match(value)
        if found is None:
            raise ValueError(
                f"{value!r} is not a size; use bytes or a number with KB, MB, GB, KiB, MiB or GiB"
            )
        number, unit = found.groups()
        return int(float(number) * _UNITS[(unit or "b").lower()])
    raise ValueError("expected a size: an integer (bytes) or a string like \"35MB\"")


def _network(value: Any) -> match.IPNetwork:
    if not isinstance(value, str):
        raise ValueError("expected a string such as \"10.0.0.0/8\"")
    return match.parse_network(value)


def _address(value: Any) -> IPv4Address | IPv6Address:
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value                    # a default, or a config built in code
    if not isinstance(value, str):
        raise ValueError("expected a string such as \"127.0.0.1\" or \"::\"")
    try:
        return ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _string_parser(parse):
    def validate(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return parse(value)
    return validate


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number of seconds")
    if value <= 0:
        raise ValueError(f"{value} is not positive")
    return float(value)


def _in_flow_delay(value: Any) -> float:
    """Seconds from 0 (off) to 10, Postfix's range for its in_flow_delay."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number of seconds")
    if not 0 <= value <= 10:
        raise ValueError(f"{value} is not between 0 and 10 seconds (0: off)")
    return float(value)


def _hosted_domain(text: str) -> str:
    if text.strip() == "*":
        raise ValueError("'*' would accept mail for every domain from anyone: an open relay")
    return match.parse_domain_pattern(text)


def _non_empty_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _seconds_or_never(value: Any) -> float | None:
    """A duration where 0 means "never": stored as None so that no caller compares with 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number of seconds (0 = never)")
    if value < 0:
        raise ValueError(f"{value} is negative; use 0 for never")
    return None if value == 0 else float(value)


_TLS_MODES = ", ".join(repr(mode.value) for mode in list(TlsMode)[:-1]) + f" or {list(TlsMode)[-1].value!r}"


def _tls_mode(value: Any) -> TlsMode:
    if isinstance(value, TlsMode):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string")
    try:
        return TlsMode(value.strip().lower())
    except ValueError:
        raise ValueError(f"{value!r} is not one of {_TLS_MODES}") from None


def _unset_if_empty(parse):
    """For keys whose TOML default is "" (= not set): "" -> None, anything else parsed."""
    def validate(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("expected a string")
        if not value.strip():
            return None
        return parse(value)
    return validate


def _helo_name(text: str) -> str:
    # RFC 5321 4.1.1.1: EHLO takes a domain or, without one, an address literal.
    if text.strip().startswith("["):
        return match.format_literal(match.parse_literal(text))
    return match.parse_hostname(text, wildcard=False)


def _config_path(value: Any, info: ValidationInfo) -> Path | None:
    """A path relative to the config file's directory that need not exist yet."""
    if value is None or isinstance(value, Path) and value.is_absolute():
        return value
    if isinstance(value, Path):
        value = str(value)              # a relative default: it starts where a written one does
    if not isinstance(value, str):
        raise ValueError("expected a path string")
    if not value.strip():
        return None
    base = Path((info.context or {}).get(BASE_DIR) or Path.cwd())
    path = (base / Path(value.strip()).expanduser()).absolute()
    if path.exists() and not path.is_file():
        raise ValueError(f"{value!r} is not a file")
    return path


def _existing_file(value: Any, info: ValidationInfo) -> Path | None:
    """A file relative to the config file's directory; it must exist when set."""
    path = _config_path(value, info)
    # The text as written, not the absolute path: the admin knows where the config is.
    if path is not None and not isinstance(value, Path) and not path.exists():
        raise ValueError(f"{value!r} does not exist (relative paths start at the config file's directory)")
    return path


Size = Annotated[int, BeforeValidator(parse_size)]
# PlainValidator: our parser is the whole validation; the annotation is for readers.
Network = Annotated[match.IPNetwork, PlainValidator(_network)]
IPAddr = Annotated[IPv4Address | IPv6Address, PlainValidator(_address)]
Duration = Annotated[float, BeforeValidator(_duration)]
AccessEntry = Annotated[match.Matcher, PlainValidator(_string_parser(match.parse_access_entry))]
HostPattern = Annotated[str, BeforeValidator(_string_parser(match.parse_hostname))]
HostName = Annotated[
    str, BeforeValidator(_string_parser(lambda text: match.parse_hostname(text, wildcard=False)))
]
DomainPattern = Annotated[str, BeforeValidator(_string_parser(match.parse_domain_pattern))]
HostedDomain = Annotated[str, BeforeValidator(_string_parser(_hosted_domain))]
SenderPattern = Annotated[str, BeforeValidator(_string_parser(match.parse_sender_pattern))]
MailAddress = Annotated[str, BeforeValidator(_string_parser(match.parse_address))]
Text = Annotated[str, BeforeValidator(_non_empty_string)]
SecondsOrNever = Annotated[float | None, PlainValidator(_seconds_or_never)]
Tls = Annotated[TlsMode, PlainValidator(_tls_mode)]
OptionalTls = Annotated[TlsMode | None, PlainValidator(lambda value: None if value is None else _tls_mode(value))]
OptionalText = Annotated[str | None, PlainValidator(_unset_if_empty(str.strip))]
OptionalAddress = Annotated[str | None, PlainValidator(_unset_if_empty(match.parse_address))]
OptionalHeloName = Annotated[str | None, PlainValidator(_unset_if_empty(_helo_name))]
OptionalSecret = Annotated[SecretStr | None, PlainValidator(
    _unset_if_empty(lambda text: SecretStr(text))   # kept as written: spaces may be part of it
)]
OptionalFile = Annotated[Path | None, PlainValidator(_existing_file)]
OptionalPath = Annotated[Path | None, PlainValidator(_config_path)]



def _unique(values: list[Any], what: str = "entry") -> None:
    seen: dict[Any, int] = {}
    found = []
    for index, value in enumerate(values):
        if value in seen:
            found.append(((index,), f"duplicate {what} {str(value)!r} (also at [{seen[value]}])"))
        else:
            seen[value] = index
    if found:
        raise problems(found)


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise problem(
            (name,), f"{what} name {name!r} may only use letters, digits, '_' and '-'"
        )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_tables(cls, data: Any) -> Any:
        """A sub-table the file leaves out ([relay], [listeners.NAME.tls], ...) is read as an
        empty one. Filled in here, not by a field default, so that it is validated like a
        written table, with the file's context: its relative paths (relay.data_dir,
        admin.users_file) start at the config file's directory too."""
        if isinstance(data, dict):
            missing = [name for name in _tables(cls) if name not in data]
            if missing:
                data = {**data, **{name: {} for name in missing}}
        return data


@functools.cache
def _tables(model: type[Strict]) -> tuple[str, ...]:
    """The fields of ``model`` that are sub-tables (a Strict model, always there)."""
    return tuple(name for name, field in model.model_fields.items()
                 if isinstance(field.annotation, type) and issubclass(field.annotation, Strict)
                 and field.is_required())


# ---------------------------------------------------------------------------- tables


class RelayConfig(Strict):
    # socket.getfqdn() is the machine's own name: only read when the config leaves it out.
    hostname: HostName = Field(default_factory=socket.getfqdn)
    data_dir: Path = Path("var")           # absolute after validation
    postmaster: MailAddress | None = None  # filled: "postmaster@" + hostname
    max_message_size: Size = 35_000_000    # 0 = unlimited
    hosted_domains: list[HostedDomain] = []
    # Disk guard: below this much free space in data_dir, MAIL gets 452 4.3.1; 0 = no check.
    min_free_space: Size = 100_000_000
    # More Received: fields than this in a message: a mail loop (RFC 5321 6.3), badmail.
    max_hops: int = Field(default=30, ge=1)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _path(cls, value: Any, info: ValidationInfo) -> Path:
        if isinstance(value, Path):
            path = value
        elif isinstance(value, str) and value.strip():
            path = Path(value)
        else:
            raise ValueError("expected a non-empty path string")
        base = Path((info.context or {}).get(BASE_DIR) or Path.cwd())
        return (base / path.expanduser()).absolute()

    @field_validator("hosted_domains")
    @classmethod
    def _unique_domains(cls, value: list[str]) -> list[str]:
        _unique(value, "domain")
        return value

    @model_validator(mode="after")
    def _postmaster(self) -> RelayConfig:
        if self.postmaster is None:
            self.postmaster = f"postmaster@{self.hostname}"
        return self


class QueueConfig(Strict):
    backend: str = "sqlite"

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value == "postgresql":
            raise ValueError("'postgresql' is not supported yet")
        if value != "sqlite":
            raise ValueError(f"{value!r} is not a queue backend; expected 'sqlite'")
        return value


class LogConfig(Strict):
    dir: Path = Path("log")                # relative to data_dir; absolute after validation
    protocol: bool = True
    protocol_formats: list[Literal["w3c", "json"]] = ["w3c", "json"]
    # The delivering side's sessions (outYYMMDD.log/.jsonl), in the same formats; unset:
    # as `protocol`.
    protocol_outbound: bool | None = None
    mail: bool = True
    rotate: Literal["daily", "size"] = "daily"
    max_size: Size = 100_000_000
    keep: int = Field(default=30, ge=1)

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: Any) -> Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str) and value.strip():
            return Path(value).expanduser()
        raise ValueError("expected a non-empty path string")

    @field_validator("protocol_formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        _unique(value, "format")
        return value

    @model_validator(mode="after")
    def _some_format(self) -> LogConfig:
        if self.protocol and not self.protocol_formats:
            raise problem(("protocol_formats",), "must not be empty when protocol = true")
        if self.outbound_protocol and not self.protocol_formats:
            raise problem(("protocol_formats",),
                          "must not be empty when protocol_outbound = true")
        if self.rotate == "size" and self.max_size == 0:
            raise problem(("max_size",), "must be > 0 with rotate = \"size\"")
        return self

    @property
    def outbound_protocol(self) -> bool:
        """Whether the outbound protocol log is written (unset: as the inbound one)."""
        return self.protocol if self.protocol_outbound is None else self.protocol_outbound


_HOP = re.compile(r"^(?:\[(?P<literal>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]+))?$")


def parse_next_hop(text: str) -> tuple[str, int | None]:
    """("mx", None), ("[10.0.0.5]", 25), ("smtp.example.net", None), ...

    A bracketed host is an IP address used as is (no MX lookup), the usual SMTP
    convention (Postfix relayhost, IIS smart host). The port is None when not given
    (delivery uses 25).
    """
    stripped = text.strip()
    if stripped.lower() == "mx":
        return ("mx", None)
    found = _HOP.match(stripped)
    if found is None:
        raise ValueError(
            f"{text!r} is not a next hop; use \"[ip]:port\", \"[ip]\", \"host:port\", \"host\" or \"mx\""
        )
    port = None
    if found["port"] is not None:
        port = int(found["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is not in 1..65535")
    if found["literal"] is not None:
        literal = found["literal"]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ip = ip_address(literal)
        except ValueError:
            raise ValueError(f"{text!r}: {found['literal']!r} is not an IP address") from None
        return (f"[{ip}]", port)
    return (match.parse_hostname(found["host"], wildcard=False), port)


def _next_hop(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    from relaywarden.config import couriers as courier

    found = courier.split(value)
    if found is not None:       # "SCHEME:REST": a next hop that is not SMTP
        scheme, rest = found
        return f"{scheme}:{courier.scheme_of(scheme).parse(rest)}"
    host, port = parse_next_hop(value)
    return host if port is None else f"{host}:{port}"


NextHopText = Annotated[str, BeforeValidator(_next_hop)]


def _courier(hop: str) -> tuple[str, str] | None:
    """(scheme, rest) of a normalised next hop that names a courier (delivery.courier)."""
    from relaywarden.config.couriers import split

    return split(hop)


class DeliveryConfig(Strict):
    # "separate": delivery (scheduler, outbound SMTP, badmail) runs in a second process, so
    # receiving and delivering each have a core; "inline": one process does both.
    process: Literal["separate", "inline"] = "separate"
    # true: a received message's durable record is an entry appended to a log (one
    # fdatasync per batch) and it goes to delivery from memory (inline) or from the log
    # (separate: the delivery process follows it); the SQLite index takes only what waits
    # (queue/log.py, issue 15). A first attempt that lasts HANDOFF_GRACE_SECONDS puts the
    # message into the index, leased by that attempt, where the admin can steer it.
    # false: every message goes into the index before its 250 (as before 2026-12).
    handoff: bool = True
    # Back-pressure with hand-off, as Postfix's in_flow_delay: while delivery is behind
    # (a message waits half a second for delivery to take it), the 250 after the final dot
    # waits for it to catch up, at most this long (seconds, 0 to 10; 0: off).
    in_flow_delay: Annotated[float, BeforeValidator(_in_flow_delay)] = 1.0
    # The delivery process's CPU priority below the receiving process's, as nice(1)
    # counts it (0 to 19; 0: the same). When both want a core, SMTP clients' replies come
    # first and delivery, whose queue absorbs a wait, takes more messages per round (issue
    # 15). process = "inline" has one process: nothing to lower.
    nice: int = Field(default=5, ge=0, le=19)
    helo_name: OptionalHeloName = None          # filled: relay.hostname
    max_concurrent: int = Field(default=50, ge=1)
    per_destination: int = Field(default=10, ge=1)
    # Seconds between attempts; the last one repeats until expire_after. Like IIS (10 min,
    # 15 min, then longer): a relay's next hops are mostly its own servers, so the first
    # retries come sooner than the 30 minutes RFC 5321 4.5.4.1 suggests for the internet.
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0], min_length=1
    )
    expire_after: Duration = 172_800.0          # 2 days after arrival: bounce
    delay_notice_after: SecondsOrNever = 43_200.0   # None = never
    mx_port: int = Field(default=25, ge=1, le=65535)
    connect_timeout: Duration = 30.0
    command_timeout: Duration = 300.0           # RFC 5321 4.5.3.2: 5 minutes for most replies
    data_timeout: Duration = 600.0              # RFC 5321 4.5.3.2.6: 10 minutes for the final "."
    tls: Tls = TlsMode.OPPORTUNISTIC
    ca_file: OptionalFile = None                # None: the system store
    ndr_copy_to: OptionalAddress = None

    @model_validator(mode="after")
    def _notice_before_expiry(self) -> DeliveryConfig:
        if self.delay_notice_after is not None and self.delay_notice_after >= self.expire_after:
            raise problem(
                ("delay_notice_after",),
                f"{_seconds(self.delay_notice_after)} is not before delivery.expire_after "
                f"({_seconds(self.expire_after)}): the delay notice would never be sent (0 = never)",
            )
        return self


def _seconds(value: float) -> str:
    return f"{value:g}"


class DnsConfig(Strict):
    nameservers: list[IPAddr] = []             # empty: /etc/resolv.conf
    port: int = Field(default=53, ge=1, le=65535)
    timeout: Duration = 5.0
    # PTR + forward confirmation of every client (Received notes, host-name entries). Off by
    # default, as in IIS ("Perform reverse DNS lookup on incoming messages").
    reverse_lookups: bool = False

    @field_validator("nameservers")
    @classmethod
    def _unique_servers(cls, value: list[Any]) -> list[Any]:
        _unique(value, "nameserver")
        return value


# "{name}" with an identifier inside is a placeholder (an unknown one is a typo worth
# reporting); other braces are passed on as they are.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
BADMAIL_PLACEHOLDERS = ("path", "id", "reason")


_EXTENSION = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class ScreeningConfig(Strict):
    """The attachment screener (see relaywarden.screening). Nothing listed: no screening."""

    blocked_extensions: list[str] = []          # "exe" or ".exe", case-insensitive
    blocked_content_types: list[str] = []       # "application/x-msdownload"
    max_attachment_size: Size = 0               # decoded bytes; 0: no limit
    look_inside_zip: bool = True
    action: Literal["reject", "badmail", "strip"] = "reject"
    # Which mail: "all"; "outbound" (a recipient outside the hosted domains); "inbound" (a
    # recipient in them).
    scope: Literal["all", "outbound", "inbound"] = "all"

    @field_validator("blocked_extensions")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        out, found = [], []
        for index, text in enumerate(value):
            ext = text.strip().lower().removeprefix(".")
            if not _EXTENSION.fullmatch(ext):
                found.append(((index,), f"{text!r} is not a file name extension (e.g. \"exe\")"))
            out.append(ext)
        if found:
            raise problems(found)
        return out

    @field_validator("blocked_content_types")
    @classmethod
    def _content_types(cls, value: list[str]) -> list[str]:
        out, found = [], []
        for index, text in enumerate(value):
            ctype = text.strip().lower()
            if not _CONTENT_TYPE.fullmatch(ctype):
                found.append(((index,), f"{text!r} is not a content type (e.g. \"application/x-msdownload\")"))
            out.append(ctype)
        if found:
            raise problems(found)
        return out


class BadmailConfig(Strict):
    dir: Path = Path("badmail")                 # relative to data_dir; absolute after validation
    notify: OptionalAddress = None
    notify_interval: Duration = 300.0
    command: list[str] = []                     # argv, no shell

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: Any) -> Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str) and value.strip():
            return Path(value.strip()).expanduser()
        raise ValueError("expected a non-empty path string")

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if value and not value[0].strip():
            found.append(((0,), "the program must not be empty"))
        for index, arg in enumerate(value):
            for name in _PLACEHOLDER.findall(arg):
                if name not in BADMAIL_PLACEHOLDERS:
                    found.append(((index,), f"unknown placeholder {{{name}}}; use {{path}}, {{id}} or {{reason}}"))
        if found:
            raise problems(found)
        return value

    def argv(self, *, path: Path | str, queue_id: str, reason: str) -> list[str]:
        """The command for one badmail message; [] when none is configured.

        One pass over each argument, so a value that itself contains "{id}" (a reason
        quoting the client) is never substituted again.
        """
        values = {"path": str(path), "id": queue_id, "reason": reason}
        return [
            _PLACEHOLDER.sub(lambda found: values.get(found[1], found[0]), arg) for arg in self.command
        ]


class HopConfig(Strict):
    """How to reach a next hop: shared by [routes.X] and [sender_routes.NAME]."""

    # Normalised: "mx", "[10.0.0.5]:25", "smtp.example.net"; see parse_next_hop.
    next_hops: list[NextHopText] = []
    tls: OptionalTls = None                     # filled: delivery.tls
    implicit_tls: bool = False                  # RFC 8314 3.3: TLS from the first byte
    username: OptionalText = None
    password_file: OptionalFile = None          # read at load into `password`
    # The secret: given inline, or read from password_file (then password_file is set).
    password: OptionalSecret = None
    auth_without_tls: bool = False
    # "password": AUTH PLAIN/LOGIN with username + password; "xoauth2" / "oauthbearer"
    # (RFC 7628): a token of the [oauth.NAME] provider `oauth` names, for the mailbox
    # `username`. Unset: "xoauth2" when oauth is set, else "password".
    auth: Literal["password", "xoauth2", "oauthbearer"] | None = None
    oauth: OptionalText = None
    # next_hops = ["graph:NAME"] (Microsoft Graph sendMail): send as this mailbox rather
    # than as the envelope sender's (delivery.graph).
    mailbox: OptionalAddress = None

    @model_validator(mode="after")
    def _hops_and_auth(self) -> HopConfig:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if self.auth is None:
            self.auth = "xoauth2" if self.oauth is not None else "password"
        try:
            _unique_at("next_hops", self.next_hops)
        except PydanticCustomError as exc:
            found += found_in(exc)
        couriers = [index for index, hop in enumerate(self.next_hops) if _courier(hop)]
        if couriers and len(self.next_hops) > 1:
            # A courier is the route's only way out: failover between it and SMTP hosts
            # (or another courier) would hide who took the mail.
            found.append((("next_hops", couriers[0]),
                          f"{self.next_hops[couriers[0]]!r} must be the only next hop of its route"))
        if self.implicit_tls:
            # (implicit_tls against tls = "none": checked by Config, which knows delivery.tls.)
            for index, hop in enumerate(self.next_hops):
                if _courier(hop):
                    continue
                host, port = parse_next_hop(hop)
                if host == "mx":
                    found.append((
                        ("next_hops", index),
                        '"mx" cannot be used with implicit_tls = true (MX hosts take STARTTLS on port 25)',
                    ))
                elif port is None:
                    found.append((
                        ("next_hops", index),
                        f"{hop!r} needs a port with implicit_tls = true (usually {hop}:465); "
                        "without one delivery.mx_port is used",
                    ))
        if self.mailbox is not None and not any(hop.startswith("graph:") for hop in self.next_hops):
            found.append((("mailbox",), 'only used with next_hops = ["graph:NAME"]'))
        if self.auth != "password":
            self._oauth_auth(found)
        elif self.oauth is not None:
            found.append((("oauth",), 'needs auth = "xoauth2" or "oauthbearer" (auth is "password")'))
        elif self.password is not None and self.password_file is not None:
            found.append((("password",), "set either password or password_file, not both"))
        elif self.username is not None and self.password is None and self.password_file is None:
            found.append((("username",), "needs password_file (or password)"))
        elif self.username is None and (self.password is not None or self.password_file is not None):
            key = "password" if self.password is not None else "password_file"
            found.append(((key,), "needs username"))
        if found:
            raise problems(found)
        if self.password_file is not None:
            self.password = SecretStr(_read_password(self.password_file))
        return self

    def _oauth_auth(self, found: list[tuple[tuple[str | int, ...], str]]) -> None:
        """auth = "xoauth2" / "oauthbearer": a provider and a mailbox, no password. (The
        provider's existence and TLS: checked by Config, which knows both.)"""
        if self.oauth is None:
            found.append((("oauth",), f'missing (auth = "{self.auth}" needs an [oauth.NAME] provider)'))
        if self.username is None:
            found.append((("username",), f'missing (auth = "{self.auth}" logs in as this mailbox)'))
        for key in ("password", "password_file"):
            if getattr(self, key) is not None:
                found.append(((key,), f'not used with auth = "{self.auth}" (the provider\'s token is the secret)'))
        if self.auth_without_tls:
            found.append((("auth_without_tls",), f'auth = "{self.auth}" sends a bearer token: TLS only'))

    @property
    def password_inline(self) -> bool:
        """The password was written into the config (config_warnings says so)."""
        return self.password is not None and self.password_file is None


def _read_password(path: Path, key: str = "password_file") -> str:
    """The one reader of password files (next hop AUTH, the LDAP bind): the first line,
    read when the config is loaded (and so at every reload), every fault a config error
    naming ``key``."""
    try:
        # utf-8-sig: Notepad's byte order mark is not part of the password.
        text = path.read_text("utf-8-sig")
    except OSError as exc:
        raise problem((key,), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise problem((key,), "cannot read: not UTF-8 text") from None
    # The first line without its line ending; other whitespace may belong to the password.
    first = text.splitlines()[0] if text else ""
    if not first:
        raise problem((key,), "the first line (the password) is empty")
    return first


class RouteConfig(HopConfig):
    # Held mail waits in the queue until released (admin) or triggered (ETRN).
    hold: bool = False
    # ETRN (RFC 1985) may start this route's queue: its held mail and its mail waiting for
    # a retry go out now, through next_hops (never to the client that asked).
    etrn: bool = False
    # Who may ask: client networks; empty: any client the listener lets in.
    etrn_networks: list[Network] = []
    # ATRN (RFC 2645): these authenticated users may collect this hold route's mail over
    # their own connection (the relay turns it around); case-insensitive.
    atrn_users: list[Text] = []

    @model_validator(mode="after")
    def _required_hops(self) -> RouteConfig:
        if not self.hold and not self.next_hops:
            if "next_hops" in self.model_fields_set:
                raise problem(("next_hops",), "must not be empty")
            raise problem(("next_hops",), "missing (required unless hold = true)")
        if self.etrn and not self.next_hops:
            raise problem(("next_hops",), "missing: etrn = true sends the mail through next_hops")
        if self.etrn_networks and not self.etrn:
            raise problem(("etrn_networks",), "has no effect without etrn = true")
        if self.atrn_users and not self.hold:
            raise problem(("atrn_users",), "needs hold = true (the mail waits for the user to collect it)")
        return self


def _sender_domain(text: str) -> str:
    if text.strip() == "*":
        raise ValueError(
            "'*' would match every sender; use groups or users, or routes.\"*\" for all mail"
        )
    return match.parse_domain_pattern(text)


SenderDomain = Annotated[str, BeforeValidator(_string_parser(_sender_domain))]


class SenderRouteConfig(HopConfig):
    """A smart host chosen by who sends (IIS could not do this; Exchange and Postfix can)."""

    groups: list[str] = []                      # client groups (must exist)
    users: list[Text] = []                      # authenticated users, case-insensitive
    sender_domains: list[SenderDomain] = []     # MAIL FROM domains
    next_hops: list[NextHopText] = Field(min_length=1)

    @field_validator("next_hops")
    @classmethod
    def _no_mx(cls, value: list[str]) -> list[str]:
        found = [
            ((index,), '"mx" is not allowed in a sender route (without a sender route mail goes by MX anyway)')
            for index, hop in enumerate(value) if hop == "mx"
        ]
        if found:
            raise problems(found)
        return value

    @field_validator("users")
    @classmethod
    def _unique_users(cls, value: list[str]) -> list[str]:
        _unique([user.casefold() for user in value], "user")
        return value

    @model_validator(mode="after")
    def _matches_something(self) -> SenderRouteConfig:
        if not (self.groups or self.users or self.sender_domains):
            raise ValueError("the sender route matches nothing: set groups, users or sender_domains")
        for key in ("groups", "sender_domains"):
            _unique_at(key, getattr(self, key))
        return self


class GroupConfig(Strict):
    networks: list[Network] = []
    hostnames: list[HostPattern] = []
    users: list[Text] = []
    directory_groups: list[Text] = []
    recipient_domains: list[DomainPattern] | None = None   # None: any domain
    senders: list[SenderPattern] | None = None             # None: any sender
    on_violation: Literal["reject", "badmail"] = "reject"

    @model_validator(mode="after")
    def _members(self) -> GroupConfig:
        if not (self.networks or self.hostnames or self.users or self.directory_groups):
            raise ValueError(
                "the group has no members: set networks, hostnames, users or directory_groups"
            )
        # An empty list would silently refuse everything; leaving the key out means "any".
        if self.recipient_domains == []:
            raise problem(("recipient_domains",), "must not be empty (leave it out to allow any domain)")
        if self.senders == []:
            raise problem(("senders",), "must not be empty (leave it out to allow any sender)")
        for key in ("networks", "hostnames", "recipient_domains", "senders"):
            _unique_at(key, getattr(self, key) or [])
        return self


def _unique_at(key: str, values: list[Any]) -> None:
    try:
        _unique(values)
    except PydanticCustomError as exc:
        raise problems([((key, *path), message)
                        for path, message in found_in(exc)]) from None


def _dnsbl_entry(text: str) -> str:
    from relaywarden.policy.dnsbl import parse_site
    return parse_site(text).text


# A DNS list zone in postscreen_dnsbl_sites syntax: zone[=127.0.0.[2..11]][*weight].
DnsblEntry = Annotated[str, BeforeValidator(_string_parser(_dnsbl_entry))]


class AccessConfig(Strict):
    default: Literal["allow", "deny"] = "allow"
    allow: list[AccessEntry] = []
    deny: list[AccessEntry] = []
    # DNS blocklists asked at connect (RFC 5782; policy/dnsbl.py): a client whose listing
    # weights reach dnsbl_threshold is greeted with 554 5.7.1 and the zone's TXT.
    dnsbl: list[DnsblEntry] = []
    dnsbl_threshold: int = Field(default=1, ge=1)
    # DNS allowlists: a client any of them lists is never refused by the blocklists.
    dnswl: list[DnsblEntry] = []
    # Refuse clients whose reverse DNS is not verified (PTR + matching forward lookup):
    # 554 5.7.25, or 421 4.7.25 when the lookup failed for the moment (RFC 8601 3.3).
    # Needs dns.reverse_lookups. Applies to every client of the listener.
    require_rdns: bool = False


class ListenerRelayConfig(Strict):
    # Closed by default: a listener relays for nobody until a network is listed here.
    networks: list[Network] = []
    authenticated: bool = False


class LineEndingConfig(Strict):
    bare_lf: Literal["reject", "normalize"] = "reject"
    normalize_networks: list[Network] = []

    @model_validator(mode="after")
    def _useful(self) -> LineEndingConfig:
        if self.bare_lf == "normalize" and self.normalize_networks:
            raise problem(
                ("normalize_networks",),
                "has no effect with bare_lf = \"normalize\" (every client is normalized)",
            )
        return self


TLS_MODES = ("none", "starttls", "required", "implicit")


class ListenerTlsConfig(Strict):
    """TLS for clients: STARTTLS offered (RFC 3207), required, or implicit (RFC 8314)."""

    mode: Literal["none", "starttls", "required", "implicit"] = "none"
    cert_file: OptionalFile = None             # PEM: the certificate and its chain
    key_file: OptionalFile = None              # PEM, unencrypted
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # With mode = "required": clients here may send mail without STARTTLS (legacy devices).
    optional_networks: list[Network] = []

    @model_validator(mode="after")
    def _usable(self) -> ListenerTlsConfig:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if self.mode != "none":
            for key in ("cert_file", "key_file"):
                if getattr(self, key) is None:
                    found.append(((key,), f'missing (required with mode = "{self.mode}")'))
        if self.optional_networks and self.mode != "required":
            found.append((("optional_networks",), 'has no effect unless mode = "required"'))
        try:
            _unique_at("optional_networks", self.optional_networks)
        except PydanticCustomError as exc:
            found += found_in(exc)
        if not found and self.cert_file is not None and self.key_file is not None:
            bad = certificate_problem(cert_file=self.cert_file, key_file=self.key_file,
                                      min_version=self.min_version)
            if bad is not None:
                found.append(((bad[0],), bad[1]))
        elif not found and (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            found.append(((missing,), "missing (cert_file and key_file go together)"))
        if found:
            raise problems(found)
        return self


class LimitConfig(Strict):
    """Abuse limits of one listener; every count is per listener, 0 = unlimited."""

    max_connections: int = Field(default=1000, ge=0)        # beyond: 421 4.7.0
    max_connections_per_ip: int = Field(default=50, ge=0)   # beyond: 421 4.7.0
    messages_per_window: int = Field(default=0, ge=0)       # per client IP and per user: 451 4.7.1 at MAIL
    recipients_per_window: int = Field(default=0, ge=0)     # per client IP and per user: 452 4.5.3 at RCPT
    window: Duration = 60.0                                 # seconds

    @model_validator(mode="after")
    def _per_ip_within_total(self) -> LimitConfig:
        if self.max_connections and self.max_connections_per_ip > self.max_connections:
            raise problem(
                ("max_connections_per_ip",),
                f"{self.max_connections_per_ip} is more than max_connections ({self.max_connections})",
            )
        return self


class ListenerAuthConfig(Strict):
    """SMTP AUTH for clients of one listener (RFC 4954): PLAIN and LOGIN."""

    enabled: bool = False
    required: bool = False                     # MAIL without AUTH: 530 5.7.0
    # AUTH is offered only over TLS, except to these networks (e.g. loopback, a legacy LAN).
    plaintext_networks: list[Network] = []

    @model_validator(mode="after")
    def _useful(self) -> ListenerAuthConfig:
        if self.required and not self.enabled:
            raise problem(("required",), "needs enabled = true")
        return self


class ListenerConfig(Strict):
    address: IPAddr
    port: int = Field(ge=1, le=65535)
    banner: Text = "ESMTP relaywarden"
    max_message_size: Size | None = None       # filled from relay.max_message_size
    max_recipients: int = Field(default=100, ge=1)
    max_errors: int = Field(default=10, ge=1)
    command_timeout: Duration = 300.0
    data_timeout: Duration = 300.0
    groups: list[str] | None = None            # filled: all defined groups, in file order
    access: AccessConfig
    relay: ListenerRelayConfig
    line_endings: LineEndingConfig
    tls: ListenerTlsConfig
    limits: LimitConfig
    auth: ListenerAuthConfig
    # [milters.NAME] asked, in this order, before the 250 at the end of DATA.
    milters: list[str] = []

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _unique(value, "group")
        return value

    @field_validator("milters")
    @classmethod
    def _unique_milters(cls, value: list[str]) -> list[str]:
        _unique(value, "milter")
        return value


class LdapAuthConfig(Strict):
    """LDAP / Active Directory: bind as the user (template) or search, then bind."""

    url: Text                                   # ldap://host:389 or ldaps://host:636
    mode: Literal["bind", "search"] = "bind"
    _bind_password: str | None = PrivateAttr(default=None)   # bind_password_file's, at load
    start_tls: bool = False
    ca_file: OptionalFile = None
    user_dn_template: OptionalText = None       # "uid={user},ou=people,dc=example,dc=com" or "{user}@example.com"
    bind_dn: OptionalText = None                # search mode: the service account
    bind_password_file: OptionalFile = None
    search_base: OptionalText = None
    search_filter: Text = "(uid={user})"        # AD: "(sAMAccountName={user})"
    group_attribute: OptionalText = "memberOf"
    group_search_base: OptionalText = None
    group_filter: Text = "(member={dn})"
    group_name_attribute: Text = "cn"
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _complete(self) -> LdapAuthConfig:
        if not self.url.startswith(("ldap://", "ldaps://")):
            raise problem(("url",), f"{self.url!r} is not an ldap:// or ldaps:// URL")
        if self.mode == "bind" and not self.user_dn_template:
            raise problem(("user_dn_template",), 'mode = "bind" needs a user_dn_template with {user}')
        if self.user_dn_template and "{user}" not in self.user_dn_template:
            raise problem(("user_dn_template",), "must contain {user}")
        if self.mode == "search":
            missing = [k for k in ("bind_dn", "bind_password_file", "search_base") if not getattr(self, k)]
            if missing:
                raise problem((missing[0],), 'mode = "search" needs bind_dn, bind_password_file and search_base')
            if "{user}" not in self.search_filter:
                raise problem(("search_filter",), "must contain {user}")
        if self.bind_password_file is not None:
            self._bind_password = _read_password(self.bind_password_file, "bind_password_file")
        return self

    def bind_password(self) -> str | None:
        """Read with the config (a reload reads it again), never later: a file gone or
        emptied since is a config error of the load, not an OSError of a running relay."""
        return self._bind_password


class ThrottleConfig(Strict):
    """Brute force: failed logins per client address and per user name."""

    delays: list[Annotated[float, Field(ge=0)]] = [0.0, 1.0, 2.0, 4.0, 8.0]   # wait before answering the n-th failure
    client_limit: int = Field(default=10, ge=1)          # failures in `window`, then locked out
    user_limit: int = Field(default=20, ge=1)
    window: Duration = 900.0
    lockout: Duration = 900.0


class AuthConfig(Strict):
    users_file: OptionalPath = None             # local users (relaywarden user add); relative to the config file
    ldap: LdapAuthConfig | None = None
    order: list[Literal["local", "ldap"]] = ["local", "ldap"]   # which backend is asked first
    throttle: ThrottleConfig
    # name:secret lines for CRAM-MD5 (RFC 2195), the mechanism ATRN clients such as
    # fetchmail use; secrets in clear, so a file of its own (see relaywarden.auth.cram).
    cram_md5_file: OptionalFile = None

    @model_validator(mode="after")
    def _cram(self) -> AuthConfig:
        if self.cram_md5_file is not None:
            bad = cram_file_problem(self.cram_md5_file)
            if bad is not None:
                raise problem(("cram_md5_file",), bad)
        return self


_DURATION_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_text(value: Any) -> float:
    """Seconds from a number or a string like "90s", "15m", "8h", "1d"."""
    if isinstance(value, str):
        found = _DURATION_TEXT.match(value.lower())
        if found is None:
            raise ValueError(f"{value!r} is not a duration; use seconds or \"30m\", \"8h\", \"1d\"")
        value = float(found[1]) * _DURATION_UNITS[found[2]]
    return _duration(value)


DurationText = Annotated[float, BeforeValidator(_duration_text)]


class LdapRoleConfig(Strict):
    """LDAP/AD groups (auth.ldap) whose members get a console role; the highest wins."""

    admin: list[Text] = []
    operator: list[Text] = []
    viewer: list[Text] = []


class AdminConfig(Strict):
    """The admin process's HTTP server: web console, JSON API, /metrics (docs/admin.md)."""

    enabled: bool = False                       # the embedded default config turns it on
    address: IPAddr = IPv4Address("127.0.0.1")             # not loopback: cert_file and key_file needed
    port: int = Field(default=8025, ge=1, le=65535)
    cert_file: OptionalFile = None              # PEM, relative to the config file
    key_file: OptionalFile = None
    users_file: OptionalPath = Path("admin-users")  # relaywarden admin-user add ...
    session_timeout: DurationText = 8 * 3600.0  # idle time before a console login ends
    metrics_token_file: OptionalFile = None     # None: /metrics open to loopback clients only
    ldap_roles: LdapRoleConfig
    _metrics_token: str | None = PrivateAttr(default=None)   # metrics_token_file's, at load

    @model_validator(mode="after")
    def _tls(self) -> AdminConfig:
        found: list[tuple[tuple[str | int, ...], str]] = []
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            found.append(((missing,), "missing (cert_file and key_file go together)"))
        elif self.cert_file is not None and self.key_file is not None:
            bad = certificate_problem(cert_file=self.cert_file, key_file=self.key_file,
                                      min_version="TLSv1.2")
            if bad is not None:
                found.append(((bad[0],), bad[1]))
        if self.metrics_token_file is not None:
            try:
                self._metrics_token = _read_password(self.metrics_token_file,
                                                     "metrics_token_file").strip()
            except PydanticCustomError as exc:   # the one password-file reader's problem
                found.extend(found_in(exc))
        if not self.address.is_loopback and self.cert_file is None:
            found.append((("address",), f"{self.address} is not a loopback address: the console "
                          "and API need TLS there (set cert_file and key_file)"))
        if found:
            raise problems(found)
        return self

    @property
    def tls(self) -> bool:
        return self.cert_file is not None and self.key_file is not None

    def metrics_token(self) -> str | None:
        """Read with the config (SIGHUP reads it again), by the one password-file reader."""
        return self._metrics_token or None


class HistoryConfig(Strict):
    """Message history (history.sqlite3 in the data directory), fed by the admin process."""

    enabled: bool = True
    keep_days: int = Field(default=30, ge=1)


def _https_url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not re.match(r"^https://[^/\s]+(/\S*)?$", text):
        raise ValueError(f"{text!r} is not an https:// URL")
    return text


HttpsUrl = Annotated[str | None, PlainValidator(_unset_if_empty(_https_url))]

MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# (the "auth_uri" of the client_secret JSON Google gives for a Desktop app OAuth client)
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
MICROSOFT_GRAPH = "https://graph.microsoft.com"
# The scopes a token is asked for when `scopes` is not set (docs/delivery.md): Exchange
# Online's app-only SMTP (SMTP.SendAsApp is granted to the app), its delegated SMTP.Send,
# and Gmail's full scope, the one SMTP accepts.
DEFAULT_SCOPES: dict[tuple[str, str | None], list[str]] = {
    ("microsoft", "client_credentials"): ["https://outlook.office365.com/.default"],
    # (msal adds offline_access itself and refuses it in the list)
    ("microsoft", "refresh_token"): ["https://outlook.office.com/SMTP.Send"],
    ("google", "service_account"): ["https://mail.google.com/"],
    ("google", "refresh_token"): ["https://mail.google.com/"],
}
_KIND_KEYS = {
    "microsoft": {"tenant", "authority", "certificate_file", "key_file", "graph_endpoint"},
    "google": {"service_account_file", "subject", "token_uri", "auth_uri"},
}
OAuthFlow = Literal["client_credentials", "refresh_token", "service_account"]
_FLOWS: dict[str, tuple[OAuthFlow, ...]] = {
    "microsoft": ("client_credentials", "refresh_token"),
    "google": ("service_account", "refresh_token"),
}


class OAuthProviderConfig(Strict):
    """[oauth.NAME]: where relay routes get OAuth2 access tokens (relaywarden.oauth)."""

    kind: Literal["microsoft", "google"]
    # microsoft: "client_credentials" (app-only, the default) or "refresh_token" (a
    # delegated mailbox, `relaywarden oauth login`); google: "service_account" (the default:
    # domain-wide delegation, JWT bearer grant, RFC 7523) or "refresh_token".
    flow: OAuthFlow | None = None
    tenant: OptionalText = None                 # microsoft: the directory (tenant) ID or domain
    client_id: OptionalText = None
    client_secret_file: OptionalFile = None     # first line: the secret (read at load)
    certificate_file: OptionalFile = None       # microsoft: PEM certificate uploaded to the app
    key_file: OptionalFile = None               # ... and its unencrypted PEM key
    authority: HttpsUrl = None                  # microsoft: national clouds, tests; + "/" + tenant
    # microsoft: Microsoft Graph for next_hops = ["graph:NAME"] (national clouds, tests)
    graph_endpoint: HttpsUrl = None
    service_account_file: OptionalFile = None   # google: the service account's JSON key
    subject: OptionalAddress = None             # google: the mailbox to act as (default: route username)
    token_uri: HttpsUrl = None                  # google: default the key file's, else Google's
    # google, flow = "refresh_token": the authorization endpoint `oauth login` sends the
    # browser to (default Google's; tests)
    auth_uri: HttpsUrl = None
    refresh_token_file: OptionalFile = None     # a refresh token obtained elsewhere (first use only)
    scopes: list[Text] | None = None            # default: DEFAULT_SCOPES
    ca_file: OptionalFile = None                # trust anchors for the identity endpoints
    refresh_margin: Duration = 300.0            # refresh this many seconds before expiry
    timeout: Duration = 30.0                    # per HTTP request to the identity platform
    _client_secret: str | None = PrivateAttr(default=None)
    _certificate: Any = PrivateAttr(default=None)
    _service_account: dict | None = PrivateAttr(default=None)
    _refresh_token_seed: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _complete(self) -> OAuthProviderConfig:
        from relaywarden.oauth.files import CredentialFileError, load_certificate, load_service_account

        found: list[tuple[tuple[str | int, ...], str]] = []
        kind = self.kind
        other = "google" if kind == "microsoft" else "microsoft"
        for key in sorted(_KIND_KEYS[other]):
            if key in self.model_fields_set and getattr(self, key) is not None:
                found.append(((key,), f'not used with kind = "{kind}"'))
        if self.flow is None:
            self.flow = _FLOWS[kind][0]
        elif self.flow not in _FLOWS[kind]:
            found.append((("flow",), f'{self.flow!r} is not a {kind} flow; use '
                          + " or ".join(repr(f) for f in _FLOWS[kind])))
        if self.scopes is None:
            self.scopes = list(DEFAULT_SCOPES.get((kind, self.flow), []))
        elif not self.scopes:
            found.append((("scopes",), "must not be empty (leave it out for the default)"))
        cert = self.certificate_file is not None or self.key_file is not None
        if kind == "microsoft":
            for key in ("tenant", "client_id"):
                if getattr(self, key) is None:
                    found.append(((key,), 'missing (required with kind = "microsoft")'))
            if self.authority is None:
                self.authority = MICROSOFT_AUTHORITY
            if self.graph_endpoint is None:
                self.graph_endpoint = MICROSOFT_GRAPH
            if self.client_secret_file is not None and cert:
                found.append((("client_secret_file",), "set either client_secret_file or "
                              "certificate_file + key_file, not both"))
            elif cert and (self.certificate_file is None or self.key_file is None):
                missing = "key_file" if self.key_file is None else "certificate_file"
                found.append(((missing,), "missing (certificate_file and key_file go together)"))
            elif self.flow == "client_credentials" and self.client_secret_file is None and not cert:
                found.append((("client_secret_file",), 'missing: flow = "client_credentials" needs '
                              "client_secret_file or certificate_file + key_file"))
        else:
            if self.flow == "service_account":
                if self.service_account_file is None:
                    found.append((("service_account_file",), 'missing (required with flow = "service_account")'))
                for key in ("client_id", "client_secret_file", "refresh_token_file", "auth_uri"):
                    if getattr(self, key) is not None:
                        found.append(((key,), 'not used with flow = "service_account"'))
            elif self.flow == "refresh_token":
                for key in ("client_id", "client_secret_file"):
                    if getattr(self, key) is None:
                        found.append(((key,), 'missing (required with kind = "google", flow = "refresh_token")'))
                for key in ("service_account_file", "subject"):
                    if getattr(self, key) is not None:
                        found.append(((key,), 'not used with flow = "refresh_token"'))
        if self.flow != "refresh_token" and self.refresh_token_file is not None:
            found.append((("refresh_token_file",), 'not used unless flow = "refresh_token"'))
        if found:
            raise problems(found)
        # The files: read now, so that a config check (no network) finds what is wrong.
        try:
            if self.client_secret_file is not None:
                self._client_secret = _read_password(self.client_secret_file, "client_secret_file")
            if self.refresh_token_file is not None:
                self._refresh_token_seed = _read_password(self.refresh_token_file,
                                                          "refresh_token_file").strip()
        except PydanticCustomError as exc:
            raise problems(found_in(exc)) from None
        try:
            if self.certificate_file is not None and self.key_file is not None:
                self._certificate = load_certificate(self.certificate_file, self.key_file)
            if self.service_account_file is not None:
                self._service_account = load_service_account(self.service_account_file)
        except CredentialFileError as exc:
            raise problem((exc.key,), str(exc)) from None
        if kind == "google" and self.token_uri is None:
            self.token_uri = (self._service_account or {}).get("token_uri") or GOOGLE_TOKEN_URI
        if kind == "google" and self.flow == "refresh_token" and self.auth_uri is None:
            self.auth_uri = GOOGLE_AUTH_URI
        return self

    def client_secret(self) -> str | None:
        return self._client_secret

    def certificate(self):
        """The client certificate (relaywarden.oauth.files.CertificateCredential) or None."""
        return self._certificate

    def service_account_info(self) -> dict | None:
        return self._service_account

    def refresh_token_seed(self) -> str | None:
        return self._refresh_token_seed


class RecipientValidationConfig(Strict):
    """[recipients."DOMAIN"]: who exists at a hosted domain (policy/recipients.py)."""
    # Files of addresses and @domain catch-alls, one per line; re-read when they change.
    files: list[OptionalFile] = []
    # Ask the directory of [auth.ldap] (search mode: bind_dn, search_base) with ldap_filter.
    ldap: bool = False
    # Active Directory: mail, or any proxyAddresses value ("SMTP:" primary, "smtp:" others).
    ldap_filter: Text = "(|(mail={address})(proxyAddresses=smtp:{address}))"
    # Ask the domain's route's next hop (MAIL FROM:<>, RCPT TO, RSET) and cache the answer.
    callahead: bool = False
    positive_ttl: Duration = 3600.0
    negative_ttl: Duration = 300.0
    # A source that cannot answer (next hop down): "tempfail" (450 4.1.1) or "accept".
    on_lookup_failure: Literal["tempfail", "accept"] = "tempfail"

    @model_validator(mode="after")
    def _some_source(self) -> RecipientValidationConfig:
        if not self.files and not self.callahead and not self.ldap:
            raise ValueError("no source: set files, ldap = true or callahead = true")
        if "{address}" not in self.ldap_filter:
            raise problem(("ldap_filter",), "must contain {address}")
        if any(f is None for f in self.files):
            raise problem(("files",), "an empty file name")
        return self


class RecipientThrottleConfig(Strict):
    """[recipient_throttle]: a client naming unknown recipients (a dictionary attack)."""
    # Seconds before answering the n-th unknown recipient (the last repeats).
    delays: list[Annotated[float, Field(ge=0)]] = [0.0, 0.0, 0.0, 1.0, 2.0, 4.0]
    connection_limit: int = Field(default=10, ge=1)   # unknowns in a session: 421 4.7.0
    client_limit: int = Field(default=50, ge=1)       # ... from an address within window
    window: Duration = 900.0

    @field_validator("delays")
    @classmethod
    def _some(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one delay")
        return value


class PickupConfig(Strict):
    """The Pickup directory (as IIS had one): applications write .eml files into ``dir``;
    the relay queues them with the rules of ``group`` (server/pickup.py)."""

    dir: Path                                  # relative to the config file's directory
    group: str | None = None                   # a [groups.NAME]; None: no group rules
    poll_interval: Duration = 1.0              # seconds between looks at the folder
    # How new files are noticed (server/dirwatch.py): "auto" is inotify on a local file
    # system and polling (poll_interval) on a network share (NFS, SMB/CIFS: inotify does not
    # see what other machines write there); "inotify" or "poll" to choose.
    watch: Literal["auto", "inotify", "poll"] = "auto"
    # A file is taken once it has not been modified for this long (a writer still at it
    # would be caught half way); a file renamed into place is taken after it too.
    settle: Duration = 2.0

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: Any, info: ValidationInfo) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a non-empty path string")
        base = Path((info.context or {}).get(BASE_DIR) or Path.cwd())
        path = (base / Path(value.strip()).expanduser()).absolute()
        if not path.is_dir():
            raise ValueError(f"{value!r} is not a directory (relative paths start at the "
                             "config file's directory)")
        return path

    @field_validator("watch")
    @classmethod
    def _watch(cls, value: str) -> str:
        from relaywarden.server.dirwatch import inotify_available

        if value == "inotify" and not inotify_available():
            raise ValueError('inotify is not available here (Linux with the inotify_simple '
                             'package); use "auto" or "poll"')
        return value


def _milter_socket(text: str) -> str:
    from relaywarden.milter.client import parse_socket
    parse_socket(text)
    return text.strip()


class MilterConfig(Strict):
    """[milters.NAME]: a content filter over the Sendmail milter protocol (relaywarden/milter)."""

    # "inet:127.0.0.1:11332" (or Sendmail's "inet:11332@127.0.0.1"), "unix:/path".
    socket: Annotated[str, BeforeValidator(_string_parser(_milter_socket))]
    connect_timeout: Duration = 5.0
    command_timeout: Duration = 30.0           # each reply before the end of the message
    eom_timeout: Duration = 120.0              # the verdict after the end of the message
    # A milter that cannot be reached or answers wrongly: "tempfail" (451 4.7.1: the sender
    # tries again, nothing unfiltered passes) or "accept" (the message goes on unfiltered).
    on_failure: Literal["tempfail", "accept"] = "tempfail"


class Config(Strict):
    relay: RelayConfig
    queue: QueueConfig
    log: LogConfig
    delivery: DeliveryConfig
    dns: DnsConfig
    badmail: BadmailConfig
    screening: ScreeningConfig
    auth: AuthConfig
    admin: AdminConfig
    history: HistoryConfig
    pickup: PickupConfig | None = None
    routes: dict[str, RouteConfig] = {}
    sender_routes: dict[str, SenderRouteConfig] = {}   # in file order: the order they are tried
    groups: dict[str, GroupConfig] = {}      # in file order: the order groups are tried
    listeners: dict[str, ListenerConfig] = {}
    oauth: dict[str, OAuthProviderConfig] = {}   # token providers for auth = "xoauth2"
    # Recipient validation per hosted domain ("*": every hosted domain without its own).
    recipients: dict[str, RecipientValidationConfig] = {}
    recipient_throttle: RecipientThrottleConfig
    milters: dict[str, MilterConfig] = {}    # used by listeners.NAME.milters, in order

    # Where the config came from: the path as given, or "<default>". Set by load.py;
    # private so that no TOML key can set it.
    _source: str = PrivateAttr(default="<default>")

    @field_validator("routes", mode="before")
    @classmethod
    def _route_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            found = []
            for key in value:
                try:
                    match.parse_domain_pattern(key)
                except ValueError as exc:
                    found.append(((key,), f"route key: {exc}"))
            if found:
                raise problems(found)
        return value

    @field_validator("routes")
    @classmethod
    def _normalise_routes(cls, value: dict[str, RouteConfig]) -> dict[str, RouteConfig]:
        routes: dict[str, RouteConfig] = {}
        found = []
        for key, route in value.items():
            domain = match.parse_domain_pattern(key)
            if domain in routes:
                found.append(((key,), f"route for {domain!r} is defined twice"))
            routes[domain] = route
        if found:
            raise problems(found)
        return routes

    @field_validator("sender_routes", "groups", "listeners", "oauth", "milters", mode="before")
    @classmethod
    def _table_names(cls, value: Any, info: ValidationInfo) -> Any:
        what = {"sender_routes": "sender route", "groups": "group", "listeners": "listener",
                "oauth": "oauth provider", "milters": "milter"}
        if isinstance(value, dict):
            assert info.field_name is not None     # a field validator
            for name in value:
                _check_name(name, what[info.field_name])
        return value

    @field_validator("listeners")
    @classmethod
    def _some_listener(cls, value: dict[str, ListenerConfig]) -> dict[str, ListenerConfig]:
        if not value:
            raise ValueError("at least one listener is required ([listeners.NAME])")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        found: list[tuple[tuple[str | int, ...], str]] = []
        hosted = {d.lower() for d in self.relay.hosted_domains}
        for domain, rv in self.recipients.items():
            ldap = self.auth.ldap
            if rv.ldap and (ldap is None or not ldap.bind_dn or not ldap.search_base):
                found.append((("recipients", domain, "ldap"),
                              "needs [auth.ldap] with bind_dn, bind_password_file and"
                              " search_base (the service account searches the directory)"))
            if domain != "*" and domain.lower().rstrip(".") not in hosted:
                found.append((("recipients", domain),
                              f"{domain!r} is not in relay.hosted_domains: only hosted domains"
                              " are validated (mail to other domains is relayed or refused)"))
        used: dict[tuple[Any, int], str] = {}
        for name, listener in self.listeners.items():
            endpoint = (listener.address, listener.port)
            where = _show_endpoint(listener.address, listener.port)
            if endpoint in used:
                found.append(
                    (("listeners", name, "port"), f"{where} is already used by listener {used[endpoint]!r}")
                )
            else:
                used[endpoint] = name
            for index, milter in enumerate(listener.milters):
                if milter not in self.milters:
                    known = ", ".join(self.milters) or "none defined"
                    found.append((("listeners", name, "milters", index),
                                  f"unknown milter {milter!r} (milters: {known})"))
            for index, group in enumerate(listener.groups or []):
                if group not in self.groups:
                    known = ", ".join(self.groups) or "none defined"
                    found.append(
                        (("listeners", name, "groups", index), f"unknown group {group!r} (groups: {known})")
                    )
        if self.pickup is not None and self.pickup.group is not None and self.pickup.group not in self.groups:
            known = ", ".join(self.groups) or "none defined"
            found.append((("pickup", "group"), f"unknown group {self.pickup.group!r} (groups: {known})"))
        if self.admin.enabled and (self.admin.address, self.admin.port) in used:
            found.append((("admin", "port"), f"{_show_endpoint(self.admin.address, self.admin.port)}"
                          f" is already used by listener {used[(self.admin.address, self.admin.port)]!r}"))
        for name, sender_route in self.sender_routes.items():
            for index, group in enumerate(sender_route.groups):
                if group not in self.groups:
                    known = ", ".join(self.groups) or "none defined"
                    found.append(
                        (("sender_routes", name, "groups", index), f"unknown group {group!r} (groups: {known})")
                    )
        for key, route in self.routes.items():
            if route.atrn_users and (key.startswith("*") or key.startswith("[")):
                found.append((("routes", key, "atrn_users"),
                              "ATRN collects the mail of named domains: use a route per domain"))
            if route.atrn_users and not any(listener.auth.enabled for listener in self.listeners.values()):
                found.append((("routes", key, "atrn_users"),
                              "ATRN needs AUTH: no listener has auth.enabled = true"))
            if key.startswith("[") and "mx" in route.next_hops:
                index = route.next_hops.index("mx")
                found.append((("routes", key, "next_hops", index), '"mx" cannot be used for an address literal'))
        for table, hop_settings in self._hop_tables():
            for hop in hop_settings.next_hops:
                if (courier := _courier(hop)) is not None:
                    from relaywarden.config.couriers import scheme_of

                    found += [((*table, *key), message) for key, message in
                              scheme_of(courier[0]).check(courier[1], self, hop_settings)]
            tls = hop_settings.tls or self.delivery.tls
            if hop_settings.implicit_tls and tls is TlsMode.NONE:
                where = "" if hop_settings.tls else " (from delivery.tls)"
                found.append(((*table, "implicit_tls"), f'contradicts tls = "none"{where}'))
            if hop_settings.auth in ("xoauth2", "oauthbearer"):
                if hop_settings.oauth is not None and hop_settings.oauth not in self.oauth:
                    known = ", ".join(self.oauth) or "none defined"
                    found.append(((*table, "oauth"), f"unknown oauth provider "
                                  f"{hop_settings.oauth!r} (providers: {known})"))
                if tls is TlsMode.NONE:
                    where = "" if hop_settings.tls else " (from delivery.tls)"
                    found.append(((*table, "auth"), f'"{hop_settings.auth}" sends a bearer token: '
                                  f'it needs TLS, and tls = "none"{where}'))
            elif hop_settings.username is not None and tls is TlsMode.NONE and not hop_settings.auth_without_tls:
                where = "" if hop_settings.tls else " (from delivery.tls)"
                found.append((
                    (*table, "username"),
                    f'AUTH with tls = "none"{where} sends the password in clear; '
                    "set auth_without_tls = true if the next hop is on a trusted network",
                ))
        for name, listener in self.listeners.items():
            if listener.auth.enabled and self.auth.users_file is None and self.auth.ldap is None:
                found.append((("listeners", name, "auth", "enabled"),
                              "no backend to check passwords: set auth.users_file or [auth.ldap]"))
        if not self.dns.reverse_lookups:
            for name, listener in self.listeners.items():
                if listener.access.require_rdns:
                    found.append((("listeners", name, "access", "require_rdns"),
                                  "needs dns.reverse_lookups = true"))
            # A host-name entry can only match a verified reverse-DNS name: without lookups
            # it would silently never match, which an admin would not expect.
            for name, listener in self.listeners.items():
                for kind in ("allow", "deny"):
                    for index, entry in enumerate(getattr(listener.access, kind)):
                        if isinstance(entry, match.HostnameEntry):
                            found.append((("listeners", name, "access", kind, index),
                                          f"host name {entry.pattern!r} needs dns.reverse_lookups = true"))
            for name, group_config in self.groups.items():
                for index, pattern in enumerate(group_config.hostnames):
                    found.append((("groups", name, "hostnames", index),
                                  f"host name {pattern!r} needs dns.reverse_lookups = true"))
        if found:
            raise problems(found)

        # Resolve defaults that come from other tables.
        self.log.dir = self.relay.data_dir / self.log.dir
        self.badmail.dir = self.relay.data_dir / self.badmail.dir
        if self.delivery.helo_name is None:
            self.delivery.helo_name = self.relay.hostname
        for _, hop_settings in self._hop_tables():
            if hop_settings.tls is None:
                hop_settings.tls = self.delivery.tls
        for listener in self.listeners.values():
            if listener.max_message_size is None:
                listener.max_message_size = self.relay.max_message_size
            if listener.groups is None:
                listener.groups = list(self.groups)
            else:
                # Groups are tried in file order whatever order the listener lists them.
                chosen = set(listener.groups)
                listener.groups = [name for name in self.groups if name in chosen]
        return self

    def _hop_tables(self) -> list[tuple[tuple[str, str], HopConfig]]:
        return [(("routes", key), route) for key, route in self.routes.items()] + [
            (("sender_routes", name), route) for name, route in self.sender_routes.items()
        ]

    # Convenience views ------------------------------------------------------------
    @property
    def source(self) -> str:
        return self._source

    @property
    def data_dir(self) -> Path:
        """Absolute: queue, logs and badmail live below it."""
        return self.relay.data_dir

    @property
    def log_dir(self) -> Path:
        return self.log.dir


def _show_endpoint(address: IPv4Address | IPv6Address, port: int) -> str:
    return f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"


def config_warnings(cfg: Config) -> list[str]:
    """Things that load but probably will not work, as `FILE: dotted.key: ...` lines.

    A wildcard bind ("0.0.0.0:25") next to a specific one on the same port ("10.0.0.1:25")
    works on Windows and the BSDs but fails with "address in use" on Linux; it is not an
    error because the config is valid where the platform allows it.
    """
    found = []
    listeners = list(cfg.listeners.items())
    for name, listener in listeners:
        for other_name, other in listeners:
            if (
                other_name != name and listener.port == other.port
                and listener.address.version == other.address.version
                and listener.address.is_unspecified and not other.address.is_unspecified
            ):
                found.append(
                    f"{cfg.source}: listeners.{other_name}.address: "
                    f"{_show_endpoint(other.address, other.port)} overlaps "
                    f"{_show_endpoint(listener.address, listener.port)} of listener {name!r}; "
                    "on Linux the second bind fails with 'address in use'"
                )
    found += _hosted_without_route(cfg)
    found += _users_file_missing(cfg)
    found += _groups_outside_relay_networks(cfg)
    for table, hop_settings in cfg._hop_tables():
        if hop_settings.password_inline:
            found.append(
                f"{cfg.source}: {dotted_key((*table, 'password'))}: the password is written in "
                "the config file; prefer password_file (a file only the relay can read)"
            )
    return found


def _hosted_without_route(cfg: Config) -> list[str]:
    """A hosted domain is mail *we* accept; without its own route it goes where the router
    (delivery/routing.py) sends everything else: a sender route, routes."*", else MX, i.e.
    the internet's way, back to this relay (a loop until expiry) or to a smart host that
    hands it back. The inbound job needs a route to the internal server. The warning says
    where the mail really goes, in the router's order."""
    found = []
    wildcards = [key for key in cfg.routes if key.startswith("*.")]
    catch_all = cfg.routes.get("*")
    for index, domain in enumerate(cfg.relay.hosted_domains):
        if domain in cfg.routes:
            continue
        below = domain[2:] if domain.startswith("*.") else domain
        if not domain.startswith("[") and any(match.domain_matches(key, below) for key in wildcards):
            continue
        if domain.startswith("["):
            # An address literal without its own route goes to that address (RFC 5321
            # 4.1.3): no sender route or routes."*" applies.
            goes = f"delivered to the address literal {domain} itself, possibly back to this relay"
        else:
            goes = _default_route_text(catch_all)
            for name, sender_route in cfg.sender_routes.items():
                goes += (f"; mail that sender_routes.{name} matches goes to "
                         f"{_hops_text(sender_route.next_hops)} instead")
        found.append(
            f"{cfg.source}: relay.hosted_domains[{index}]: {domain!r} has no route "
            f"(routes.\"{domain}\"); its mail would be {goes}"
        )
    return found


def _hops_text(hops: list[str]) -> str:
    if len(hops) == 1:
        return f"smart host {hops[0]}"
    return f"next hops {', '.join(hops)}"


def _default_route_text(catch_all: RouteConfig | None) -> str:
    """Where routes."*" (or, without it, MX) sends a domain: the tail of a warning."""
    where = 'via routes."*" '
    if catch_all is None:
        return "delivered by MX lookup, possibly back to this relay"
    if catch_all.hold:
        return 'held in the queue by routes."*" (hold = true), not delivered'
    if all(hop == "mx" for hop in catch_all.next_hops):
        return f"delivered {where}by MX lookup, possibly back to this relay"
    return f"delivered {where}to {_hops_text(catch_all.next_hops)}, possibly back to this relay"


def _users_file_missing(cfg: Config) -> list[str]:
    """AUTH with a users file that is not there. The relay starts all the same (the file
    is re-read when it changes, so `relaywarden user add` needs no reload: auth/users.py),
    and until then every local login fails with 535 5.7.8, which the admin should know
    before the users find out."""
    path = cfg.auth.users_file
    listeners = [name for name, listener in cfg.listeners.items() if listener.auth.enabled]
    # A path that exists but is no file is an error already (_config_path).
    if path is None or not listeners or path.exists():
        return []
    keys = ", ".join(f"listeners.{name}.auth.enabled" for name in listeners)
    who = "only [auth.ldap] users can log in" if cfg.auth.ldap is not None else (
        "every AUTH fails (535 5.7.8)")
    return [f"{cfg.source}: auth.users_file: {path} does not exist: {who} on {keys} until it is "
            f"created (relaywarden user add NAME --file {path}; read without a reload)"]


def _v4(network: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    """An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) as the IPv4 network it stands
    for: the policy matches clients both ways (policy.match.first_network)."""
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped:
        return IPv4Network((network.network_address.ipv4_mapped, network.prefixlen - 96))
    return network


def _groups_outside_relay_networks(cfg: Config) -> list[str]:
    """A group that quarantines foreign mail (on_violation = "badmail") on a listener that
    does not let its networks relay: relay permission is checked before the group's
    recipient_domains (policy/engine.py check_recipient), so that mail is refused
    (550 5.7.1 Unable to relay) and never reaches badmail. The pitfall the example config
    describes at [listeners.outbound.relay]."""
    found = []
    for lname, listener in cfg.listeners.items():
        relay = [_v4(net) for net in listener.relay.networks]
        for gname in listener.groups or ():
            group = cfg.groups[gname]
            if group.on_violation != "badmail" or group.recipient_domains is None:
                continue
            for index, network in enumerate(group.networks):
                net = _v4(network)
                # One IP version (collapse_addresses needs that); mypy cannot see it.
                same: list[Any] = [r for r in relay if r.version == net.version]
                covered = list(collapse_addresses(same))
                if any(net.subnet_of(r) for r in covered):
                    continue
                how = "only partly in" if any(net.overlaps(r) for r in covered) else "not in"
                found.append(
                    f"{cfg.source}: groups.{gname}.networks[{index}]: {network} is {how} "
                    f"listeners.{lname}.relay.networks: its mail to domains that are not hosted "
                    "is refused there (550 5.7.1 Unable to relay) instead of quarantined by "
                    f"on_violation = \"badmail\"; add it to listeners.{lname}.relay.networks"
                )
    return found
