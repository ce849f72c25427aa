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

Which command is valid in which state is one table, `_VALID_IN`. Every change of `state` is
in another, `_TRANSITIONS`: (state, cause) -> new state, applied by `_switch()`, the only
method that assigns `self.state` (h11's rule); a cause that is not in the table for the
current state raises UsageError. What a cause does besides changing the state (resetting
the transaction, dropping plaintext after STARTTLS, ...) is named beside it, in `_EFFECTS`,
and done by `_switch()` too. Line framing is in `framing.py` (message content in
`_data.py`), ESMTP parameters in `params.py`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ._data import BareLineEnds, DataReader
from .address import AddressError, parse_domain, parse_path, split_path
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
    NeedData,
    RcptTo,
    StartTls,
)
from .framing import LineReader, verb_of
from .params import mail_params, rcpt_params
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
    CANNOT_VRFY,
    CLOSING,
    ETRN_IN_TRANSACTION,
    ETRN_QUEUE_NAMES,
    ETRN_SYNTAX,
    HELO_SYNTAX,
    HELP,
    MAIL_SYNTAX,
    NEED_HELO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    NO_ARGUMENTS_ALLOWED,
    NO_VALID_RECIPIENTS,
    NOT_IMPLEMENTED,
    OK,
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

    # Members are singletons compared by identity, so the identity hash will do; Enum's own
    # (hash of the name, in Python) would be called for every table lookup, per command.
    __hash__ = object.__hash__


# The states the per-command path compares with, as module globals: CPython 3.11 reads a
# member off an Enum class through the attribute hook that EnumType.__getattr__ installs
# (~550 instructions more than a global on Debian's 3.11 build, ~850 on pyenv's; the hook
# is gone in 3.12), and the path read ~18 per message (issue 15, callgrind).
_AUTH, _CLOSED, _CLOSING, _CONNECTED, _DATA, _REVERSED, _STARTTLS = (
    ServerState.AUTH, ServerState.CLOSED, ServerState.CLOSING, ServerState.CONNECTED,
    ServerState.DATA, ServerState.REVERSED, ServerState.STARTTLS)


class Cause(enum.Enum):
    """What changes the state: the driver's greeting, replies and calls, and RSET and closing."""

    GREETING = "220 greeting"
    GREETING_554 = "554 greeting"              # RFC 5321 3.1: then only QUIT is served
    HELLO = "250 to EHLO/HELO"
    HELLO_REFUSED = "4xx/5xx to EHLO/HELO"
    MAIL = "250 to MAIL"
    MAIL_REFUSED = "4xx/5xx to MAIL"
    RCPT = "250/251 to RCPT"
    RCPT_REFUSED = "4xx/5xx to RCPT"
    DATA = "354 to DATA"
    DATA_REFUSED = "4xx/5xx to DATA"
    DATA_END = "any reply to the end of the data"
    STARTTLS = "220 to STARTTLS"
    STARTTLS_REFUSED = "4xx/5xx to STARTTLS"
    TLS_STARTED = "tls_started()"
    AUTH_CHALLENGE = "334 to AUTH or to a SASL response (auth_challenge())"
    AUTH_OK = "235 to AUTH or to a SASL response"
    AUTH_FAILED = "4xx/5xx to AUTH or a SASL response; a response that is *, bad or too long"
    ETRN = "250-253 to ETRN"
    ETRN_REFUSED = "4xx/5xx to ETRN"
    ATRN = "250 to ATRN"
    ATRN_REFUSED = "4xx/5xx to ATRN"
    RSET = "RSET answered"
    CLOSE = "221 to QUIT, a 421, EOF, or too many errors"

    __hash__ = object.__hash__                 # see ServerState


_S = ServerState
_C = Cause
_SESSION = frozenset({_S.GREETED, _S.READY, _S.MAIL, _S.RCPT})
_TRANSACTION = frozenset({_S.MAIL, _S.RCPT, _S.DATA})

# Rule 0 of the core, the one place the state changes: state -> {cause: new state}.
# _switch() applies it; a cause not listed for the current state is a UsageError. A decision
# event leaves the state as it is until the driver answers it (see _ANSWERS); a refusal
# leaves it as it is then too, and is listed all the same, so that the table says which
# answers can come in which state.
_TRANSITIONS: dict[ServerState, dict[Cause, ServerState]] = {
    _S.CONNECTED: {
        _C.GREETING: _S.GREETED,
        _C.GREETING_554: _S.CLOSING,
        _C.CLOSE: _S.CLOSED,               # a 421 greeting, or EOF before greet()
    },
    _S.GREETED: {
        _C.HELLO: _S.READY,
        _C.HELLO_REFUSED: _S.GREETED,
        _C.RSET: _S.GREETED,               # before EHLO the state stays (4.1.1.5)
        _C.CLOSE: _S.CLOSED,
    },
    _S.READY: {
        _C.HELLO: _S.READY,
        _C.HELLO_REFUSED: _S.READY,
        _C.MAIL: _S.MAIL,
        _C.MAIL_REFUSED: _S.READY,
        _C.STARTTLS: _S.STARTTLS,
        _C.STARTTLS_REFUSED: _S.READY,
        _C.AUTH_CHALLENGE: _S.AUTH,        # 334 to AUTH
        _C.AUTH_OK: _S.READY,              # 235 to AUTH with an initial response
        _C.AUTH_FAILED: _S.READY,
        _C.ETRN: _S.READY,
        _C.ETRN_REFUSED: _S.READY,
        _C.ATRN: _S.REVERSED,              # RFC 2645 5.2.1: the roles turn
        _C.ATRN_REFUSED: _S.READY,
        _C.RSET: _S.READY,
        _C.CLOSE: _S.CLOSED,
    },
    _S.MAIL: {
        _C.HELLO: _S.READY,                # EHLO/HELO reset the transaction (4.1.4)
        _C.HELLO_REFUSED: _S.MAIL,
        _C.RCPT: _S.RCPT,
        _C.RCPT_REFUSED: _S.MAIL,
        _C.RSET: _S.READY,                 # 4.1.1.5
        _C.CLOSE: _S.CLOSED,
    },
    _S.RCPT: {
        _C.HELLO: _S.READY,
        _C.HELLO_REFUSED: _S.RCPT,
        _C.RCPT: _S.RCPT,
        _C.RCPT_REFUSED: _S.RCPT,
        _C.DATA: _S.DATA,
        _C.DATA_REFUSED: _S.RCPT,
        _C.RSET: _S.READY,
        _C.CLOSE: _S.CLOSED,
    },
    _S.DATA: {
        _C.DATA_END: _S.READY,             # 4.1.1.4: the transaction ends whatever the reply
        _C.CLOSE: _S.CLOSED,               # EOF in the middle of the message
    },
    _S.AUTH: {
        _C.AUTH_CHALLENGE: _S.AUTH,        # 334 to a SASL response: another round
        _C.AUTH_OK: _S.READY,
        _C.AUTH_FAILED: _S.READY,
        _C.CLOSE: _S.CLOSED,
    },
    _S.STARTTLS: {
        _C.TLS_STARTED: _S.GREETED,        # RFC 3207 4.2: EHLO again
        _C.CLOSE: _S.CLOSED,
    },
    _S.CLOSING: {
        _C.CLOSE: _S.CLOSED,
    },
    _S.REVERSED: {},                       # the driver's client reads and writes from now on
    _S.CLOSED: {},
}

# What each cause does besides changing the state: the ServerConnection method _switch()
# calls with the cause's argument (the answered event, the reason for closing), before it
# sets the new state, so the method sees the state being left. An effect never switches.
_EFFECTS: dict[Cause, str] = {
    _C.HELLO: "_begin_session",            # 4.1.4: the transaction resets; EHLO or HELO
    _C.MAIL: "_begin_transaction",         # the MailFrom (RCPT reads its SMTPUTF8)
    _C.RCPT: "_add_recipient",             # counted against max_recipients
    _C.DATA: "_begin_data",                # a new DataReader for the content
    _C.DATA_END: "_reset_transaction",
    _C.RSET: "_reset_transaction",
    _C.STARTTLS: "_drop_input",            # CVE-2011-0411: plaintext pipelined after it
    _C.TLS_STARTED: "_forget_session",     # RFC 3207 4.2: all that came before TLS
    _C.AUTH_OK: "_authenticate",
    _C.CLOSE: "_finish",                   # the Closed event; input and reader dropped
}

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

# The answers a driver may give to each decision and what they cause: (the positive codes,
# any 4xx/5xx being allowed too; the cause of a 4xx/5xx; the cause of a positive answer).
_ANSWERS: dict[type, tuple[frozenset[int], Cause, Cause]] = {
    Hello: (frozenset({250}), _C.HELLO_REFUSED, _C.HELLO),
    MailFrom: (frozenset({250}), _C.MAIL_REFUSED, _C.MAIL),
    RcptTo: (frozenset({250, 251}), _C.RCPT_REFUSED, _C.RCPT),
    DataStart: (frozenset({354}), _C.DATA_REFUSED, _C.DATA),
    DataEnd: (frozenset({250}), _C.DATA_END, _C.DATA_END),
    StartTls: (frozenset({220}), _C.STARTTLS_REFUSED, _C.STARTTLS),
    Auth: (frozenset({235}), _C.AUTH_FAILED, _C.AUTH_OK),
    AuthResponse: (frozenset({235}), _C.AUTH_FAILED, _C.AUTH_OK),
    Etrn: (frozenset({250, 251, 252, 253}), _C.ETRN_REFUSED, _C.ETRN),     # RFC 1985 5
    Atrn: (frozenset({250}), _C.ATRN_REFUSED, _C.ATRN),                    # RFC 2645 5.2.1
}
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
        self._lines = LineReader()
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
            self._switch(Cause.GREETING)
        elif reply.code == 554:
            self._switch(Cause.GREETING_554)
        else:
            self._switch(Cause.CLOSE, "shutdown")

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; b"" means the peer closed its side (EOF)."""
        if self.state is _CLOSED:
            return                               # whatever follows QUIT is ignored
        if self._eof:
            if data:
                raise UsageError("receive_data() after EOF")
            return
        if not data:
            self._eof = True
        elif self.state is _STARTTLS:
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
                    self._pending = event  # type: ignore[assignment]  # one of _DECISION_TYPES; no cast(): a call per command
                return event
            if self._closed is not None:
                return self._closed
            if not self._in and not self._eof:
                # Nothing to read, no EOF: no state can make an event of that (the driver
                # asks once more after each command; issue 15: three calls saved each time).
                return NEED_DATA
            if not self._step():
                return NEED_DATA

    def respond(self, reply: Reply) -> int:
        """Answer the pending decision event. Returns the octets of the reply as queued
        (the protocol log's sc-bytes)."""
        event = self._pending
        if event is None:
            raise UsageError("respond() called but no decision is pending")
        kind = type(event)
        positive_codes, refused, accepted = _ANSWERS[kind]
        code = reply.code
        positive = code < 400                    # Reply.positive
        if positive and code not in positive_codes:
            hint = " (use auth_challenge())" if code == 334 else ""
            raise UsageError(f"{code} is not an answer to {kind.__name__}{hint}")
        if type(event) is DataEnd and event.problem is not None and positive:
            # Chunks stopped when the problem was found: a 250 would accept a torn message.
            raise UsageError("DataEnd has a problem: respond with it (or another 4xx/5xx)")
        self._pending = None
        wire = reply.to_bytes()
        self._out += wire
        if positive:
            self._switch(accepted, event)
        else:
            self._switch(refused, event)
            self._count(reply)                   # nothing to count after 2xx/3xx
        return len(wire)

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
        self._switch(Cause.AUTH_CHALLENGE)

    def tls_started(self) -> None:
        """The TLS handshake is done: RFC 3207 4.2, forget all that came before it."""
        if self.state is not ServerState.STARTTLS:
            raise UsageError("tls_started() without a STARTTLS answered 220")
        self._switch(Cause.TLS_STARTED)

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
        if state is _DATA:
            return self._step_data()
        if state is _STARTTLS:
            self._in.clear()                     # see receive_data(): never read as commands
            return self._step_eof()
        if state is _CONNECTED:
            return self._step_eof()              # nothing is read before the greeting
        if state is _REVERSED:
            return False                         # the driver's client reads from now on
        s = self.settings
        line = self._lines.read(self._in, s.max_command_line, s.bare_line_ends,
                                sasl=state is _AUTH)
        if line is None:
            return self._step_eof()
        raw, problem, self._line_octets = line
        if state is _AUTH:
            self._auth_response(raw, problem)
        else:
            self._command(raw, problem)
        return True

    def _step_eof(self) -> bool:
        if self._eof:
            self._switch(Cause.CLOSE, "eof")
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

    def _command(self, raw: bytes, problem: Reply | None) -> None:
        if problem is not None:
            self._answer(verb_of(raw), "", problem)
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._answer(verb_of(raw), "", BAD_ENCODING)
            return
        word, _, arg = text.partition(" ")
        verb = word.upper()
        outcome = self._dispatch(verb, arg)
        if isinstance(outcome, Reply):
            self._answer(verb[:16], arg, outcome)
        else:
            self._events.append(outcome)

    def _dispatch(self, verb: str, arg: str) -> Reply | Event:
        if self.state is _CLOSING and verb != "QUIT":
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
        params = mail_params(param_text, self.settings, extended=self._extended)
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
        params = rcpt_params(param_text, self.settings, extended=self._extended)
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
        self._switch(Cause.RSET)                # 4.1.1.5: the transaction ends
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
        if problem is None:
            if raw == b"*":
                problem = AUTH_CANCELLED
            else:
                data = _b64decode(raw.decode("ascii", "replace"))
                if data is not None:
                    # The state stays AUTH until the driver answers (_ANSWERS).
                    self._events.append(AuthResponse(data=data, octets=self._line_octets))
                    return
                problem = AUTH_BAD_BASE64
        self._switch(Cause.AUTH_FAILED)
        self._answer("AUTH", "", problem)

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
            self._switch(Cause.CLOSE, "quit")
        else:
            self._count(reply)

    def _count(self, reply: Reply) -> None:
        """Error accounting after any reply to a command (RFC 5321 4.5.3.2 spirit)."""
        if reply.code == 421:
            self._switch(Cause.CLOSE, "shutdown")    # 3.8: 421 means the channel closes
            return
        # A 452 for too many recipients is the RFC's flow control (4.5.3.1.10), not an
        # error: counting it would disconnect a client that just has a long list.
        if reply.code < 400 or reply is TOO_MANY_RECIPIENTS:
            return
        self._errors += 1
        limit = self.settings.max_errors
        if limit and self._errors >= limit:
            self._send(TOO_MANY_ERRORS)
            self._switch(Cause.CLOSE, "errors")

    # --- the state: the table's one applier and the effects it names ------------------------

    def _switch(self, cause: Cause, arg: object = None) -> None:
        """Apply _TRANSITIONS: the one place that assigns self.state (h11's rule).

        The cause's effect (_EFFECTS) runs first, with `arg`, and sees the state being
        left. A cause that is not in the table for the current state is a bug in the
        driver or in the core, never the peer's doing: UsageError.
        """
        try:
            new, effect = _TABLE[self.state][cause]
        except KeyError:
            raise UsageError(f"{cause.name} ({cause.value}) is not possible in state "
                             f"{self.state.name}") from None
        if effect is not None:
            effect(self, arg)
        self.state = new

    def _begin_session(self, hello: Hello) -> None:
        self._reset_transaction()
        self._extended = hello.extended

    def _begin_transaction(self, mail: MailFrom) -> None:
        self._mail = mail

    def _add_recipient(self, _: object) -> None:
        self._rcpt_accepted += 1

    def _begin_data(self, _: object) -> None:
        s = self.settings
        self._data = DataReader(mode=s.bare_line_ends, max_line=s.max_text_line,
                                max_size=s.max_message_size)
        self._data_octets = 0

    def _drop_input(self, _: object) -> None:
        # CVE-2011-0411: commands pipelined after STARTTLS were sent in plaintext and must
        # not be executed as if they came over TLS.
        self._in.clear()

    def _forget_session(self, _: object) -> None:
        # RFC 3207 4.2: forget all that came before the handshake.
        self._in.clear()
        self._reset_transaction()
        self._extended = False
        self._authenticated = False
        self._encrypted = True

    def _authenticate(self, _: object) -> None:
        self._authenticated = True

    def _finish(self, reason: str) -> None:
        self._closed = Closed(reason=reason, in_transaction=self.state in _TRANSACTION)
        self._events.append(self._closed)
        self._in.clear()
        self._data = None

    def _reset_transaction(self, _: object = None) -> None:
        self._mail = None
        self._rcpt_accepted = 0
        self._rcpt_given = 0
        self._data = None


# The method of each command in _VALID_IN (the one table: a verb there needs its _cmd_).
_HANDLER: dict[str, Callable[[ServerConnection, str], Reply | Event]] = {
    verb: getattr(ServerConnection, "_cmd_" + verb.lower()) for verb in _VALID_IN
}

# _TRANSITIONS with the methods _EFFECTS names, as _switch() reads them:
# state -> cause -> (new state, effect or None).
_TABLE: dict[ServerState, dict[Cause, tuple[ServerState, Callable[[ServerConnection, Any], None]
                                             | None]]] = {
    state: {cause: (new, getattr(ServerConnection, _EFFECTS[cause]) if cause in _EFFECTS
                    else None)
            for cause, new in row.items()}
    for state, row in _TRANSITIONS.items()
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


def _b64decode(text: str) -> bytes | None:
    """RFC 4954 4: base64 without line breaks; "=" is an empty initial response."""
    if text in ("=", ""):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


_SENDER_CODES = {"5.1.3": "5.1.7", "5.1.2": "5.1.8"}


def _for_sender(reply: Reply) -> Reply:
    """RFC 3463 3.2: X.1.7 / X.1.8 are the sender's variants of X.1.3 / X.1.2."""
    enhanced = _SENDER_CODES.get(reply.enhanced or "")
    return reply if enhanced is None else Reply(reply.code, enhanced, reply.lines)
