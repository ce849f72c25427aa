"""The SMTP protocol as sans-IO state machines (no sockets, no asyncio, no ssl here)."""

from .address import Address, AddressError, parse_domain, parse_path, xtext_decode
from .events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Closed,
    DataChunk,
    DataEnd,
    DataStart,
    Atrn,
    Etrn,
    Handled,
    Hello,
    MailFrom,
    MailParams,
    NeedData,
    RcptParams,
    RcptTo,
    StartTls,
)
# Not `reply` (the helper): it would shadow the submodule `relaywarden.smtp.reply`.
from .reply import Reply
from .server import BareLineEnds, ServerConnection, ServerSettings, ServerState, UsageError

__all__ = [
    "Address", "AddressError", "parse_domain", "parse_path", "xtext_decode",
    "NEED_DATA", "NeedData", "Auth", "AuthResponse", "Closed", "DataChunk", "DataEnd",
    "DataStart", "Atrn", "Etrn", "Handled", "Hello", "MailFrom", "MailParams", "RcptParams", "RcptTo",
    "StartTls",
    "Reply",
    "BareLineEnds", "ServerConnection", "ServerSettings", "ServerState", "UsageError",
]
