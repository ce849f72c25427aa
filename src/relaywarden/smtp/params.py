"""ESMTP parameters of MAIL and RCPT: the text after the path, checked and typed.

MAIL: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461),
AUTH (RFC 4954 5). RCPT: NOTIFY and ORCPT (RFC 3461). A parameter whose extension is off in
the settings is unknown (555 5.5.4, RFC 5321 4.1.1.11), as it is not in the EHLO reply.

The first problem found is the answer: a malformed token (501 5.5.4), a keyword given twice
(501 5.5.4), parameters after HELO (555 5.5.4, RFC 1869 4.5), then each parameter in order:
a bad value (501 5.5.4), a SIZE over the limit (552 5.3.4, RFC 1870 6), an unknown one (555).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .address import xtext_decode
from .events import MailParams, RcptParams
from .reply import (
    MESSAGE_TOO_BIG,
    PARAM_DUPLICATE,
    PARAM_SYNTAX,
    PARAM_UNKNOWN,
    PARAMS_NEED_EHLO,
    Reply,
)

if TYPE_CHECKING:
    from .server import ServerSettings

__all__ = ["MAX_AUTH_PARAM", "MAX_ENVID", "MAX_ORCPT", "mail_params", "rcpt_params",
           "split_params", "xtext_param"]

# RFC 5321 4.1.2: esmtp-keyword and esmtp-value (+ UTF8-non-ascii, RFC 6531 3.3).
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")
# RFC 3461 4.2: ORCPT = addr-type ";" xtext, addr-type = atom.
_ORCPT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+;.+", re.DOTALL)
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100            # RFC 3461 4.4
MAX_ORCPT = 500            # RFC 3461 4.2
MAX_AUTH_PARAM = 500       # RFC 4954 5 sets none; a mailbox fits in 256 octets (xtext: 3x)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What MAIL and RCPT without parameters carry (frozen values: one of each will do).
_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()


def split_params(text: str, *, extended: bool) -> list[tuple[str, str | None]] | Reply:
    """Split "KEY=value KEY2" (RFC 5321 4.1.2 esmtp-param); keys upper-cased.

    `extended`: the client said EHLO; after HELO parameters are refused (RFC 1869 4.5).
    """
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
    if params and not extended:
        return PARAMS_NEED_EHLO
    return params


def mail_params(text: str, s: ServerSettings, *, extended: bool) -> MailParams | Reply:
    """The Mail-parameters of "MAIL FROM:<path> Mail-parameters" (RFC 5321 4.1.1.2)."""
    if not text:
        return _NO_MAIL_PARAMS              # the usual MAIL: no parameters at all
    parsed = split_params(text, extended=extended)
    if isinstance(parsed, Reply):
        return parsed
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
            envid = xtext_param(value, MAX_ENVID)
            if envid is None:
                return PARAM_SYNTAX
            fields["envid"] = envid
        elif key == "AUTH" and s.auth_mechanisms:   # RFC 4954 5
            identity = xtext_param(value, MAX_AUTH_PARAM)
            if identity is None:
                return PARAM_SYNTAX
            fields["auth"] = identity
        else:
            return PARAM_UNKNOWN                # RFC 5321 4.1.1.11: 555
    return MailParams(**fields)  # type: ignore[arg-type]


def rcpt_params(text: str, s: ServerSettings, *, extended: bool) -> RcptParams | Reply:
    """The Rcpt-parameters of "RCPT TO:<path> Rcpt-parameters" (RFC 5321 4.1.1.3)."""
    if not text:
        return _NO_RCPT_PARAMS
    parsed = split_params(text, extended=extended)
    if isinstance(parsed, Reply):
        return parsed
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for key, value in parsed:
        if key == "NOTIFY" and s.dsn:           # RFC 3461 4.1
            if value is None:
                return PARAM_SYNTAX
            items = tuple(value.upper().split(","))
            if len(set(items)) != len(items):
                return PARAM_SYNTAX
            if items != ("NEVER",) and not set(items) <= _NOTIFY_VALUES:
                return PARAM_SYNTAX
            notify = items
        elif key == "ORCPT" and s.dsn:          # RFC 3461 4.2
            orcpt = xtext_param(value, MAX_ORCPT)
            if orcpt is None or not _ORCPT.fullmatch(orcpt):
                return PARAM_SYNTAX
        else:
            return PARAM_UNKNOWN
    return RcptParams(notify=notify, orcpt=orcpt)


def xtext_param(value: str | None, limit: int) -> str | None:
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
