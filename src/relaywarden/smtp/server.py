"""The server side of SMTP as a sans-IO state machine: bytes in, events out.

    conn = ServerConnection(ServerSettings(hostname="relay.example"))
    conn.greet(reply(220, None, "relay.example ESMTP"))
    conn.receive_data(bytes_from_socket)
    while (event := conn.next_event()) is not NEED_DATA:
        ...                                # decision events: conn.respond(reply)
    socket.send(conn.data_to_send())

The core answers by itself everything that needs no decision (syntax, sequence, limits,
NOOP, RSET, QUIT, ...) and reports it as `Handled`. Everything that needs one (HELO, MAIL,
RCPT, DATA, end of data, STARTTLS, AUTH) is a decision event: input after it stays
buffered until `respond()`, so replies to pipelined commands (RFC 2920) come out in order.

Which command is valid in which state is one table, `_VALID_IN`; what a reply to a decision
does to the state is another, `_AFTER_REPLY` (h11's rule: every state change in one place).
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import re
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ._data import BareLineEnds, DataReader
from .address import AddressError, parse_domain, parse_path, split_path, xtext_decode
from .events import (
    DECISION_EVENTS,
    NEED_DATA,
    Atrn,
    Auth,
    AuthResponse,
    Closed,
    DataChunk,
    DataEnd,
    DataStart,
    DecisionEvent,
    Etrn,
    Event,
    Handled,
    Hello,
    MailFrom,
    MailParams,
    NeedData,
    RcptParams,
    RcptTo,
    StartTls,
)
from .reply import (
    AUTH_ALREADY,
    AUTH_BAD_BASE64,
    AUTH_CANCELLED,
    AUTH_IN_TRANSACTION,
    AUTH_NOT_AVAILABLE,
    AUTH_SYNTAX,
    AUTH_UNKNOWN_MECHANISM,
    ATRN_NEEDS_AUTH,
    ATRN_SYNTAX,
    BAD_ENCODING,
    BAD_SEQUENCE,
    BARE_LINE_END_IN_COMMAND,
    CANNOT_VRFY,
    CLOSING,
    ETRN_IN_TRANSACTION,
    ETRN_QUEUE_NAMES,
    ETRN_SYNTAX,
    HELO_SYNTAX,
    HELP,
    LINE_TOO_LONG,
    MAIL_SYNTAX,
    MESSAGE_TOO_BIG,
    NEED_HELO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    NO_ARGUMENTS_ALLOWED,
    NO_VALID_RECIPIENTS,
    NOT_IMPLEMENTED,
    NUL_IN_COMMAND,
    OK,
    PARAM_DUPLICATE,
    PARAM_SYNTAX,
    PARAM_UNKNOWN,
    PARAMS_NEED_EHLO,
    RCPT_SYNTAX,
    RESET_OK,
    SENDER_NEEDS_DOMAIN,
    STARTTLS_UNAVAILABLE,
    TOO_MANY_ERRORS,
    TOO_MANY_RECIPIENTS,
    UNKNOWN_COMMAND,
    VRFY_SYNTAX,
    Reply,
)

__all__ = ["BareLineEnds", "ServerConnection", "ServerSettings", "ServerState", "UsageError"]

# RFC 4954 4: AUTH lines (the command with its initial response, and the responses to
# challenges) may be up to 12288 octets, more than the 512 of other commands.
AUTH_LINE_LIMIT = 12288


class UsageError(RuntimeError):
    """The driver used the connection wrongly (a bug in the caller, never the peer's fault)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    hostname: str
    max_command_line: int = 512        # octets incl. CRLF (RFC 5321 4.5.3.1.4)
    max_text_line: int = 1000          # octets incl. CRLF (4.5.3.1.6)
    max_message_size: int = 0          # 0: no limit; else SIZE=N advertised, 552 5.3.4 beyond
    max_recipients: int = 100          # more: 452 4.5.3 (RFC 5321 4.5.3.1.8)
    max_errors: int = 10               # then 421 4.7.0 and close; 0: no limit
    bare_line_ends: BareLineEnds = BareLineEnds.REJECT
    starttls: bool = False             # advertise STARTTLS
    auth_mechanisms: tuple[str, ...] = ()
    # False: AUTH is not listed in EHLO (e.g. before TLS), but an AUTH command still reaches
    # the driver, which can answer 538 5.7.11 "Encryption required" (RFC 4954 6).
    advertise_auth: bool = True
    smtputf8: bool = True
    dsn: bool = True
    etrn: bool = False                 # offer ETRN (RFC 1985); else 502 like other commands
    atrn: bool = False                 # offer ATRN (RFC 2645) to authenticated clients


class ServerState(enum.Enum):
    CONNECTED = "connected"    # greet() not called yet
    GREETED = "greeted"        # 220 sent; EHLO/HELO expected (RFC 5321 4.1.4)
    READY = "ready"            # after EHLO/HELO, no mail transaction
    MAIL = "mail"              # MAIL accepted, no recipient yet
    RCPT = "rcpt"              # at least one recipient accepted
    DATA = "data"              # 354 sent: reading message content
    AUTH = "auth"              # 334 sent: reading a SASL response line (RFC 4954 4)
    STARTTLS = "starttls"      # 220 sent to STARTTLS: waiting for tls_started()
    CLOSING = "closing"        # greeted with 554: only QUIT is served (RFC 5321 3.1)
    REVERSED = "reversed"      # 250 to ATRN: the driver is the client now, nothing is read
    CLOSED = "closed"


_S = ServerState
_SESSION = frozenset({_S.GREETED, _S.READY, _S.MAIL, _S.RCPT})
_TRANSACTION = frozenset({_S.MAIL, _S.RCPT, _S.DATA})

# Rule 1 of the core: the states in which each command may be given (RFC 5321 4.1.4 and
# 3.3; RFC 3207 4; RFC 4954 4). Elsewhere the core answers 503 5.5.1 (see _refusal()).
_VALID_IN: dict[str, frozenset[ServerState]] = {
    "EHLO": _SESSION,
    "HELO": _SESSION,
    "MAIL": frozenset({_S.READY}),
    "RCPT": frozenset({_S.MAIL, _S.RCPT}),
    "DATA": frozenset({_S.RCPT}),
    "RSET": _SESSION,
    "NOOP": _SESSION,
    "QUIT": _SESSION | {_S.CLOSING},
    "VRFY": _SESSION,
    "EXPN": _SESSION,
    "HELP": _SESSION,
    "STARTTLS": frozenset({_S.READY}),
    "AUTH": frozenset({_S.READY}),
    "ETRN": frozenset({_S.READY}),
    "ATRN": frozenset({_S.READY}),
}
# Known commands that this server does not offer (CHUNKING, TURN, ...): 502.
_NOT_OFFERED = frozenset({"BDAT", "TURN", "SEND", "SOML", "SAML"})

# Sequence refusals more precise than the generic 503 (same code, better text).
_REFUSAL: dict[tuple[str, ServerState], Reply] = {
    ("MAIL", _S.MAIL): NESTED_MAIL,
    ("MAIL", _S.RCPT): NESTED_MAIL,
    ("RCPT", _S.READY): NEED_MAIL,
    ("DATA", _S.READY): NEED_MAIL,
    ("DATA", _S.MAIL): NEED_RCPT,
    ("AUTH", _S.MAIL): AUTH_IN_TRANSACTION,
    ("AUTH", _S.RCPT): AUTH_IN_TRANSACTION,
    ("ETRN", _S.MAIL): ETRN_IN_TRANSACTION,
    ("ETRN", _S.RCPT): ETRN_IN_TRANSACTION,
}

# What the reply to a decision event does to the state: (event type, positive) -> state,
# None: unchanged. The side effects that go with it live in respond().
_AFTER_REPLY: dict[tuple[type, bool], ServerState | None] = {
    (Hello, True): _S.READY,           # EHLO/HELO reset the transaction (4.1.4)
    (Hello, False): None,
    (MailFrom, True): _S.MAIL,
    (MailFrom, False): None,
    (RcptTo, True): _S.RCPT,
    (RcptTo, False): None,
    (DataStart, True): _S.DATA,
    (DataStart, False): None,
    (DataEnd, True): _S.READY,         # 4.1.1.4: the transaction ends whatever the reply
    (DataEnd, False): _S.READY,
    (StartTls, True): _S.STARTTLS,
    (StartTls, False): None,
    (Auth, True): _S.READY,
    (Auth, False): _S.READY,
    (AuthResponse, True): _S.READY,
    (AuthResponse, False): _S.READY,
    (Etrn, True): None,
    (Etrn, False): None,
    (Atrn, True): _S.REVERSED,
    (Atrn, False): None,
}

# The positive codes a driver may give to each decision; any 4xx/5xx is allowed too.
_POSITIVE: dict[type, frozenset[int]] = {
    Hello: frozenset({250}),
    MailFrom: frozenset({250}),
    RcptTo: frozenset({250, 251}),
    DataStart: frozenset({354}),
    DataEnd: frozenset({250}),
    StartTls: frozenset({220}),
    Auth: frozenset({235}),
    AuthResponse: frozenset({235}),
    Etrn: frozenset({250, 251, 252, 253}),     # RFC 1985 5
    Atrn: frozenset({250}),                    # RFC 2645 5.2.1
}

# RFC 5321 4.1.2: esmtp-keyword and esmtp-value (+ UTF8-non-ascii, RFC 6531 3.3).
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")
# RFC 3461 4.2: ORCPT = addr-type ";" xtext, addr-type = atom.
_ORCPT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+;.+", re.DOTALL)
_VERB_PREFIX = re.compile(rb"[A-Za-z]{0,16}")
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100            # RFC 3461 4.4
MAX_ORCPT = 500            # RFC 3461 4.2
MAX_AUTH_PARAM = 500       # RFC 4954 5 sets none; a mailbox fits in 256 octets (xtext: 3x)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What MAIL and RCPT without parameters carry (frozen values: one of each will do).
_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()
# The event classes are final (never subclassed): a set lookup by type is enough.
_DECISION_TYPES = frozenset(DECISION_EVENTS)


class ServerConnection:
    """One SMTP server session. See the module docstring for the calling pattern."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.state = ServerState.CONNECTED
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._pending: DecisionEvent | None = None   # waiting for respond()
        self._closed: Closed | None = None
        self._eof = False
        self._discarding = False                 # inside an over-long command line
        self._discard_verb = ""
        self._discarded = 0                      # octets of the over-long line so far
        self._line_octets = 0                    # the last line read, as received
        self._data_octets = 0                    # the message so far, as received
        self._errors = 0
        self._extended = False                   # the client said EHLO (not HELO)
        self._encrypted = False
        self._authenticated = False
        # the mail transaction (RFC 5321 3.3)
        self._mail: MailFrom | None = None
        self._rcpt_accepted = 0
        self._rcpt_given = 0
        self._data: DataReader | None = None

    # --- public properties ---------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The session is over: flush data_to_send() and close the connection."""
        return self.state is ServerState.CLOSED

    @property
    def encrypted(self) -> bool:
        """tls_started() was called: STARTTLS is no longer offered."""
        return self._encrypted

    @property
    def authenticated(self) -> bool:
        """AUTH succeeded (235) on this session."""
        return self._authenticated

    @property
    def in_transaction(self) -> bool:
        """A mail transaction is open (MAIL accepted, not yet ended)."""
        return self.state in _TRANSACTION

    @property
    def in_data(self) -> bool:
        """Message content is being read (the driver uses the DATA timeout, 4.5.3.2.6)."""
        return self.state is ServerState.DATA

    @property
    def error_count(self) -> int:
        return self._errors

    # --- driver interface ----------------------------------------------------------------

    def greet(self, reply: Reply) -> None:
        """Send the greeting: 220, or 554 (then only QUIT, RFC 5321 3.1), or 421."""
        if self.state is not ServerState.CONNECTED:
            raise UsageError("greet() may be called once, before anything else")
        if reply.code not in (220, 554, 421):
            raise UsageError(f"a greeting is 220, 554 or 421, not {reply.code}")
        self._send(reply)
        if reply.code == 220:
            self.state = ServerState.GREETED
        elif reply.code == 554:
            self.state = ServerState.CLOSING
        else:
            self._close("shutdown")

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; b"" means the peer closed its side (EOF)."""
        if self.state is ServerState.CLOSED:
            return                               # whatever follows QUIT is ignored
        if self._eof:
            if data:
                raise UsageError("receive_data() after EOF")
            return
        if not data:
            self._eof = True
        elif self.state is ServerState.STARTTLS:
            return                               # plaintext before the handshake: dropped
        else:
            self._in += data

    def next_event(self) -> Event | NeedData:
        if self._pending is not None:
            raise UsageError(
                f"respond() to {type(self._pending).__name__} before calling next_event()")
        while True:
            if self._events:
                event = self._events.popleft()
                if type(event) in _DECISION_TYPES:
                    self._pending = event
                return event
            if self._closed is not None:
                return self._closed
            if not self._step():
                return NEED_DATA

    def respond(self, reply: Reply) -> None:
        """Answer the pending decision event."""
        event = self._pending
        if event is None:
            raise UsageError("respond() called but no decision is pending")
        kind = type(event)
        code = reply.code
        positive = code < 400                    # Reply.positive
        if positive and code not in _POSITIVE[kind]:
            hint = " (use auth_challenge())" if code == 334 else ""
            raise UsageError(f"{code} is not an answer to {kind.__name__}{hint}")
        if kind is DataEnd and event.problem is not None and positive:
            # Chunks stopped when the problem was found: a 250 would accept a torn message.
            raise UsageError("DataEnd has a problem: respond with it (or another 4xx/5xx)")
        self._pending = None
        self._out += reply.to_bytes()
        if kind is Hello and positive:
            self._reset_transaction()
            self._extended = event.extended
        elif kind is MailFrom and positive:
            self._mail = event
        elif kind is RcptTo and positive:
            self._rcpt_accepted += 1
        elif kind is DataStart and positive:
            s = self.settings
            self._data = DataReader(mode=s.bare_line_ends, max_line=s.max_text_line,
                                    max_size=s.max_message_size)
            self._data_octets = 0
        elif kind is DataEnd:
            self._reset_transaction()
        elif kind is StartTls and positive:
            # CVE-2011-0411: commands pipelined after STARTTLS were sent in plaintext and
            # must not be executed as if they came over TLS.
            self._in.clear()
        elif kind in (Auth, AuthResponse) and positive:
            self._authenticated = True
        new_state = _AFTER_REPLY[kind, positive]
        if new_state is not None:
            self.state = new_state
        if not positive:
            self._count(reply)                   # nothing to count after 2xx/3xx

    def ehlo_reply(self, text: str = "") -> Reply:
        """The positive answer to Hello: "250-hostname text" and the extension list.

        No enhanced code: RFC 2034 3 exempts the replies to EHLO and HELO.
        """
        first = f"{self.settings.hostname} {text}".strip()
        if isinstance(self._pending, Hello) and not self._pending.extended:
            return Reply(250, None, (first,))     # HELO: no extensions (RFC 5321 4.1.1.1)
        return _ehlo_reply(first, _extensions(self.settings, self._encrypted))

    def auth_challenge(self, challenge: bytes) -> None:
        """Send "334 <base64 challenge>" and read the client's response (RFC 4954 4)."""
        if not isinstance(self._pending, (Auth, AuthResponse)):
            raise UsageError("auth_challenge() needs a pending Auth or AuthResponse")
        self._pending = None
        self._out += b"334 " + base64.b64encode(challenge) + b"\r\n"
        self.state = ServerState.AUTH

    def tls_started(self) -> None:
        """The TLS handshake is done: RFC 3207 4.2, forget all that came before it."""
        if self.state is not ServerState.STARTTLS:
            raise UsageError("tls_started() without a STARTTLS answered 220")
        self._in.clear()
        self._reset_transaction()
        self._extended = False
        self._authenticated = False
        self._encrypted = True
        self.state = ServerState.GREETED

    def take_input(self) -> bytes:
        """After ATRN's 250: what the peer sent that the core did not read (the start of
        its greeting, if it was quick); the driver's client reads it first."""
        if self.state is not ServerState.REVERSED:
            raise UsageError("take_input() is for a reversed connection (250 to ATRN)")
        data = bytes(self._in)
        self._in.clear()
        return data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- input processing ----------------------------------------------------------------

    def _step(self) -> bool:
        """Consume input for at most one command (or one DATA chunk); False: need data."""
        state = self.state
        if state is ServerState.DATA:
            return self._step_data()
        if state is ServerState.STARTTLS:
            self._in.clear()                     # see receive_data(): never read as commands
            return self._step_eof()
        if state is ServerState.CONNECTED:
            return self._step_eof()              # nothing is read before the greeting
        if state is ServerState.REVERSED:
            return False                         # the driver's client reads from now on
        limit = self.settings.max_command_line
        # AUTH lines get the larger limit. While the input is shorter than the normal
        # limit, both limits read the same line (see _read_line): no need to look.
        if state is ServerState.AUTH or (len(self._in) >= limit
                                         and self._in[:5].upper() == b"AUTH "):
            limit = max(limit, AUTH_LINE_LIMIT)
        line = self._read_line(limit)
        if line is None:
            return self._step_eof()
        raw, problem = line
        if state is ServerState.AUTH:
            self._auth_response(raw, problem)
        else:
            self._command(raw, problem)
        return True

    def _step_eof(self) -> bool:
        if self._eof:
            self._close("eof")
            return True
        return False

    def _step_data(self) -> bool:
        reader = self._data
        assert reader is not None
        chunk, used, done = reader.scan(self._in)
        del self._in[:used]
        self._data_octets += used
        if chunk:
            self._events.append(DataChunk(chunk))
        if done:
            self._events.append(DataEnd(reader.problem, reader.size, octets=self._data_octets))
            return True
        if chunk:
            return True
        # A message cut short by EOF is never reported as complete (no DataEnd).
        return self._step_eof()

    def _find_line_end(self, end: int | None) -> tuple[int, int] | None:
        """(end of line content, start of next line) of the first line, or None.

        Only CRLF ends a line (RFC 5321 2.3.8). With NORMALIZE a bare LF does too.
        """
        buf = self._in
        if self.settings.bare_line_ends is BareLineEnds.NORMALIZE:
            i = buf.find(b"\n", 0, end)
            if i < 0:
                return None
            return (i - 1 if i > 0 and buf[i - 1] == 0x0D else i), i + 1
        i = buf.find(b"\r\n", 0, end)
        return None if i < 0 else (i, i + 2)

    def _read_line(self, limit: int) -> tuple[bytes, Reply | None] | None:
        """Take the next line from the input: (line without CRLF, line-level problem)."""
        buf = self._in
        if not self._discarding:
            found = self._find_line_end(limit)
            if found is not None:
                content_end, next_start = found
                raw = bytes(buf[:content_end])
                del buf[:next_start]
                self._line_octets = next_start
                if content_end + 2 > limit:     # a bare LF just past the limit
                    return raw, LINE_TOO_LONG
                return raw, self._line_problem(raw)
            if len(buf) < limit:
                return None
            # 4.5.3.1.4: too long. Drop it up to its CRLF; it is never read as a command.
            self._discarding = True
            self._discard_verb = _verb_of(bytes(buf[:16]))
            self._discarded = 0
        found = self._find_line_end(None)
        if found is None:
            keep = 1 if buf.endswith(b"\r") else 0   # maybe the CR of a CRLF
            self._discarded += len(buf) - keep
            del buf[:len(buf) - keep]
            return None
        del buf[:found[1]]
        self._line_octets = self._discarded + found[1]
        self._discarding = False
        return self._discard_verb.encode(), LINE_TOO_LONG

    @staticmethod
    def _line_problem(raw: bytes) -> Reply | None:
        if b"\r" in raw or b"\n" in raw:
            return BARE_LINE_END_IN_COMMAND
        if b"\0" in raw:
            return NUL_IN_COMMAND
        return None

    def _command(self, raw: bytes, problem: Reply | None) -> None:
        if problem is not None:
            self._answer(_verb_of(raw), "", problem)
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._answer(_verb_of(raw), "", BAD_ENCODING)
            return
        word, _, arg = text.partition(" ")
        verb = word.upper()
        outcome = self._dispatch(verb, arg)
        if isinstance(outcome, Reply):
            self._answer(verb[:16], arg, outcome)
        else:
            self._events.append(outcome)

    def _dispatch(self, verb: str, arg: str) -> Reply | Event:
        if self.state is ServerState.CLOSING and verb != "QUIT":
            return BAD_SEQUENCE                       # RFC 5321 3.1, after a 554 greeting
        valid = _VALID_IN.get(verb)
        if valid is None:
            return NOT_IMPLEMENTED if verb in _NOT_OFFERED else UNKNOWN_COMMAND
        # An extension that is not offered is "not implemented", whatever the state.
        if verb == "STARTTLS" and (not self.settings.starttls or self._encrypted):
            return STARTTLS_UNAVAILABLE
        if verb == "AUTH" and not self.settings.auth_mechanisms:
            return AUTH_NOT_AVAILABLE
        if verb == "ETRN" and not self.settings.etrn:
            return NOT_IMPLEMENTED
        if verb == "ATRN" and not (self.settings.atrn and self.settings.auth_mechanisms):
            return NOT_IMPLEMENTED
        if self.state not in valid:
            return self._refusal(verb)
        return _HANDLER[verb](self, arg)

    def _refusal(self, verb: str) -> Reply:
        if self.state is ServerState.GREETED:
            return NEED_HELO
        if verb == "DATA" and self.state is ServerState.MAIL and self._rcpt_given:
            return NO_VALID_RECIPIENTS          # RFC 2920 3.1: all RCPTs were refused
        return _REFUSAL.get((verb, self.state), BAD_SEQUENCE)

    # --- the commands (RFC 5321 4.1.1) -----------------------------------------------------

    def _cmd_ehlo(self, arg: str) -> Reply | Event:
        return self._hello(arg, extended=True)

    def _cmd_helo(self, arg: str) -> Reply | Event:
        return self._hello(arg, extended=False)

    def _hello(self, arg: str, *, extended: bool) -> Reply | Event:
        # 4.1.1.1: "EHLO" SP ( Domain / address-literal ). The name is not checked further:
        # policy decides what to make of odd names (printers send odd names).
        name = arg.strip(" ")
        if not name or " " in name or "\t" in name:
            return HELO_SYNTAX
        return Hello(name=name, extended=extended, octets=self._line_octets)

    def _cmd_mail(self, arg: str) -> Reply | Event:
        # 4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]; a space after the colon
        # is tolerated (common in the wild).
        if arg[:5].upper() != "FROM:":
            return MAIL_SYNTAX
        try:
            path, param_text = split_path(arg[5:].lstrip(" "))
        except AddressError as e:
            return _for_sender(e.reply)
        params = self._mail_params(param_text)
        if isinstance(params, Reply):
            return params
        try:
            sender = parse_path(path, utf8=params.smtputf8)
        except AddressError as e:
            return _for_sender(e.reply)
        if sender is not None and not sender.domain:
            return SENDER_NEEDS_DOMAIN          # <postmaster> is a recipient only
        return MailFrom(sender=sender, params=params, argument=arg, octets=self._line_octets)

    def _cmd_rcpt(self, arg: str) -> Reply | Event:
        # 4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path )
        self._rcpt_given += 1
        if arg[:3].upper() != "TO:":
            return RCPT_SYNTAX
        try:
            path, param_text = split_path(arg[3:].lstrip(" "))
        except AddressError as e:
            return e.reply
        params = self._rcpt_params(param_text)
        if isinstance(params, Reply):
            return params
        assert self._mail is not None
        try:
            recipient = parse_path(path, utf8=self._mail.params.smtputf8)
        except AddressError as e:
            return e.reply
        if recipient is None:
            return RCPT_SYNTAX                  # "<>" is not a forward-path
        limit = self.settings.max_recipients
        if limit and self._rcpt_accepted >= limit:
            return TOO_MANY_RECIPIENTS          # 4.5.3.1.10: 452, the client sends the rest later
        return RcptTo(recipient=recipient, params=params, argument=arg,
                      octets=self._line_octets)

    def _cmd_data(self, arg: str) -> Reply | Event:
        if arg.strip(" "):
            return NO_ARGUMENTS_ALLOWED
        return DataStart(octets=self._line_octets)

    def _cmd_rset(self, arg: str) -> Reply | Event:
        if arg.strip(" "):
            return NO_ARGUMENTS_ALLOWED
        self._reset_transaction()
        if self.state in _TRANSACTION:
            self.state = ServerState.READY      # 4.1.1.5; before EHLO the state stays
        return RESET_OK

    def _cmd_noop(self, arg: str) -> Reply | Event:
        return OK                               # 4.1.1.9: an argument is ignored

    def _cmd_quit(self, arg: str) -> Reply | Event:
        if arg.strip(" "):
            return NO_ARGUMENTS_ALLOWED
        return CLOSING                          # _answer() closes after a 221

    def _cmd_vrfy(self, arg: str) -> Reply | Event:
        if not arg.strip(" "):
            return VRFY_SYNTAX
        return CANNOT_VRFY                      # 3.5.3: 252, never disclose mailboxes

    def _cmd_expn(self, arg: str) -> Reply | Event:
        return NOT_IMPLEMENTED                  # 3.5.2 / 7.3: lists are not disclosed

    def _cmd_help(self, arg: str) -> Reply | Event:
        return HELP

    def _cmd_starttls(self, arg: str) -> Reply | Event:
        # RFC 3207 4: "STARTTLS" with no parameters, after EHLO.
        if not self._extended:
            return BAD_SEQUENCE
        if arg.strip(" "):
            return NO_ARGUMENTS_ALLOWED
        return StartTls(octets=self._line_octets)

    def _cmd_auth(self, arg: str) -> Reply | Event:
        # RFC 4954 4: AUTH mechanism [initial-response]; once only, outside transactions.
        if self._authenticated:
            return AUTH_ALREADY
        if not self._extended:
            return BAD_SEQUENCE
        words = arg.split(" ")
        if not 1 <= len(words) <= 2 or not all(words):
            return AUTH_SYNTAX
        mechanism = words[0].upper()
        if mechanism not in (m.upper() for m in self.settings.auth_mechanisms):
            return AUTH_UNKNOWN_MECHANISM
        initial = None
        if len(words) == 2:
            initial = _b64decode(words[1])
            if initial is None:
                return AUTH_BAD_BASE64
        return Auth(mechanism=mechanism, initial=initial, octets=self._line_octets)

    def _cmd_etrn(self, arg: str) -> Reply | Event:
        # RFC 1985 5: "ETRN" SP node, node = domain / "@" domain / "#" queue-name.
        node = arg.strip(" ")
        if node.startswith("#"):
            return ETRN_QUEUE_NAMES
        subdomains = node.startswith("@")
        if subdomains:
            node = node[1:]
        if not node or node.startswith("["):
            return ETRN_SYNTAX
        try:
            domain = parse_domain(node)
        except AddressError:
            return ETRN_SYNTAX
        return Etrn(domain=domain, subdomains=subdomains, octets=self._line_octets)

    def _cmd_atrn(self, arg: str) -> Reply | Event:
        # RFC 2645 5.2.1: "ATRN" [SP domain *("," domain)], only once authenticated.
        if not self._authenticated:
            return ATRN_NEEDS_AUTH
        text = arg.strip(" ")
        if not text:
            return Atrn(domains=(), octets=self._line_octets)
        domains: list[str] = []
        for part in text.split(","):
            part = part.strip(" ")
            if not part or part.startswith("["):
                return ATRN_SYNTAX
            try:
                domain = parse_domain(part)
            except AddressError:
                return ATRN_SYNTAX
            if domain not in domains:
                domains.append(domain)
        return Atrn(domains=tuple(domains), octets=self._line_octets)

    def _auth_response(self, raw: bytes, problem: Reply | None) -> None:
        """A line after "334": base64 data, or "*" to cancel (RFC 4954 4)."""
        self.state = ServerState.READY
        if problem is not None:
            self._answer("AUTH", "", problem)
            return
        if raw == b"*":
            self._answer("AUTH", "", AUTH_CANCELLED)
            return
        data = _b64decode(raw.decode("ascii", "replace"))
        if data is None:
            self._answer("AUTH", "", AUTH_BAD_BASE64)
            return
        self.state = ServerState.AUTH
        self._events.append(AuthResponse(data=data, octets=self._line_octets))

    # --- ESMTP parameters --------------------------------------------------------------------

    def _params(self, text: str) -> list[tuple[str, str | None]] | Reply:
        """Split "KEY=value KEY2" (RFC 5321 4.1.2 esmtp-param); keys upper-cased."""
        params: list[tuple[str, str | None]] = []
        seen: set[str] = set()
        for token in text.split(" "):
            if not token:
                continue
            key, eq, value = token.partition("=")
            if not _ESMTP_KEYWORD.fullmatch(key) or (eq and not _ESMTP_VALUE.fullmatch(value)):
                return PARAM_SYNTAX
            key = key.upper()
            if key in seen:
                return PARAM_DUPLICATE
            seen.add(key)
            params.append((key, value if eq else None))
        if params and not self._extended:
            return PARAMS_NEED_EHLO             # RFC 1869 4.5: parameters are ESMTP only
        return params

    def _mail_params(self, text: str) -> MailParams | Reply:
        if not text:
            return _NO_MAIL_PARAMS              # the usual MAIL: no parameters at all
        parsed = self._params(text)
        if isinstance(parsed, Reply):
            return parsed
        s = self.settings
        fields: dict[str, object] = {}
        for key, value in parsed:
            if key == "SIZE":                       # RFC 1870 6
                if value is None or not _SIZE_VALUE.fullmatch(value):
                    return PARAM_SYNTAX
                size = int(value)
                if s.max_message_size and size > s.max_message_size:
                    return MESSAGE_TOO_BIG
                fields["size"] = size
            elif key == "BODY":                     # RFC 6152 2
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return PARAM_SYNTAX
                fields["body"] = value.upper()
            elif key == "SMTPUTF8" and s.smtputf8:  # RFC 6531 3.4
                if value is not None:
                    return PARAM_SYNTAX
                fields["smtputf8"] = True
            elif key == "RET" and s.dsn:            # RFC 3461 4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return PARAM_SYNTAX
                fields["ret"] = value.upper()
            elif key == "ENVID" and s.dsn:          # RFC 3461 4.4
                envid = _xtext_param(value, MAX_ENVID)
                if envid is None:
                    return PARAM_SYNTAX
                fields["envid"] = envid
            elif key == "AUTH" and s.auth_mechanisms:   # RFC 4954 5
                identity = _xtext_param(value, MAX_AUTH_PARAM)
                if identity is None:
                    return PARAM_SYNTAX
                fields["auth"] = identity
            else:
                return PARAM_UNKNOWN                # RFC 5321 4.1.1.11: 555
        return MailParams(**fields)  # type: ignore[arg-type]

    def _rcpt_params(self, text: str) -> RcptParams | Reply:
        if not text:
            return _NO_RCPT_PARAMS
        parsed = self._params(text)
        if isinstance(parsed, Reply):
            return parsed
        notify: tuple[str, ...] | None = None
        orcpt: str | None = None
        for key, value in parsed:
            if key == "NOTIFY" and self.settings.dsn:     # RFC 3461 4.1
                if value is None:
                    return PARAM_SYNTAX
                items = tuple(value.upper().split(","))
                if len(set(items)) != len(items):
                    return PARAM_SYNTAX
                if items != ("NEVER",) and not set(items) <= _NOTIFY_VALUES:
                    return PARAM_SYNTAX
                notify = items
            elif key == "ORCPT" and self.settings.dsn:    # RFC 3461 4.2
                orcpt = _xtext_param(value, MAX_ORCPT)
                if orcpt is None or not _ORCPT.fullmatch(orcpt):
                    return PARAM_SYNTAX
            else:
                return PARAM_UNKNOWN
        return RcptParams(notify=notify, orcpt=orcpt)

    # --- output, errors, closing -------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()

    def _answer(self, verb: str, arg: str, reply: Reply) -> None:
        """The core answers a command by itself."""
        self._send(reply)
        # RFC 4954 / house rule: AUTH arguments are credentials, never reported in clear.
        self._events.append(Handled(verb=verb, argument="***" if verb == "AUTH" else arg,
                                    reply=reply, octets=self._line_octets))
        if reply is CLOSING:
            self._close("quit")
        else:
            self._count(reply)

    def _count(self, reply: Reply) -> None:
        """Error accounting after any reply to a command (RFC 5321 4.5.3.2 spirit)."""
        if reply.code == 421:
            self._close("shutdown")              # 3.8: 421 means the channel closes
            return
        # A 452 for too many recipients is the RFC's flow control (4.5.3.1.10), not an
        # error: counting it would disconnect a client that just has a long list.
        if reply.code < 400 or reply is TOO_MANY_RECIPIENTS:
            return
        self._errors += 1
        limit = self.settings.max_errors
        if limit and self._errors >= limit:
            self._send(TOO_MANY_ERRORS)
            self._close("errors")

    def _close(self, reason: str) -> None:
        self._closed = Closed(reason=reason, in_transaction=self.state in _TRANSACTION)
        self._events.append(self._closed)
        self.state = ServerState.CLOSED
        self._in.clear()
        self._data = None

    def _reset_transaction(self) -> None:
        self._mail = None
        self._rcpt_accepted = 0
        self._rcpt_given = 0
        self._data = None


# The method of each command in _VALID_IN (the one table: a verb there needs its _cmd_).
_HANDLER: dict[str, Callable[[ServerConnection, str], Reply | Event]] = {
    verb: getattr(ServerConnection, "_cmd_" + verb.lower()) for verb in _VALID_IN
}


# The EHLO reply is the same for every session of a listener but for its first line: the
# extension list is made once per (settings, TLS state) and the reply (validated, encoded)
# once per first line. Both are pure functions of frozen values.
@functools.lru_cache(maxsize=64)
def _extensions(s: ServerSettings, encrypted: bool) -> tuple[str, ...]:
    lines = ["PIPELINING"]
    lines.append(f"SIZE {s.max_message_size}" if s.max_message_size else "SIZE")
    lines.append("8BITMIME")
    if s.smtputf8:
        lines.append("SMTPUTF8")
    lines.append("ENHANCEDSTATUSCODES")
    if s.dsn:
        lines.append("DSN")
    if s.starttls and not encrypted:
        lines.append("STARTTLS")
    if s.auth_mechanisms and s.advertise_auth:
        lines.append("AUTH " + " ".join(m.upper() for m in s.auth_mechanisms))
    if s.etrn:
        lines.append("ETRN")
    if s.atrn and s.auth_mechanisms:
        lines.append("ATRN")
    return tuple(lines)


@functools.lru_cache(maxsize=1024)
def _ehlo_reply(first: str, extensions: tuple[str, ...]) -> Reply:
    return Reply(250, None, (first, *extensions))


def _verb_of(raw: bytes) -> str:
    """The leading letters of a raw line, for the Handled event of a malformed line."""
    match = _VERB_PREFIX.match(raw)
    return match.group().decode("ascii").upper() if match else ""


def _b64decode(text: str) -> bytes | None:
    """RFC 4954 4: base64 without line breaks; "=" is an empty initial response."""
    if text in ("=", ""):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _xtext_param(value: str | None, limit: int) -> str | None:
    """Decode an xtext parameter value (RFC 3461 4); None when absent or malformed.

    Decoded control characters are refused: these values end up in DSNs and logs, where
    "+0D+0A" would be a header injection.
    """
    if value is None or len(value) > limit:
        return None
    try:
        decoded = xtext_decode(value)
    except ValueError:
        return None
    return None if _CONTROL.search(decoded) else decoded


_SENDER_CODES = {"5.1.3": "5.1.7", "5.1.2": "5.1.8"}


def _for_sender(reply: Reply) -> Reply:
    """RFC 3463 3.2: X.1.7 / X.1.8 are the sender's variants of X.1.3 / X.1.2."""
    enhanced = _SENDER_CODES.get(reply.enhanced or "")
    return reply if enhanced is None else Reply(reply.code, enhanced, reply.lines)
