"""The Sendmail milter protocol, version 6, MTA side: packets in and out, no I/O.

There is no RFC; the reference is Sendmail's libmilter (include/libmilter/mfdef.h, and
libmilter/docs/). Every packet is a 4-octet big-endian length (of what follows), one
command octet, then data. Strings are NUL-terminated.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 6
#: The largest body chunk a milter accepts (MILTER_CHUNK_SIZE in mfdef.h).
CHUNK_SIZE = 65535
#: The largest reply packet we take: a milter's header values and reply texts are short;
#: anything far larger is a broken peer, not a message.
MAX_PACKET = 1024 * 1024


class Cmd(bytes, enum.Enum):
    """Commands the MTA sends (SMFIC_*)."""
    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"


class Act(enum.IntFlag):
    """What a milter may do at end of message (SMFIF_*); we offer only what we apply."""
    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


#: The actions this MTA carries out: all of them (a milter's macro list is taken, and the
#: usual macros are sent whatever it asks).
OFFERED_ACTIONS = Act(0x1FF)


class Step(enum.IntFlag):
    """Protocol steps (SMFIP_*): which commands a milter wants, and which it answers."""
    NOCONNECT = 0x1
    NOHELO = 0x2
    NOMAIL = 0x4
    NORCPT = 0x8
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000


#: Every step we can honour. Not RCPT_REJ: only accepted recipients are sent.
OFFERED_STEPS = Step(0x1FFFFF) & ~Step.RCPT_REJ

#: Which "no reply" flag goes with which command.
NO_REPLY = {
    Cmd.CONNECT: Step.NR_CONN, Cmd.HELO: Step.NR_HELO, Cmd.MAIL: Step.NR_MAIL,
    Cmd.RCPT: Step.NR_RCPT, Cmd.DATA: Step.NR_DATA, Cmd.HEADER: Step.NR_HDR,
    Cmd.EOH: Step.NR_EOH, Cmd.BODY: Step.NR_BODY,
}
#: Which "do not send" flag goes with which command.
NOT_SENT = {
    Cmd.CONNECT: Step.NOCONNECT, Cmd.HELO: Step.NOHELO, Cmd.MAIL: Step.NOMAIL,
    Cmd.RCPT: Step.NORCPT, Cmd.DATA: Step.NODATA, Cmd.HEADER: Step.NOHDRS,
    Cmd.EOH: Step.NOEOH, Cmd.BODY: Step.NOBODY,
}


class ProtocolError(Exception):
    """The milter sent something this protocol does not allow."""


def packet(cmd: Cmd, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd.value + data


def _z(text: str) -> bytes:
    # Milter strings are C strings: a NUL inside would cut the value short.
    return text.replace("\0", "").encode("utf-8", "surrogateescape") + b"\0"


def optneg(actions: int = OFFERED_ACTIONS, steps: int = OFFERED_STEPS) -> bytes:
    return packet(Cmd.OPTNEG, struct.pack("!III", VERSION, int(actions), int(steps)))


def macros(for_cmd: Cmd, values: dict[str, str]) -> bytes:
    """SMFIC_MACRO: the macros that go with the next command (e.g. {mail_addr} with MAIL)."""
    data = for_cmd.value + b"".join(_z(k) + _z(v) for k, v in values.items() if v is not None)
    return packet(Cmd.MACRO, data)


def connect(hostname: str, ip: str, port: int) -> bytes:
    family = b"6" if ":" in ip else b"4"
    return packet(Cmd.CONNECT, _z(hostname) + family + struct.pack("!H", port) + _z(ip))


def helo(name: str) -> bytes:
    return packet(Cmd.HELO, _z(name))


def mail(sender: str, args: tuple[str, ...] = ()) -> bytes:
    return packet(Cmd.MAIL, _z(f"<{sender}>") + b"".join(_z(a) for a in args))


def rcpt(address: str, args: tuple[str, ...] = ()) -> bytes:
    return packet(Cmd.RCPT, _z(f"<{address}>") + b"".join(_z(a) for a in args))


def header(name: bytes, value: bytes) -> bytes:
    return packet(Cmd.HEADER, name.replace(b"\0", b"") + b"\0" + value.replace(b"\0", b"") + b"\0")


def body(chunk: bytes) -> bytes:
    if len(chunk) > CHUNK_SIZE:
        raise ValueError("a body chunk is at most 65535 octets")
    return packet(Cmd.BODY, chunk)


# --- what comes back ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Negotiated:
    version: int
    actions: Act
    steps: Step
    macros: dict[str, str]          # stage number ("0" connect ... ) -> space-separated names


@dataclass(frozen=True, slots=True)
class Verdict:
    """accept / continue / reject / tempfail / discard / skip, or replycode with its text."""
    kind: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """SMFIR_PROGRESS: still working (the timeout starts again)."""


@dataclass(frozen=True, slots=True)
class HeaderChange:
    """add ('h'), change ('m'; index among headers of that name, from 1; empty value:
    delete), insert ('i'; index in the whole header section, from 0)."""
    kind: str
    name: str
    value: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class EnvelopeChange:
    """change from ('e'), add recipient ('+', or '2' with ESMTP arguments), delete
    recipient ('-'). ``address`` as the milter sent it (with or without <>)."""
    kind: str
    address: str
    args: str = ""


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """SMFIR_REPLBODY: a piece of the new body (the pieces in order make all of it)."""
    data: bytes


_VERDICTS = {b"a": "accept", b"c": "continue", b"r": "reject", b"t": "tempfail",
             b"d": "discard", b"s": "skip"}


def _strings(data: bytes, count: int, what: str) -> list[str]:
    # Every string ends in a NUL: `count` strings split into at least count + 1 parts.
    parts = data.split(b"\0")
    if data[-1:] != b"\0" or len(parts) - 1 < count:
        raise ProtocolError(f"malformed {what} reply")
    return [p.decode("utf-8", "replace") for p in parts[:count]]


def parse_negotiation(data: bytes) -> Negotiated:
    if len(data) < 12:
        raise ProtocolError("option negotiation reply too short")
    version, actions, steps = struct.unpack("!III", data[:12])
    if version < 2 or version > VERSION:
        raise ProtocolError(f"milter protocol version {version} not supported")
    found: dict[str, str] = {}
    rest = data[12:]
    while len(rest) >= 4:
        (stage,) = struct.unpack("!I", rest[:4])
        end = rest.find(b"\0", 4)
        if end < 0:
            raise ProtocolError("malformed macro list in option negotiation")
        found[str(stage)] = rest[4:end].decode("ascii", "replace")
        rest = rest[end + 1:]
    return Negotiated(version, Act(actions), Step(steps), found)


def parse_reply(cmd: bytes, data: bytes):
    """One reply packet, as a value (see the classes above)."""
    if cmd in _VERDICTS:
        return Verdict(_VERDICTS[cmd])
    if cmd == b"y":
        (text,) = _strings(data, 1, "replycode")
        return Verdict("replycode", text)
    if cmd == b"p":
        return Progress()
    if cmd == b"h":
        name, value = _strings(data, 2, "add header")
        return HeaderChange("h", name, value)
    if cmd in (b"m", b"i"):
        if len(data) < 4:
            raise ProtocolError("malformed header change")
        (index,) = struct.unpack("!I", data[:4])
        name, value = _strings(data[4:], 2, "header change")
        return HeaderChange(cmd.decode(), name, value, index)
    if cmd == b"q":
        (reason,) = _strings(data, 1, "quarantine")
        return Quarantine(reason)
    if cmd in (b"+", b"-"):
        (address,) = _strings(data, 1, "recipient change")
        return EnvelopeChange(cmd.decode(), address)
    if cmd in (b"e", b"2"):
        # The address, then optionally the ESMTP arguments as one string.
        parts = data.split(b"\0")
        if data[-1:] != b"\0" or not parts[0]:
            raise ProtocolError("malformed envelope change")
        args = parts[1].decode("utf-8", "replace") if len(parts) > 2 else ""
        return EnvelopeChange(cmd.decode(), parts[0].decode("utf-8", "replace"), args)
    if cmd == b"b":
        return BodyChunk(data)
    raise ProtocolError(f"unknown milter reply {cmd!r}")


class Decoder:
    """Splits what the milter sends into (command octet, data) packets."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack("!I", self._buf[:4])
            if length < 1 or length > MAX_PACKET:
                raise ProtocolError(f"impossible packet length {length}")
            if len(self._buf) < 4 + length:
                break
            out.append((bytes(self._buf[4:5]), bytes(self._buf[5:4 + length])))
            del self._buf[:4 + length]
        return out


def split_message(head: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The header fields of a message (name, value as on the wire after the colon, folded
    lines joined with their CRLF kept, as libmilter gives them) and where the body starts.
    ``head`` must hold the whole header section; -1 if it does not end in it."""
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    while True:
        end = head.find(b"\n", pos)
        if end < 0:
            return fields, -1
        line = head[pos:end + 1]
        if line in (b"\r\n", b"\n"):
            return fields, end + 1
        text = line.rstrip(b"\r\n")
        if text[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + text)
        else:
            name, sep, value = text.partition(b":")
            if not sep:
                return fields, pos        # not a header: the body starts here (RFC 5322 2.1)
            fields.append((name.rstrip(), value))
        pos = end + 1
