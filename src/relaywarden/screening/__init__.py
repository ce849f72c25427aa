"""The attachment screener: is there an attachment in this message that the rules forbid?

Pure (bytes in, a finding out, no I/O of its own), run on the whole message after DATA and
before the queue commit, in a worker thread (MIME parsing is CPU work). What the IIS era
did with ISA Server's SMTP Message Screener: block by file name extension, by content type,
by size; here also names inside ZIP archives, uuencoded files in text, and attachments of
attached messages (message/rfc822), since that is where the old tricks hide.

What is looked at, for every leaf part of the MIME tree (the email package's lenient
parser, RFC 2231 and RFC 2047 names decoded):
- its file name (Content-Disposition filename, else Content-Type name): the extension after
  the last dot, trailing dots and spaces removed ("invoice.pdf.exe. " is an .exe);
- its content type;
- the decoded size of an attachment (a part with a file name or disposition attachment);
- the member names of a ZIP attachment, one archive inside another included;
- "begin 644 name" lines of uuencoded files in text parts.
A name that cannot be read counts as a finding: the screener fails closed.
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser
from typing import cast
from urllib.parse import quote

__all__ = ["Finding", "ScreenRules", "Screener", "Stripped", "screen", "strip"]

#: ZIP archives are opened this deep (an archive in an archive in the attachment).
ZIP_DEPTH = 2
#: An archive inside an archive is unpacked up to this size (a bigger one is not looked
#: into: unpacking bombs costs more than it could find).
ZIP_INNER_MAX = 16 << 20
#: At most this many members of one archive are looked at; more is itself a finding.
ZIP_MAX_MEMBERS = 10_000
_UUENCODE = re.compile(r"^begin(?:-base64)? [0-7]{3,4} (.+?)\s*$", re.MULTILINE)
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed",
                        "application/x-zip"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ScreenRules:
    blocked_extensions: frozenset[str] = frozenset()     # lower case, without the dot
    blocked_content_types: frozenset[str] = frozenset()  # lower case, "type/subtype"
    max_attachment_size: int = 0                         # decoded bytes; 0: no limit
    look_inside_zip: bool = True

    @property
    def active(self) -> bool:
        return bool(self.blocked_extensions or self.blocked_content_types
                    or self.max_attachment_size)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str                 # the config key that decided, e.g. "screening.blocked_extensions"
    detail: str               # for the log and the reply; names come from the message
    filename: str = field(default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class Screener:
    """The screener as configured: its rules, what a finding does, which mail it looks at."""
    rules: ScreenRules
    action: str = "reject"      # "reject" (550 at the end of DATA), "badmail" or "strip"
    scope: str = "all"          # "all", "outbound" or "inbound"

    def applies(self, hosted: Iterable[bool]) -> bool:
        """Is a message with recipients in (True) or outside (False) the hosted domains
        in scope?"""
        if self.scope == "all":
            return True
        wanted = self.scope == "inbound"
        return any(h == wanted for h in hosted)


def _parse(chunks: Iterable[bytes]) -> EmailMessage:
    parser = BytesFeedParser(policy=email.policy.default)
    for chunk in chunks:
        parser.feed(chunk)
    return cast(EmailMessage, parser.close())     # what email.policy.default makes


def _findings(message: Message, rules: ScreenRules) -> Iterator[tuple[Message, Finding]]:
    for part in message.walk():
        if part.is_multipart():
            continue
        found = _screen_part(part, rules)
        if found is not None:
            yield part, found


def screen(chunks: Iterable[bytes], rules: ScreenRules) -> Finding | None:
    """The first forbidden thing in the message, or None."""
    for _, found in _findings(_parse(chunks), rules):
        return found
    return None


@dataclass(frozen=True, slots=True)
class Stripped:
    """A message with its forbidden attachments replaced by a notice each. ``content`` is
    None when that is not possible (the forbidden thing is the message's only part): the
    message is then refused like with action = "reject"."""
    content: bytes | None
    findings: tuple[Finding, ...]


def strip(chunks: Iterable[bytes], rules: ScreenRules, *, hostname: str) -> Stripped | None:
    """None for a clean message; else the message with every forbidden part replaced by
    a short text/plain attachment saying what was removed and why (as the screeners of
    Exchange and ISA Server did). The rest of the message is kept as parsed; it is written
    out again with CRLF line ends (a DKIM signature over the body does not survive this)."""
    message = _parse(chunks)
    found = list(_findings(message, rules))
    if not found:
        return None
    findings = tuple(f for _, f in found)
    if any(part is message for part, _ in found):
        return Stripped(None, findings)
    for part, finding in found:
        try:
            name = str(part.get_filename() or finding.filename or "attachment")
        except Exception:  # noqa: BLE001 - the header that could not be read goes anyway
            name = "attachment"
        notice = (f"The attachment {name!r} was removed from this message by {hostname}:\r\n"
                  f"{finding.detail} ({finding.rule}).\r\n")
        for header in list(part.keys()):
            del part[header]
        part.set_payload(notice.encode("utf-8"), charset=None)
        part["Content-Type"] = 'text/plain; charset="utf-8"'
        part["Content-Transfer-Encoding"] = "8bit"
        part["Content-Disposition"] = _attachment_header(name + ".removed.txt")
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False,
                   policy=email.policy.default.clone(linesep="\r\n")).flatten(message)
    return Stripped(out.getvalue(), findings)


def _attachment_header(filename: str) -> str:
    # RFC 2231 for a name that is not plain ASCII; printable ASCII otherwise.
    if filename.isascii() and filename.isprintable() and '"' not in filename and "\\" not in filename:
        return f'attachment; filename="{filename}"'
    return "attachment; filename*=utf-8''" + quote(filename, safe="")


def _extension(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(" .\t")
    _, dot, ext = base.rpartition(".")
    return ext.lower() if dot else ""


def _screen_part(part: Message, rules: ScreenRules) -> Finding | None:
    try:
        name = part.get_filename()
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
    except Exception as exc:  # noqa: BLE001 - a header the parser chokes on: fail closed
        return Finding("screening", f"an attachment header cannot be read ({type(exc).__name__})")
    if name is not None:
        name = str(name)
        if _extension(name) in rules.blocked_extensions:
            return Finding("screening.blocked_extensions",
                           f"attachment {name!r}: .{_extension(name)} files are not allowed", name)
    for other in _lenient_names(part):
        if other != name and _extension(other) in rules.blocked_extensions:
            return Finding("screening.blocked_extensions",
                           f"attachment {other!r}: .{_extension(other)} files are not allowed",
                           other)
    if ctype in rules.blocked_content_types:
        return Finding("screening.blocked_content_types",
                       f"attachment {name or '(no name)'!r}: type {ctype} is not allowed",
                       name or "")
    attachment = name is not None or disposition == "attachment"
    # Any attachment may be a ZIP, whatever its name says: its first bytes tell.
    needs_payload = (
        (attachment and rules.max_attachment_size)
        or (rules.look_inside_zip and rules.blocked_extensions
            and (attachment or ctype in _ZIP_TYPES))
        or (ctype.startswith("text/") and name is None and rules.blocked_extensions))
    if not needs_payload:
        return None
    try:
        decoded = part.get_payload(decode=True)   # bytes, or None for a multipart
        payload = decoded if isinstance(decoded, bytes) else b""
    except Exception:  # noqa: BLE001 - undecodable content: the recipient cannot open it either
        payload = b""
    if attachment and rules.max_attachment_size and len(payload) > rules.max_attachment_size:
        return Finding("screening.max_attachment_size",
                       f"attachment {name or '(no name)'!r} is {len(payload)} bytes, more than "
                       f"{rules.max_attachment_size}", name or "")
    if ctype.startswith("text/") and name is None:
        text = payload.decode("latin-1")
        for found in _UUENCODE.finditer(text):
            inner = found.group(1)
            if _extension(inner) in rules.blocked_extensions:
                return Finding("screening.blocked_extensions",
                               f"uuencoded file {inner!r}: .{_extension(inner)} files are not "
                               "allowed", inner)
        return None
    if rules.look_inside_zip and rules.blocked_extensions and payload[:2] == b"PK":
        return _screen_zip(payload, name or "(no name)", rules, ZIP_DEPTH)
    return None


def _lenient_names(part: Message) -> list[str]:
    """The part's file names as the lenient (compat32) parser reads its raw headers. The
    strict parser drops a parameter it finds broken, where a mail client may still read
    one: ``name*0*=''; name*1="a.exe"`` (RFC 2231 continuations with an empty first
    segment) is "" to it and "a.exe" to compat32. Both readings are screened (fail closed)."""
    legacy = email.message.Message()
    for key, value in part.raw_items():
        if key.lower() in ("content-type", "content-disposition"):
            legacy[key] = str(value)
    names = []
    try:
        for param in (legacy.get_param("filename", header="content-disposition"),
                      legacy.get_param("name")):
            if param:
                names.append(str(email.utils.collapse_rfc2231_value(param)))
    except Exception:  # noqa: BLE001 - what neither parser reads is left to the strict one
        pass
    return names


def _screen_zip(data: bytes, outer: str, rules: ScreenRules, depth: int) -> Finding | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > ZIP_MAX_MEMBERS:
                return Finding("screening.blocked_extensions",
                               f"archive {outer!r} has more than {ZIP_MAX_MEMBERS} members", outer)
            for member in members:
                inner = member.filename
                if _extension(inner) in rules.blocked_extensions:
                    return Finding("screening.blocked_extensions",
                                   f"{inner!r} inside {outer!r}: .{_extension(inner)} files are "
                                   "not allowed", inner)
                if depth > 1 and _extension(inner) == "zip" and not member.flag_bits & 0x1:
                    if member.file_size > ZIP_INNER_MAX:
                        continue    # not unpacked: a bomb costs more than it could hide
                    found = _screen_zip(archive.read(member), f"{outer}/{inner}", rules,
                                        depth - 1)
                    if found is not None:
                        return found
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            OSError, RuntimeError, ValueError):
        return None    # not a ZIP the recipient could open either
    return None
