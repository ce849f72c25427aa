"""The client side of SMTP, sans-IO: commands out, replies in (RFC 5321 4.1, 4.2).

The driver (delivery/client.py) owns the socket and the order of the dialogue; this module
owns the bytes:

    parser = ReplyParser()
    parser.feed(bytes_from_socket)
    reply = parser.next_reply()              # None: wait for more bytes
    wire = mail_from("a@example.org", size=1234, body="8BITMIME", smtputf8=False,
                     ret=None, envid=None)   # b"MAIL FROM:<a@example.org> SIZE=1234 ...\\r\\n"
    stuffer = DotStuffer()
    for chunk in content: send(stuffer.feed(chunk))
    send(stuffer.end())

Nothing that comes from an envelope can become a second command: every command builder
refuses CR, LF and NUL (ValueError) before a byte is produced, and addresses are checked
with the same Path parser the server uses, so a parameter cannot be smuggled through an
address either.
"""

from __future__ import annotations

import functools

import re
from dataclasses import dataclass

from ._data import find_dot_line
from .address import parse_path
from .reply import Reply

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "DotStuffer",
    "Extensions",
    "ProtocolError",
    "ReplyParser",
    "command",
    "mail_from",
    "rcpt_to",
    "xtext_encode",
]

# RFC 5321 4.5.3.1.5 sets 512 octets for a reply line; real servers send longer banners, so
# we allow four times that and call anything longer garbage (it is never legitimate SMTP).
MAX_REPLY_LINE = 2048
# A multi-line reply of more lines than this is a server flooding us (RFC 5321 sets no limit;
# EHLO replies are ~20 lines).
MAX_REPLY_LINES = 1000

# Reply-code = %x32-35 %x30-35 %x30-39 (RFC 5321 4.2); the middle digit is read leniently.
_CODE = re.compile(rb"[2-5][0-9][0-9]")
# RFC 3463 2: class.subject.detail.
_ENHANCED = re.compile(r"([245])\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})")
_VERB = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
# RFC 3461 4.2: addr-type = atom.
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# CR, LF or NUL anywhere (one C search; a generator over the three cost ~8 calls per
# relayed message, issue 15).
_FORBIDDEN = re.compile("[\r\n\0]").search
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ProtocolError(Exception):
    """The server sent something that is not SMTP (bad code, over-long line, mixed codes)."""


# --- EHLO extensions ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Extensions:
    """The service extensions a server announced in its EHLO reply (RFC 5321 4.1.1.1).

    `size`: None when SIZE was not announced, 0 when it was announced without a limit
    ("SIZE" or "SIZE 0", RFC 1870 4), else the limit in octets. `Extensions()` (all off) is
    what a HELO-only server offers.
    """

    pipelining: bool = False        # RFC 2920
    size: int | None = None         # RFC 1870
    eightbitmime: bool = False      # RFC 6152
    smtputf8: bool = False          # RFC 6531
    dsn: bool = False               # RFC 3461
    starttls: bool = False          # RFC 3207
    enhancedstatuscodes: bool = False   # RFC 2034
    auth: tuple[str, ...] = ()      # RFC 4954, upper-case mechanism names
    chunking: bool = False          # RFC 3030

    @classmethod
    def parse(cls, reply: Reply) -> Extensions:
        """Read the ehlo-lines of a 250 reply; the first line (the domain) is skipped.

        ehlo-line = ehlo-keyword *( SP ehlo-param ), keywords are case-insensitive.
        Unknown keywords are ignored, and so is a malformed SIZE value (as if not announced).
        """
        flags: dict[str, bool] = {}
        size: int | None = None
        auth: list[str] = []
        for line in reply.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword, params = words[0].upper(), words[1:]
            # Old servers (Exchange, old Sendmail) announce "AUTH=LOGIN PLAIN": the draft
            # syntax before RFC 2554. Treat it as AUTH.
            if keyword.startswith("AUTH="):
                params = [keyword[5:], *params]
                keyword = "AUTH"
            if keyword == "SIZE":
                if not params:
                    size = 0
                elif params[0].isdigit() and len(params[0]) <= 20:
                    size = int(params[0])
            elif keyword == "AUTH":
                auth.extend(p.upper() for p in params if p.upper() not in auth)
            else:
                flags[keyword] = True
        return cls(
            pipelining=flags.get("PIPELINING", False),
            size=size,
            eightbitmime=flags.get("8BITMIME", False),
            smtputf8=flags.get("SMTPUTF8", False),
            dsn=flags.get("DSN", False),
            starttls=flags.get("STARTTLS", False),
            enhancedstatuscodes=flags.get("ENHANCEDSTATUSCODES", False),
            auth=tuple(auth),
            chunking=flags.get("CHUNKING", False),
        )


# --- replies ------------------------------------------------------------------------------------

class ReplyParser:
    """Bytes in, `Reply` values out (RFC 5321 4.2, multi-line replies 4.2.1).

        Reply-line = *( Reply-code "-" [ textstring ] CRLF )
                     Reply-code [ SP textstring ] CRLF

    A line ends with CRLF; a bare LF is accepted as a line end too (replies are not
    content, so accepting it cannot smuggle anything, and smtplib does the same).
    The enhanced status code (RFC 2034, RFC 3463) is split off the text when the first
    line's text starts with one whose class matches the reply code; then it is removed from
    every line that repeats it (RFC 2034 4 repeats it on each line).
    """

    __slots__ = ("_buf", "_lines", "_code", "_broken", "_octets", "last_octets")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []     # text lines of a multi-line reply in progress
        self._code: bytes | None = None
        self._broken: ProtocolError | None = None
        self._octets = 0                # octets of the reply in progress
        #: Octets of the last reply next_reply() returned, as received (the log's sc-bytes).
        self.last_octets = 0

    @property
    def buffered(self) -> int:
        """Octets received but not yet turned into replies."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        """Forget buffered input: RFC 3207 4.2, nothing from before TLS may be used after."""
        self._buf.clear()
        self._lines.clear()
        self._code = None
        self._octets = 0

    def next_reply(self) -> Reply | None:
        """The next complete reply, None when more bytes are needed.

        Raises ProtocolError on garbage; once raised, every later call raises it again (the
        connection cannot be trusted any more).
        """
        if self._broken is not None:
            raise self._broken
        try:
            # The reading itself, here rather than in a method of its own: a call fewer for
            # each of the ~5 replies of a relayed message (issue 15).
            while True:
                end = self._buf.find(b"\n")
                if end < 0:
                    if len(self._buf) >= MAX_REPLY_LINE:
                        raise ProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
                    return None
                if end + 1 > MAX_REPLY_LINE:
                    raise ProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
                raw = bytes(self._buf[:end])
                del self._buf[:end + 1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if self._code is None and raw[3:4] != b"-":
                    # A one-line reply, the usual case ("250 2.1.5 Ok"): read through a cache,
                    # as a server says the same few replies again and again.
                    self.last_octets = end + 1
                    return _single_reply(raw)
                self._octets += end + 1
                code, sep, text = raw[:3], raw[3:4], raw[4:]
                if not _CODE.fullmatch(code):
                    raise ProtocolError(
                        f"reply line does not start with a reply code: {raw[:40]!r}")
                if sep not in (b" ", b"-", b""):
                    raise ProtocolError(f"bad separator after the reply code: {raw[:40]!r}")
                if self._code is not None and code != self._code:
                    # RFC 5321 4.2.1: every line of a multi-line reply has the same code.
                    raise ProtocolError(
                        f"multi-line reply changes code from {self._code.decode()}"
                        f" to {code.decode()}")
                self._code = code
                self._lines.append(_text(text))
                if len(self._lines) > MAX_REPLY_LINES:
                    raise ProtocolError(f"multi-line reply longer than {MAX_REPLY_LINES} lines")
                if sep != b"-":
                    lines, self._lines, self._code = self._lines, [], None
                    self.last_octets, self._octets = self._octets, 0
                    return _make_reply(int(code), lines)
        except ProtocolError as exc:
            self._broken = exc
            raise


@functools.lru_cache(maxsize=256)
def _single_reply(raw: bytes) -> Reply:
    """A one-line reply (its CRLF removed) as a Reply; ProtocolError if it is not one.

    The same checks as the multi-line path in ReplyParser.next_reply. Memoised: a Reply is an
    immutable value of the bytes alone, and most replies repeat exactly; the unique ones
    ("250 2.0.0 Ok: queued as 4XyZ") only push old entries out (an error is never cached)."""
    code, sep, text = raw[:3], raw[3:4], raw[4:]
    if not _CODE.fullmatch(code):
        raise ProtocolError(f"reply line does not start with a reply code: {raw[:40]!r}")
    if sep not in (b" ", b""):
        raise ProtocolError(f"bad separator after the reply code: {raw[:40]!r}")
    return _make_reply(int(code), [_text(text)])


def _text(raw: bytes) -> str:
    # Replies are ASCII (RFC 5321 4.2) or UTF-8 (RFC 6531 3.7.2); anything else is shown,
    # not trusted. NUL and stray CR cannot go into a Reply (or a log line).
    text = raw.decode("utf-8", errors="replace")
    return text.replace("\0", "\ufffd").replace("\r", "\ufffd")


def _make_reply(code: int, lines: list[str]) -> Reply:
    enhanced = None
    first, _, rest = lines[0].partition(" ")
    match = _ENHANCED.fullmatch(first)
    # RFC 3463 3.1: the class must match the reply code; otherwise it is just text.
    if match and match.group(1) == str(code)[0]:
        enhanced = first
        prefix = first + " "
        lines = [
            line[len(prefix):] if line.startswith(prefix)
            else "" if line == first
            else line
            for line in lines
        ]
    return Reply(code, enhanced, tuple(lines))


# --- commands -----------------------------------------------------------------------------------

def command(verb: str, *args: str) -> bytes:
    """One command line: verb and arguments joined by spaces, CRLF added, UTF-8 encoded.

    ValueError when any part holds CR, LF or NUL: RFC 5321 2.3.8 allows them nowhere in a
    command, and a CRLF from data would end this command and start another.
    """
    if not _VERB.fullmatch(verb):
        raise ValueError(f"not an SMTP verb: {verb!r}")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"command arguments are str, not {type(arg).__name__}")
        if _FORBIDDEN(arg):
            raise ValueError(f"CR, LF or NUL in an argument of {verb}: {arg!r}")
    return (" ".join((verb, *args)) + "\r\n").encode("utf-8")


def _no_line_ends(value: str, what: str) -> str:
    # Even xtext-encoded, CR/LF would come back decoded in the next hop's DSN report
    # (Original-Envelope-Id, Original-Recipient fields: RFC 3464 2.2.1, 2.3.1).
    if _FORBIDDEN(value):
        raise ValueError(f"CR, LF or NUL in {what}: {value!r}")
    return value


def xtext_encode(text: str) -> str:
    """RFC 3461 4: xtext. "!".."~" except "+" and "=" stay, every other octet is "+HH".

    Non-ASCII is encoded octet by octet from UTF-8 (relaywarden.smtp.address.xtext_decode
    reverses this).
    """
    out = []
    for octet in text.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _path(address: str, *, utf8: bool, null_ok: bool) -> str:
    """The mailbox as "<...>", after checking it with the server's own Path parser.

    A valid Path cannot end the command or add a parameter: spaces and ">" can only appear
    inside a quoted local part, which the receiving server parses the same way. Memoised:
    a relay sends for the same few senders and recipients again and again (a refusal is
    an exception, never cached).
    """
    if _FORBIDDEN(address):
        raise ValueError(f"CR, LF or NUL in an address: {address!r}")
    path = f"<{address}>"
    parsed = parse_path(path, utf8=utf8)       # AddressError is a ValueError
    if parsed is None and not null_ok:
        raise ValueError("the null path <> is only a sender")
    return path


def mail_from(sender: str, *, size: int | None, body: str | None, smtputf8: bool,
              ret: str | None, envid: str | None) -> bytes:
    """MAIL FROM:<sender> [SIZE=n] [BODY=..] [SMTPUTF8] [RET=..] [ENVID=xtext].

    `sender` is the mailbox without angle brackets, "" for the null reverse-path. Pass only
    the parameters the server announced (the caller knows the Extensions). Non-ASCII in the
    address needs `smtputf8` (RFC 6531 3.4).
    """
    parts = ["FROM:" + _path(sender, utf8=smtputf8, null_ok=True)]
    if size is not None:
        if size < 0:
            raise ValueError(f"negative SIZE: {size}")
        parts.append(f"SIZE={size}")                     # RFC 1870 6
    if body is not None:
        if body.upper() not in ("7BIT", "8BITMIME"):     # RFC 6152 2
            raise ValueError(f"BODY must be 7BIT or 8BITMIME: {body!r}")
        parts.append(f"BODY={body.upper()}")
    if smtputf8:
        parts.append("SMTPUTF8")                         # RFC 6531 3.4
    if ret is not None:
        if ret.upper() not in ("FULL", "HDRS"):          # RFC 3461 4.3
            raise ValueError(f"RET must be FULL or HDRS: {ret!r}")
        parts.append(f"RET={ret.upper()}")
    if envid is not None:
        parts.append("ENVID=" + xtext_encode(_no_line_ends(envid, "ENVID")))     # RFC 3461 4.4
    return command("MAIL", *parts)


def rcpt_to(address: str, *, notify: tuple[str, ...] | None, orcpt: str | None) -> bytes:
    """RCPT TO:<address> [NOTIFY=..] [ORCPT=addr-type;xtext] (RFC 3461 4.1, 4.2).

    `orcpt` is the decoded form "rfc822;user@example.com"; its address part is xtext-encoded
    here. Non-ASCII is accepted in the address: the caller sends it only in a transaction
    opened with SMTPUTF8.
    """
    parts = ["TO:" + _path(address, utf8=True, null_ok=False)]
    if notify is not None:
        values = tuple(v.upper() for v in notify)
        # RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY.
        if values != ("NEVER",) and (not values or not set(values) <= _NOTIFY_VALUES
                                     or len(set(values)) != len(values)):
            raise ValueError(f"bad NOTIFY list: {notify!r}")
        parts.append("NOTIFY=" + ",".join(values))
    if orcpt is not None:
        addr_type, semicolon, value = _no_line_ends(orcpt, "ORCPT").partition(";")
        if not semicolon or not _ADDR_TYPE.fullmatch(addr_type) or not value:
            raise ValueError(f"ORCPT must be addr-type;address: {orcpt!r}")
        parts.append(f"ORCPT={addr_type};{xtext_encode(value)}")
    return command("RCPT", *parts)


# --- DATA ---------------------------------------------------------------------------------------

def _stuffed(data: bytes) -> bytes:
    """A dot more before every dot that starts a line after the first octet (RFC 5321
    4.5.2); ``data`` itself when there is none."""
    at = find_dot_line(data)
    return data if at < 0 else data[:at] + data[at:].replace(b"\r\n.", b"\r\n..")


class DotStuffer:
    """Message content -> DATA wire bytes, chunk by chunk (RFC 5321 4.5.2).

    A line that starts with "." gets one more "."; nothing else changes. The content has
    CRLF line ends already (the server side refused or normalized bare CR/LF), and only a
    CRLF starts a line here, as in the server's DATA reader. A "\\r\\n." split across chunks
    ("...\\r" | "\\n.x" or "...\\r\\n" | ".x") is stuffed the same as an unsplit one.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        # How much of a CRLF the output ends with: 2 = at a line start (as at the start of
        # the data, RFC 5321 4.1.1.4), 1 = after a CR, 0 = inside a line.
        self._tail = 2

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        chunk = bytes(chunk)
        split = -1
        if self._tail == 2 and chunk[:1] == b".":
            split = 0
        elif self._tail == 1 and chunk[:2] == b"\n.":
            split = 1
        # bytes.replace does the lines inside the chunk in C; only the boundary is Python.
        # Found first by find_dot_line: a chunk without a dot line (base64, most of a large
        # message) is sent as it is, without replace()'s slower search of it (issue 15).
        if split >= 0:
            out = chunk[:split] + b"." + _stuffed(chunk[split:])
        else:
            out = _stuffed(chunk)
        if chunk.endswith(b"\r\n") or (self._tail == 1 and chunk == b"\n"):
            self._tail = 2
        elif chunk.endswith(b"\r"):
            self._tail = 1
        else:
            self._tail = 0
        return out

    def end(self) -> bytes:
        """The final CRLF if the content lacks it, then ".\\r\\n" (RFC 5321 4.1.1.4)."""
        tail, self._tail = self._tail, 2
        if tail == 2:
            return b".\r\n"
        if tail == 1:
            return b"\n.\r\n"            # complete the CRLF the content started
        return b"\r\n.\r\n"
