"""Envelope addresses: the Path syntax of RFC 5321 4.1.2, with RFC 6531 (SMTPUTF8).

    Path          = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l         = At-domain *( "," At-domain )          ; source route, ignored (C)
    Mailbox       = Local-part "@" ( Domain / address-literal )
    Local-part    = Dot-string / Quoted-string

Length limits are RFC 5321 4.5.3.1: local part 64 octets, domain 255, path 256.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from .reply import Reply, reply

__all__ = ["Address", "AddressError", "parse_path", "split_path", "xtext_decode"]

MAX_LOCAL_PART = 64       # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255          # 4.5.3.1.2
MAX_PATH = 256            # 4.5.3.1.3, including the angle brackets
MAX_LABEL = 63            # RFC 1035 2.3.4

# atext (RFC 5322 3.2.3), the characters of a Dot-string atom ("-" last: it is literal).
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING_ASCII = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# RFC 6531 3.3: atext =/ UTF8-non-ascii.
_DOT_STRING_UTF8 = re.compile(rf"[\u0080-\U0010ffff{_ATEXT}]+(?:\.[\u0080-\U0010ffff{_ATEXT}]+)*")
# sub-domain = Let-dig [Ldh-str]
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Standardized-tag ":" 1*dcontent; only "IPv6" is registered (RFC 5321 4.1.3).
_GENERAL_LITERAL = re.compile(r"([A-Za-z0-9-]*[A-Za-z0-9]):([\x21-\x5a\x5e-\x7e]+)")
# RFC 3461 4: hexchar = "+" 2(HEXDIG upper case); xchar = "!".."~" except "+" and "=".
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")

_SYNTAX = reply(501, "5.1.3", "Bad address syntax")
_NO_BRACKETS = reply(501, "5.1.3", "Address must be enclosed in <>")
_PATH_TOO_LONG = reply(501, "5.1.3", "Path too long")                 # RFC 5321 4.5.3.1.10
_LOCAL_TOO_LONG = reply(553, "5.1.3", "Local part too long")
_DOMAIN_TOO_LONG = reply(553, "5.1.2", "Domain name too long")
_BAD_DOMAIN = reply(501, "5.1.3", "Bad domain syntax")
_BAD_LITERAL = reply(501, "5.1.3", "Bad address literal")
_BAD_IDN = reply(553, "5.1.2", "Internationalized domain name cannot be encoded")
# RFC 6531 3.7.4.1 (and RFC 3463 5.6.7): non-ASCII needs the SMTPUTF8 parameter.
_NEEDS_UTF8 = reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")


class AddressError(ValueError):
    """An envelope address the server refuses; `reply` is what the client is told."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed Mailbox (RFC 5321 4.1.2)."""

    local: str                     # de-quoted local part, case preserved
    domain: str                    # lower-case, A-label, "[10.0.0.1]"; "" only for <postmaster>
    literal: bool = False          # domain is an address literal
    route: tuple[str, ...] = ()    # source route (ignored, RFC 5321 3.6.1 and C)
    quoted: bool = False           # local part was a Quoted-string

    def __str__(self) -> str:
        local = self.local
        if not _DOT_STRING_UTF8.fullmatch(local):
            # RFC 5321 4.1.2: a local part that is not a Dot-string must be quoted, with
            # "\" and DQUOTE escaped as quoted-pairs.
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def routing_chars(self) -> bool:
        """The local part holds '%', '!' or '@': percent hack, bang path, quoted '@'.

        A relay that honours these can be made an open relay (RFC 2505 2.10): policy
        refuses such addresses.
        """
        local = self.local
        return "%" in local or "!" in local or "@" in local


def split_path(text: str) -> tuple[str, str]:
    """Split "<path> params" into ("<path>", "params").

    The closing '>' is found outside a quoted string, so '<"a>b"@c>' is one path.
    Raises AddressError (501) when there is no path in angle brackets, or when the path is
    not followed by a space or the end of the argument.
    """
    if not text.startswith("<"):
        raise AddressError(_NO_BRACKETS)
    end = text.find(">")
    if end > 0 and '"' not in text[:end]:
        # No quoted string before the first '>': it is the closing one (the usual case;
        # the loop below would stop at the same place).
        rest = text[end + 1:]
        if rest and not rest.startswith(" "):
            raise AddressError(_SYNTAX)
        return text[: end + 1], rest.strip(" ")
    quoted = False
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1            # quoted-pair: the next character is literal
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            rest = text[i + 1:]
            if rest and not rest.startswith(" "):
                raise AddressError(_SYNTAX)
            return text[: i + 1], rest.strip(" ")
        i += 1
    raise AddressError(_NO_BRACKETS)


# Parsing is pure and an Address is a frozen value: the same sender and recipients come
# back message after message (scanners, applications), so the last few thousand are kept.
# Refused paths raise and are never kept.
@functools.lru_cache(maxsize=4096)
def parse_path(text: str, *, utf8: bool) -> Address | None:
    """Parse a Reverse-path or Forward-path, angle brackets included.

    "<>" (the null reverse-path) gives None; "<postmaster>" (any case) gives
    Address("postmaster", "") and the caller accepts it for RCPT only (RFC 5321 4.1.1.3).
    Non-ASCII is allowed only when `utf8` (MAIL had SMTPUTF8, RFC 6531 3.4).
    """
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError(_NO_BRACKETS)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: undecodable bytes smuggled into a str (e.g. a command-line
        # argument decoded with surrogateescape). Found by fuzz/fuzz_smtp.py address.
        raise AddressError(_SYNTAX) from None
    if len(encoded) > MAX_PATH:
        raise AddressError(_PATH_TOO_LONG)
    if not text.isascii() and not utf8:
        raise AddressError(_NEEDS_UTF8)
    inner = text[1:-1]
    if inner == "":
        return None
    if inner.lower() == "postmaster":
        return Address(local="postmaster", domain="")

    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        # A-d-l ":" Mailbox. The route cannot hold ':' or '"', so the first ':' ends it.
        adl, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError(_SYNTAX)
        hops = []
        for hop in adl.split(","):
            if not hop.startswith("@"):
                raise AddressError(_SYNTAX)
            hops.append(_parse_domain(hop[1:], utf8=utf8))
        route = tuple(hops)

    local, quoted, domain_text = _split_mailbox(inner, utf8=utf8)
    if domain_text.startswith("["):
        domain, literal = _parse_literal(domain_text), True
    else:
        domain, literal = _parse_domain(domain_text, utf8=utf8), False
    return Address(local=local, domain=domain, literal=literal, route=route, quoted=quoted)


def _split_mailbox(text: str, *, utf8: bool) -> tuple[str, bool, str]:
    """Local-part "@" rest -> (de-quoted local part, quoted, rest)."""
    if text.startswith('"'):
        chars = []
        i = 1
        n = len(text)
        while True:
            if i >= n:
                raise AddressError(_SYNTAX)          # unterminated quoted string
            c = text[i]
            if c == '"':
                break
            if c == "\\":
                # quoted-pairSMTP = %d92 %d32-126 (RFC 5321 4.1.2)
                if i + 1 >= n or not _qtext_ok(text[i + 1], pair=True, utf8=utf8):
                    raise AddressError(_SYNTAX)
                chars.append(text[i + 1])
                i += 2
                continue
            if not _qtext_ok(c, pair=False, utf8=utf8):
                raise AddressError(_SYNTAX)
            chars.append(c)
            i += 1
        local = "".join(chars)
        wire_local = text[: i + 1]
        rest = text[i + 1:]
        if not rest.startswith("@"):
            raise AddressError(_SYNTAX)
        quoted = True
    else:
        wire_local, at, _ = text.rpartition("@")
        if not at:
            raise AddressError(_SYNTAX)
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING_ASCII
        if not pattern.fullmatch(wire_local):
            raise AddressError(_SYNTAX)
        local = wire_local
        rest = text[len(wire_local):]
        quoted = False
    # 4.5.3.1.1: 64 octets, counted as transmitted (quotes included).
    if len(wire_local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(_LOCAL_TOO_LONG)
    return local, quoted, rest[1:]


def _qtext_ok(c: str, *, pair: bool, utf8: bool) -> bool:
    o = ord(c)
    if o >= 0x80:
        return utf8                               # RFC 6531 3.3: qtextSMTP =/ UTF8-non-ascii
    if pair:
        return 32 <= o <= 126                     # quoted-pairSMTP
    return 32 <= o <= 126 and c not in '"\\'      # qtextSMTP


def parse_domain(text: str) -> str:
    """An ASCII domain name (RFC 5321 4.1.2 Domain) -> lower case without the trailing dot;
    AddressError when it is not one."""
    return _parse_domain(text, utf8=False)


def _parse_domain(text: str, *, utf8: bool) -> str:
    """Domain (RFC 5321 4.1.2) -> lower-case A-label form without the trailing dot."""
    if text.endswith("."):
        text = text[:-1]                          # one trailing dot ("root") is tolerated
    if not text:
        raise AddressError(_BAD_DOMAIN)
    labels = []
    for label in text.split("."):
        if label.isascii():
            if not _LDH_LABEL.fullmatch(label):
                raise AddressError(_BAD_DOMAIN)
        else:
            # RFC 6531 3.3: sub-domain =/ U-label, stored as the A-label so that policy
            # compares one form. The stdlib codec is IDNA 2003 (nameprep + punycode).
            if not utf8:
                raise AddressError(_NEEDS_UTF8)
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise AddressError(_BAD_IDN) from None
            if not _LDH_LABEL.fullmatch(label):
                raise AddressError(_BAD_IDN)
        if len(label) > MAX_LABEL:
            raise AddressError(_BAD_DOMAIN)
        labels.append(label.lower())
    domain = ".".join(labels)
    if len(domain) > MAX_DOMAIN:
        raise AddressError(_DOMAIN_TOO_LONG)
    return domain


def _parse_literal(text: str) -> str:
    """address-literal (RFC 5321 4.1.3) -> "[1.2.3.4]" or "[ipv6:...]", lower-case."""
    if not text.endswith("]") or len(text) < 3:
        raise AddressError(_BAD_LITERAL)
    body = text[1:-1]
    general = _GENERAL_LITERAL.fullmatch(body)
    if general is None:
        try:
            ipaddress.IPv4Address(body)
        except ValueError:
            raise AddressError(_BAD_LITERAL) from None
    else:
        tag, value = general.groups()
        if tag.lower() != "ipv6":
            raise AddressError(_BAD_LITERAL)      # no other tag is registered
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise AddressError(_BAD_LITERAL) from None
        if "%" in value:
            raise AddressError(_BAD_LITERAL)      # a scope id is not an address literal
    return text.lower()


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 4 xtext ("a+2Bb" -> "a+b"); ValueError when malformed."""
    if not _XTEXT.fullmatch(text):
        raise ValueError(f"malformed xtext: {text!r}")
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    # Hex escapes stand for octets; an escaped UTF-8 sequence decodes to its character.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError(f"xtext is not UTF-8: {text!r}") from None
