"""Events the server-side protocol core hands to its driver.

An event that stands for what the client sent carries `octets`: that line's octets as
received, line end included (DataEnd: the whole message as received), for the protocol log's
cs-bytes. Like MailFrom/RcptTo's `argument` (the command text as received), it takes no part
in equality.

Decision events (Hello, MailFrom, RcptTo, DataStart, DataEnd, StartTls, Auth, AuthResponse, Etrn,
Atrn)
wait for `ServerConnection.respond()`; information events (DataChunk, Handled, Closed) need
no answer. `NEED_DATA` says: feed more bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .address import Address
from .reply import Reply

__all__ = [
    "MailParams",
    "RcptParams",
    "Hello",
    "MailFrom",
    "RcptTo",
    "DataStart",
    "DataEnd",
    "StartTls",
    "Auth",
    "AuthResponse",
    "Etrn",
    "Atrn",
    "DataChunk",
    "Handled",
    "Closed",
    "NeedData",
    "NEED_DATA",
    "Event",
    "DecisionEvent",
    "DECISION_EVENTS",
]


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM (RFC 5321 4.1.2 Mail-parameters)."""

    size: int | None = None          # SIZE=N, RFC 1870
    body: str | None = None          # "7BIT" | "8BITMIME", RFC 6152
    smtputf8: bool = False           # RFC 6531 3.4
    ret: str | None = None           # "FULL" | "HDRS", RFC 3461 4.3
    envid: str | None = None         # RFC 3461 4.4, xtext-decoded
    auth: str | None = None          # AUTH=<mailbox> or "<>", RFC 4954 5, xtext-decoded


@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (RFC 3461 4.1, 4.2)."""

    notify: tuple[str, ...] | None = None   # ("NEVER",) or a subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None                # "rfc822;user@example.com", xtext-decoded


# --- decision events ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO (extended=True) or HELO. Answer positively with `conn.ehlo_reply(text)`."""

    name: str
    extended: bool
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM; `sender` None is the null reverse-path "<>" (bounces, RFC 5321 4.5.5)."""

    sender: Address | None
    params: MailParams
    # What followed the verb, as received ("FROM:<a@b.c> SIZE=30 RET=HDRS"), for the log.
    argument: str = field(default="", compare=False)
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class RcptTo:
    recipient: Address
    params: RcptParams
    argument: str = field(default="", compare=False)   # as MailFrom.argument
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA with at least one accepted recipient: respond START_DATA (354) or 4xx/5xx."""

    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class DataEnd:
    """The end of the message. When `problem` is set, discard the message and respond it."""

    problem: Reply | None
    size: int                       # de-stuffed content octets seen
    # The message as received: dot-stuffed, with the final ".CRLF" (the log's cs-bytes).
    octets: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS: respond 220 and call `conn.tls_started()` once the handshake is done."""

    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response]; `initial` is decoded (b"" for "=")."""

    mechanism: str
    initial: bytes | None = field(repr=False)   # holds credentials: never in logs
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client line after a 334 challenge, base64-decoded."""

    data: bytes = field(repr=False)             # holds credentials: never in logs
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class Etrn:
    """ETRN (RFC 1985): start the queue for `domain` (lower-case, no trailing dot), and for
    its subdomains too when the client wrote "@domain". Answer 250, 251 (nothing waiting),
    252 or 253 (n messages started), 458 (cannot) or 459 (not allowed)."""

    domain: str
    subdomains: bool
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class Atrn:
    """ATRN (RFC 2645) from an authenticated client: the domains asked for (lower case), or
    () for all the client may collect. Answer 250 to turn the connection around: the core
    then reads nothing more (state REVERSED) and the driver becomes the SMTP client on the
    same connection, beginning with the bytes `conn.take_input()` gives. Or 450, 451, 453."""

    domains: tuple[str, ...]
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


# --- information events ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DataChunk:
    """De-stuffed message content, in order, with CRLF line ends."""

    data: bytes

    def __repr__(self) -> str:              # message content does not belong in logs
        return f"DataChunk(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Handled:
    """A command the core answered by itself. For AUTH, `argument` is "***"."""

    verb: str
    argument: str
    reply: Reply
    octets: int = field(default=0, compare=False)     # the line as received, CRLF included


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: reason "quit", "eof", "errors" or "shutdown" (a 421 was sent)."""

    reason: str
    in_transaction: bool


class NeedData:
    """The type of NEED_DATA: the core needs more bytes before the next event."""

    _instance: NeedData | None = None
    __slots__ = ()

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

DecisionEvent = Union[Hello, MailFrom, RcptTo, DataStart, DataEnd, StartTls, Auth, AuthResponse,
                      Etrn, Atrn]
DECISION_EVENTS = (Hello, MailFrom, RcptTo, DataStart, DataEnd, StartTls, Auth, AuthResponse, Etrn,
                   Atrn)
Event = Union[DecisionEvent, DataChunk, Handled, Closed]
