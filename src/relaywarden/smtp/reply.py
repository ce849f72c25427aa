"""SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).

A `Reply` is a value: the code, the enhanced code and the text lines. The standard
replies the protocol core sends by itself live here as module constants, so that the
driver, the logs and the tests all name the same thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Reply",
    "reply",
    # the standard replies
    "OK",
    "RESET_OK",
    "CLOSING",
    "HELP",
    "CANNOT_VRFY",
    "START_DATA",
    "UNKNOWN_COMMAND",
    "NOT_IMPLEMENTED",
    "LINE_TOO_LONG",
    "BARE_LINE_END_IN_COMMAND",
    "NUL_IN_COMMAND",
    "BAD_ENCODING",
    "SYNTAX_ERROR",
    "NO_ARGUMENTS_ALLOWED",
    "HELO_SYNTAX",
    "MAIL_SYNTAX",
    "RCPT_SYNTAX",
    "VRFY_SYNTAX",
    "BAD_SEQUENCE",
    "NEED_HELO",
    "NESTED_MAIL",
    "NEED_MAIL",
    "NEED_RCPT",
    "NO_VALID_RECIPIENTS",
    "PARAM_UNKNOWN",
    "PARAM_SYNTAX",
    "PARAM_DUPLICATE",
    "PARAMS_NEED_EHLO",
    "SENDER_NEEDS_DOMAIN",
    "TOO_MANY_RECIPIENTS",
    "MESSAGE_TOO_BIG",
    "BARE_LF",
    "NUL_IN_DATA",
    "TEXT_LINE_TOO_LONG",
    "TOO_MANY_ERRORS",
    "STARTTLS_UNAVAILABLE",
    "AUTH_NOT_AVAILABLE",
    "AUTH_ALREADY",
    "AUTH_IN_TRANSACTION",
    "AUTH_SYNTAX",
    "AUTH_UNKNOWN_MECHANISM",
    "AUTH_BAD_BASE64",
    "AUTH_CANCELLED",
]

# RFC 3463 2: class "." subject "." detail; class is 2, 4 or 5, subject and detail are
# 1-3 digits without leading zeros.
_ENHANCED = re.compile(r"[245]\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})")


#: (code, enhanced code) pairs found valid: a few dozen in practice, checked once each
#: rather than by the regular expression for every reply made (a remote server's unique
#: "250 2.0.0 Ok: queued as ..." is one per delivered message, issue 15). Bounded, so that a
#: server sending every possible code cannot grow it without end.
_CHECKED: set[tuple[int, str]] = set()


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: `code`, optional RFC 3463 `enhanced` code, one or more text lines."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    # The wire form, made once when first asked for: a reply the relay sends is sent (and
    # its size logged) many times; one a remote server sent us is mostly never encoded.
    _wire: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        # Programming errors are caught here, where the reply is made, not on the wire.
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        enhanced = self.enhanced
        if enhanced is not None and (self.code, enhanced) not in _CHECKED:
            if not _ENHANCED.fullmatch(enhanced):
                raise ValueError(f"malformed enhanced status code: {enhanced!r}")
            # RFC 3463 3.1: the class of the enhanced code matches the reply class.
            if enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {enhanced} does not match {self.code}")
            if len(_CHECKED) < 4096:
                _CHECKED.add((self.code, enhanced))
        if not isinstance(self.lines, tuple) or not self.lines:
            raise ValueError("a reply needs at least one text line (as a tuple)")
        for line in self.lines:
            if "\r" in line or "\n" in line or "\0" in line:
                raise ValueError(f"reply text must not hold CR, LF or NUL: {line!r}")

    def to_bytes(self) -> bytes:
        wire = self._wire
        if not wire:
            wire = self._encode()
            object.__setattr__(self, "_wire", wire)
        return wire

    def _encode(self) -> bytes:
        """Wire form: "250-2.1.0 a\\r\\n250 2.1.0 b\\r\\n" (RFC 5321 4.2.1 multi-line).

        RFC 2034 4: the enhanced code is repeated on every line of a multi-line reply.
        """
        prefix = f"{self.enhanced} " if self.enhanced is not None else ""
        last = len(self.lines) - 1
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    @property
    def positive(self) -> bool:
        """2yz (completion) or 3yz (intermediate), RFC 5321 4.2.1."""
        return self.code < 400

    @property
    def transient(self) -> bool:
        """4yz: try again later."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """5yz: do not repeat the same request."""
        return self.code >= 500

    @property
    def text(self) -> str:
        """All lines joined with a space: for logs."""
        return " ".join(self.lines)

    def __str__(self) -> str:
        prefix = f"{self.enhanced} " if self.enhanced is not None else ""
        return f"{self.code} {prefix}{self.text}"


def reply(code: int, enhanced: str | None, *lines: str) -> Reply:
    """Convenience constructor: reply(250, "2.1.0", "Sender OK")."""
    return Reply(code, enhanced, tuple(lines) or ("",))


# --- positive replies the core sends itself ------------------------------------------------
OK = reply(250, "2.0.0", "OK")                                   # NOOP (RFC 5321 4.1.1.9)
RESET_OK = reply(250, "2.0.0", "Reset state")                    # RSET (4.1.1.5)
CLOSING = reply(221, "2.0.0", "Bye")                             # QUIT (4.1.1.10)
HELP = reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
             "See RFC 5321")
# RFC 5321 3.5.3 / 7.3: a relay cannot verify; 252 says "send it anyway".
CANNOT_VRFY = reply(252, "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery")
# No enhanced code on 354 (RFC 2034 3: only 2xx, 4xx and 5xx replies carry one).
START_DATA = reply(354, None, "End data with <CR><LF>.<CR><LF>")

# --- command syntax (RFC 5321 4.2.2, RFC 3463 5.5.x) ---------------------------------------
UNKNOWN_COMMAND = reply(500, "5.5.2", "Command not recognized")
NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
LINE_TOO_LONG = reply(500, "5.5.2", "Line too long")                 # 4.5.3.1.4
BARE_LINE_END_IN_COMMAND = reply(501, "5.5.2", "Bare CR or LF in command line (RFC 5321 2.3.8)")
NUL_IN_COMMAND = reply(501, "5.5.2", "NUL character in command line")
BAD_ENCODING = reply(500, "5.5.2", "Command line is not valid UTF-8")
SYNTAX_ERROR = reply(501, "5.5.4", "Syntax error in parameters or arguments")
NO_ARGUMENTS_ALLOWED = reply(501, "5.5.4", "Syntax error: no arguments allowed")
HELO_SYNTAX = reply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
VRFY_SYNTAX = reply(501, "5.5.4", "Syntax: VRFY address")
ETRN_SYNTAX = reply(501, "5.5.4", "Syntax: ETRN domain or ETRN @domain")      # RFC 1985 5
ATRN_SYNTAX = reply(501, "5.5.4", "Syntax: ATRN [domain[,domain]...]")         # RFC 2645 5.2.1

# --- command sequence (RFC 5321 4.1.4, 3463 5.5.1) -----------------------------------------
BAD_SEQUENCE = reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = reply(503, "5.5.1", "Nested MAIL command")
NEED_MAIL = reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = reply(503, "5.5.1", "Need RCPT command")
ETRN_IN_TRANSACTION = reply(503, "5.5.1", "ETRN not permitted during a mail transaction")
# RFC 2920 3.1: DATA after only refused RCPTs is answered 554, never 354.
NO_VALID_RECIPIENTS = reply(554, "5.5.1", "No valid recipients")

# --- ESMTP parameters (RFC 5321 4.1.1.11, 1869 6, 1870, 3461, 6152, 6531) ------------------
PARAM_UNKNOWN = reply(555, "5.5.4", "Unsupported parameter")
PARAM_SYNTAX = reply(501, "5.5.4", "Invalid parameter value")
PARAM_DUPLICATE = reply(501, "5.5.4", "Duplicate parameter")
PARAMS_NEED_EHLO = reply(555, "5.5.4", "Parameters need EHLO")
SENDER_NEEDS_DOMAIN = reply(553, "5.1.7", "Sender address must have a domain")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")       # 4.5.3.1.10
MESSAGE_TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed limit")  # RFC 1870 6

# --- message content (DATA) -----------------------------------------------------------------
# SMTP smuggling (CVE-2023-51764 and kin): only CRLF ends a line (RFC 5321 2.3.8).
BARE_LF = reply(550, "5.6.0", "Message contains bare CR or LF line ends (RFC 5321 2.3.8)")
TEXT_LINE_TOO_LONG = reply(550, "5.6.0", "Message line too long (RFC 5321 4.5.3.1.6)")
# RFC 5321 2.3.1 / RFC 5322 2.1: message text is made of characters other than NUL; a next
# hop may cut the line there, or treat what follows as something else (smuggling probes).
NUL_IN_DATA = reply(550, "5.6.0", "Message contains NUL characters (RFC 5322 2.1)")

# --- session ---------------------------------------------------------------------------------
TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
STARTTLS_UNAVAILABLE = reply(502, "5.5.1", "STARTTLS not available")
# RFC 1985 5: "459 Node <x> not allowed: <reason>"; the "#queue" form names a queue of the
# server's own, which this relay does not have.
ETRN_QUEUE_NAMES = reply(459, "4.5.4", "Node not allowed: queue names (#name) are not supported")

# --- AUTH (RFC 4954) -------------------------------------------------------------------------
AUTH_NOT_AVAILABLE = reply(503, "5.5.1", "Authentication not enabled")
AUTH_ALREADY = reply(503, "5.5.1", "Already authenticated")              # RFC 4954 4
AUTH_IN_TRANSACTION = reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
ATRN_NEEDS_AUTH = reply(530, "5.7.0", "Authentication required")             # RFC 2645 5.2.1
AUTH_SYNTAX = reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM = reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_BAD_BASE64 = reply(501, "5.5.2", "Cannot decode base64 data")
AUTH_CANCELLED = reply(501, "5.0.0", "Authentication cancelled")
