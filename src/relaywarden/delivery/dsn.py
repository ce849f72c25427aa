"""Delivery status notifications: when to send one (RFC 3461) and its exact bytes.

A DSN is a multipart/report; report-type=delivery-status message (RFC 6522, which
obsoletes RFC 3462) with three parts:

1. text/plain: what happened, in plain English, one line per recipient, for the person
   (or the admin they forward it to) who reads it;
2. message/delivery-status (RFC 3464): the same facts as fields a program can parse;
3. the original: message/rfc822 (the whole message) or text/rfc822-headers (its header
   block only), as RET asked (RFC 3461 4.3) and as size allows.

Pure: facts in, bytes out. No clock, no randomness except the default Message-ID (pass
``message_id`` to make the output a function of the arguments), no I/O.

Everything that reaches a header line or a delivery-status field is treated as hostile:
diagnostics are remote servers' replies and addresses are whatever the client sent. CR,
LF and every other control character become a space, lines are folded below 998 octets
(RFC 5322 2.1.1), and the message/delivery-status part stays US-ASCII (RFC 3464 2.1).
"""

from __future__ import annotations

import hashlib
import quopri
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from enum import Enum

__all__ = ["DsnAction", "DsnRecipient", "wants_notice", "build_dsn", "MAX_LINE"]

MAX_LINE = 998              # octets without CRLF (RFC 5322 2.1.1)
_FOLD_AT = 78               # RFC 5322 2.1.1: SHOULD be no more than 78
_MAX_DIAGNOSTIC = 4096      # a remote reply is untrusted; 4 KiB says what went wrong
_TEXT_WIDTH = 76

_CRLF = "\r\n"
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")             # CR, LF, NUL, TAB, ESC, ...
_SPACES = re.compile(r" {2,}")
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")    # RFC 3463 2
_DIAG_TYPE = re.compile(r"([A-Za-z][A-Za-z0-9-]*)\s*;\s*(.*)", re.DOTALL)   # RFC 3464 2.3.6
_REPLY_CODE = re.compile(r"[2-5][0-9][0-9]")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[[A-Za-z0-9.:]+\]")
_MSG_ID = re.compile(r"<?([\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+)>?")
_ORIG_MSG_ID = re.compile(rb"<[\x21-\x3b\x3d\x3f-\x7e]{1,900}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_MESSAGE_ID_HEADER = re.compile(rb"(?im)^message-id[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")


class DsnAction(Enum):
    """RFC 3464 2.3.3 action-value ("expanded" is never ours: we expand no lists)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


# RFC 3464 2.3.4 with RFC 3463 3: which status classes each action may carry. A failure
# may be 4.x.x: a transient condition that lasted until the message expired (RFC 3463
# 3.1, "persistent transient failure"), which is how Postfix reports an expired message.
_CLASSES = {
    DsnAction.FAILED: "45",
    DsnAction.DELAYED: "4",
    DsnAction.DELIVERED: "2",
    DsnAction.RELAYED: "2",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DsnRecipient:
    """One recipient's group in a DSN.

    ``original`` is the ORCPT as the queue stores it, xtext-decoded ("rfc822;a@b");
    ``status`` is the enhanced code (RFC 3463); ``diagnostic`` carries its type
    ("smtp; 550 5.1.1 No such user"); times are Unix seconds.

    Nothing here is refused: the values come from remote servers (a "450 5.7.1" reply
    is real), and a DSN that cannot be built is a notice lost. `build_dsn` writes a
    status its action can carry instead (`dsn_status`).
    """

    final: str
    action: DsnAction
    status: str
    original: str | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, DsnAction):
            raise TypeError(f"action must be a DsnAction, not {self.action!r}")

    @property
    def dsn_status(self) -> str:
        """The status as the report writes it (RFC 3464 2.3.4).

        A malformed code becomes the action's generic one (5.0.0, 4.0.0, 2.0.0); a code
        of the wrong class keeps its subject and detail under the action's class: RFC
        3463 2 makes the reply's class authoritative when the two disagree, and the action
        was decided from the reply.
        """
        allowed = _CLASSES[self.action]
        match = _STATUS.fullmatch(self.status)
        if match is None:
            return f"{allowed[-1]}.0.0"
        if match.group(1) in allowed:
            return self.status
        return f"{allowed[-1]}.{match.group(2)}.{match.group(3)}"


def wants_notice(notify: tuple[str, ...] | None, action: DsnAction) -> bool:
    """Whether the sender asked for a notice of this outcome (RFC 3461 4.1).

    NOTIFY=NEVER: never. An explicit list: only what it names (FAILURE for failed, DELAY
    for delayed, SUCCESS for delivered and relayed; RFC 3461 section 5 answers a SUCCESS
    request with a "relayed" notice when the next hop cannot do DSN). No NOTIFY:
    RFC 3461 4.1 lets the MTA choose "FAILURE" or "FAILURE,DELAY"; we choose
    FAILURE,DELAY, as Postfix and sendmail do, because a sender who hears nothing for
    days assumes the mail arrived.
    """
    if notify is None:
        return action in (DsnAction.FAILED, DsnAction.DELAYED)
    asked = {item.strip().upper() for item in notify}
    if "NEVER" in asked:
        return False
    keyword = {
        DsnAction.FAILED: "FAILURE",
        DsnAction.DELAYED: "DELAY",
        DsnAction.DELIVERED: "SUCCESS",
        DsnAction.RELAYED: "SUCCESS",
    }[action]
    return keyword in asked


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: bytes,
    ret: str | None,
    envid: str | None,
    arrival: float,
    now: float,
    max_full_size: int = 10_000_000,
    from_address: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """The complete DSN message (header and body, CRLF line ends) for ``sender``.

    ``from_address`` defaults to MAILER-DAEMON@``reporting_mta``; ``message_id`` (with or
    without angle brackets) defaults to a fresh unique one @``reporting_mta``. The caller
    sends the result with the null reverse-path (RFC 5321 4.5.5) and with
    BODY=8BITMIME when it holds 8-bit octets (only when the original did).

    ValueError: no recipients, a null ``sender`` (a bounce is never bounced, RFC 5321
    4.5.5), an unknown ``ret``, a malformed ``reporting_mta`` or ``message_id``.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if not sender:
        raise ValueError("no DSN goes to the null reverse-path (RFC 5321 4.5.5)")
    if not _HOSTNAME.fullmatch(reporting_mta):
        raise ValueError(f"reporting_mta is not a host name: {reporting_mta!r}")
    ret_key = ret.upper() if ret is not None else None
    if ret_key not in (None, "FULL", "HDRS"):
        raise ValueError(f"RET must be FULL or HDRS (RFC 3461 4.3), not {ret!r}")
    if message_id is None:
        message_id = f"<{int(now)}.{secrets.token_hex(8)}@{reporting_mta}>"
    else:
        match = _MSG_ID.fullmatch(message_id)
        if match is None:
            raise ValueError(f"malformed message_id {message_id!r} (RFC 5322 3.6.4)")
        message_id = f"<{match.group(1)}>"
    from_addr = _clean(from_address) if from_address else f"MAILER-DAEMON@{reporting_mta}"

    actions = {r.action for r in recipients}
    original = _LINE_END.sub(b"\r\n", original)   # stored as received; make sure of CRLF
    headers, full_problem = _split_original(original, max_full_size)

    # RFC 3461 4.3: RET=FULL or HDRS as asked; without RET the MTA chooses. Like Postfix
    # we return the whole message with a failure and the headers with a delay or success
    # notice: the sender still has it, and it will still be delivered or bounced.
    if ret_key == "HDRS":
        want_full, note = False, "The headers of your original message are attached."
    elif ret_key is None and DsnAction.FAILED not in actions:
        want_full, note = False, "The headers of your original message are attached."
    elif full_problem is not None:
        want_full, note = False, full_problem
    else:
        want_full, note = True, "Your original message is attached."
    if want_full:
        third_type = "message/rfc822"
        third_desc = "Undelivered Message" if DsnAction.FAILED in actions else "Message"
        third = original if original.endswith(b"\r\n") or not original else original + b"\r\n"
    else:
        third_type = "text/rfc822-headers"
        third_desc = "Undelivered Message Headers" if DsnAction.FAILED in actions else "Message Headers"
        third = headers
    eightbit = any(b > 0x7F for b in third)

    text_body, text_cte = _text_part(reporting_mta, sender, recipients, arrival, note)
    status_body = _status_part(reporting_mta, recipients, envid, arrival).encode("ascii")

    boundary = _boundary(message_id, (text_body, status_body, third))

    head: list[str] = []
    head += _field("From", f"Mail Delivery System <{from_addr}>")
    head += _field("To", f"<{_clean(sender)}>")
    head += _field("Subject", _subject(actions))
    head += _field("Date", _date(now))
    head += _field("Message-ID", message_id)
    parent = _original_message_id(headers)
    if parent is not None:
        # RFC 3834 3.1.5: an automatic response SHOULD name the message it answers.
        head += _field("In-Reply-To", parent)
        head += _field("References", parent)
    head += _field("Auto-Submitted", "auto-replied")       # RFC 3834 5
    head.append("MIME-Version: 1.0")
    head.append("Content-Type: multipart/report; report-type=delivery-status;")
    head.append(f' boundary="{boundary}"')
    if eightbit:
        # RFC 2045 6.4: a multipart is labelled with the widest encoding of its parts.
        head.append("Content-Transfer-Encoding: 8bit")

    out = bytearray(_CRLF.join(head).encode("utf-8") + b"\r\n\r\n")
    out += b"This is a MIME-encapsulated message.\r\n"
    delimiter = b"\r\n--" + boundary.encode("ascii")
    for part_head, body in (
        (["Content-Description: Notification",
          "Content-Type: text/plain; charset=utf-8",
          f"Content-Transfer-Encoding: {text_cte}"], text_body),
        (["Content-Description: Delivery report",
          "Content-Type: message/delivery-status"], status_body),
        ([f"Content-Description: {third_desc}",
          f"Content-Type: {third_type}"]
         + (["Content-Transfer-Encoding: 8bit"] if eightbit else []), third),
    ):
        out += delimiter + b"\r\n"
        out += _CRLF.join(part_head).encode("ascii") + b"\r\n\r\n"
        # RFC 2046 5.1.1: the CRLF before the next delimiter belongs to the delimiter, so
        # a body that ends with CRLF keeps its last line end.
        out += body
    out += delimiter + b"--\r\n"
    return bytes(out)


# --- the three parts ---------------------------------------------------------------------

_INTRO = {
    DsnAction.FAILED: (
        "Your message could not be delivered to one or more recipients, and the mail "
        "system has stopped trying. The reasons are below."),
    DsnAction.DELAYED: (
        "Your message has not yet been delivered to one or more recipients. The mail "
        "system keeps trying; you do not need to send it again. This is a warning only."),
    DsnAction.DELIVERED: "Your message was delivered to these recipients.",
    DsnAction.RELAYED: (
        "Your message was passed on to the mail systems of these recipients. Those "
        "systems do not report delivery, so you may hear nothing more about them."),
}

_HEADINGS = {
    DsnAction.FAILED: "Delivery failed for:",
    DsnAction.DELAYED: "Delivery is delayed for:",
    DsnAction.DELIVERED: "Delivered to:",
    DsnAction.RELAYED: "Relayed for:",
}


def _subject(actions: set[DsnAction]) -> str:
    if DsnAction.FAILED in actions:
        return "Undelivered Mail Returned to Sender"
    if DsnAction.DELAYED in actions:
        return "Delayed Mail (still being retried)"
    if DsnAction.DELIVERED in actions:
        return "Successful Mail Delivery Report"
    return "Relayed Mail Delivery Report"


def _text_part(reporting_mta: str, sender: str, recipients: Sequence[DsnRecipient],
               arrival: float, note: str) -> tuple[bytes, str]:
    """Part 1 and its transfer encoding: 7bit when ASCII, else quoted-printable.

    Quoted-printable keeps the notice 7-bit, so a bounce of a 7-bit message never needs
    8BITMIME at the next hop, even when a remote reply or an address is UTF-8.
    """
    # Paragraphs of (indent, text); a recipient line hangs under its address.
    paras: list[list[tuple[int, str]]] = []
    paras.append([(0, f"This is the mail system at host {reporting_mta}.")])
    present = [a for a in DsnAction if any(r.action is a for r in recipients)]
    for action in present:
        paras.append([(0, _INTRO[action])])
    paras.append([(0, f"Your message from <{_clean(sender)}> was received on "
                      f"{_date(arrival)}.")])
    if DsnAction.FAILED in present or DsnAction.DELAYED in present:
        paras.append([(0, "If you need help, ask your mail administrator (postmaster) "
                          "and include this report.")])
    paras.append([(0, note)])
    for action in present:
        lines = [(0, _HEADINGS[action])]
        for r in recipients:
            if r.action is action:
                lines.append((4, _explain(r)))
                if action is DsnAction.DELAYED and r.will_retry_until is not None:
                    lines.append((8, f"(the mail system will keep trying until "
                                     f"{_date(r.will_retry_until)})"))
        paras.append(lines)

    out: list[str] = []
    for para in paras:
        for indent, line in para:
            out += textwrap.wrap(line, _TEXT_WIDTH, initial_indent=" " * indent,
                                 subsequent_indent=" " * (indent + 4 if indent else 0),
                                 break_long_words=True, break_on_hyphens=False)
        out.append("")
    text = "\n".join(out)
    if text.isascii():
        return text.replace("\n", _CRLF).encode("ascii"), "7bit"
    encoded = quopri.encodestring(text.encode("utf-8"))
    return encoded.replace(b"\n", b"\r\n"), "quoted-printable"


def _explain(r: DsnRecipient) -> str:
    """One recipient's line, as an admin expects it from Postfix's bounces."""
    who = f"<{_clean(r.final)}>"
    reason = _diagnostic_text(r.diagnostic) if r.diagnostic else None
    host = _clean(r.remote_mta) if r.remote_mta else None
    if r.action in (DsnAction.FAILED, DsnAction.DELAYED):
        if reason:
            # "said" only for the host's own words (an "smtp" diagnostic, RFC 3464 2.3.6).
            if host and r.diagnostic and r.diagnostic.strip().lower().startswith("smtp;"):
                return f"{who}: host {host} said: {reason}"
            return f"{who}: {reason}" + (f" (host {host})" if host else "")
        what = "failed" if r.action is DsnAction.FAILED else "temporarily failed"
        where = f" at host {host}" if host else ""
        return f"{who}: delivery {what}{where} (status {r.dsn_status})"
    verb = "delivered" if r.action is DsnAction.DELIVERED else "relayed"
    if host:
        return f"{who}: {verb} via host {host}" + (f": {reason}" if reason else "")
    return f"{who}: {verb}" + (f": {reason}" if reason else "")


def _status_part(reporting_mta: str, recipients: Sequence[DsnRecipient],
                 envid: str | None, arrival: float) -> str:
    """Part 2, RFC 3464 2.1: per-message fields, then one group per recipient, each
    group preceded by a blank line; fields in the order of the RFC's grammar."""
    lines: list[str] = []
    if envid:
        lines += _field("Original-Envelope-Id", _envid_text(envid))
    lines += _field("Reporting-MTA", f"dns; {reporting_mta}")
    lines += _field("Arrival-Date", _date(arrival))
    for r in recipients:
        lines.append("")
        if r.original:
            lines += _field("Original-Recipient", _orcpt_text(r.original))
        lines += _field("Final-Recipient", _typed_address("rfc822", _clean(r.final)))
        lines += _field("Action", r.action.value)
        lines += _field("Status", r.dsn_status)
        if r.remote_mta:
            lines += _field("Remote-MTA", f"dns; {_ascii(_clean(r.remote_mta))}")
        if r.diagnostic:
            lines += _field("Diagnostic-Code", _diagnostic_field(r.diagnostic))
        if r.last_attempt is not None:
            lines += _field("Last-Attempt-Date", _date(r.last_attempt))
        if r.action is DsnAction.DELAYED and r.will_retry_until is not None:
            lines += _field("Will-Retry-Until", _date(r.will_retry_until))
    return _CRLF.join(lines) + _CRLF


def _split_original(original: bytes, max_full_size: int) -> tuple[bytes, str | None]:
    """The original's header block (each line CRLF-ended, long lines refolded), and why
    the whole message cannot be returned (None when it can)."""
    if original.startswith(b"\r\n"):
        head = b""
    else:
        end = original.find(b"\r\n\r\n")
        head = original if end < 0 else original[:end + 2]
        if head and not head.endswith(b"\r\n"):
            head += b"\r\n"
    lines = head.split(b"\r\n")[:-1] if head else []
    head = b"".join(line + b"\r\n" for raw in lines for line in _refold(raw))
    if len(original) > max_full_size:
        return head, (f"Your original message was too large to return in full "
                      f"({len(original)} bytes, the limit is {max_full_size}); "
                      f"only its headers are attached.")
    if any(len(line) > MAX_LINE for line in original.split(b"\r\n")):
        # RFC 2046 5.2.1: message/rfc822 cannot be re-encoded, so a message whose lines
        # break RFC 5322 2.1.1 could only be returned broken.
        return head, ("Your original message has lines too long to return unchanged; "
                      "only its headers are attached.")
    return head, None


def _refold(line: bytes) -> list[bytes]:
    """A header line over 998 octets, split at whitespace (a fold, RFC 5322 2.2.3), or
    hard when a single word is too long."""
    out: list[bytes] = []
    while len(line) > MAX_LINE:
        cut = max(line.rfind(b" ", 1, MAX_LINE), line.rfind(b"\t", 1, MAX_LINE))
        if cut <= 0:
            out.append(line[:MAX_LINE - 1])
            line = b" " + line[MAX_LINE - 1:]
        else:
            out.append(line[:cut])
            line = line[cut:]
    out.append(line)
    return out


def _original_message_id(headers: bytes) -> str | None:
    match = _MESSAGE_ID_HEADER.search(headers)
    if match is None:
        return None
    found = _ORIG_MSG_ID.search(match.group(1))
    return found.group(0).decode("ascii") if found else None


def _boundary(message_id: str, bodies: Sequence[bytes]) -> str:
    """A boundary derived from the Message-ID (so fixed inputs give fixed bytes) that no
    part contains (RFC 2046 5.1.1)."""
    seed = hashlib.sha256(message_id.encode("utf-8")).hexdigest()
    for n in range(1000):
        boundary = f"=_rw_{seed[:24]}" + (f"_{n}" if n else "")
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in body for body in bodies):
            return boundary
        seed = hashlib.sha256(seed.encode("ascii")).hexdigest()
    raise AssertionError("no free MIME boundary")   # 1000 sha256 collisions: unreachable


# --- field values ------------------------------------------------------------------------

def _clean(text: str) -> str:
    """One line of text: control characters (CR and LF first) become one space."""
    return _SPACES.sub(" ", _CONTROLS.sub(" ", text)).strip()


def _ascii(text: str) -> str:
    """US-ASCII for message/delivery-status (RFC 3464 2.1)."""
    return text if text.isascii() else text.encode("ascii", "replace").decode("ascii")


def _date(ts: float) -> str:
    """RFC 5322 3.3 date-time, in UTC so that the output depends only on the inputs."""
    return format_datetime(datetime.fromtimestamp(int(ts), timezone.utc))


def _xtext_char(ch: str) -> str:
    return "".join(f"+{b:02X}" for b in ch.encode("utf-8"))


def _envid_text(envid: str) -> str:
    """RFC 3464 2.2.1: envelope-id = *text, the ENVID as given, decoded from the SMTP
    xtext (sendmail and Postfix both write it decoded). RFC 3461 4.4 allows only printable
    ASCII; anything else, or a "+" next to it, is written back as xtext hex so that no
    control or 8-bit octet reaches the report."""
    if all(0x20 <= ord(c) <= 0x7E for c in envid):
        return envid
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else _xtext_char(c)
                   for c in envid)


def _typed_address(addr_type: str, address: str) -> str:
    """address-type ";" generic-address (RFC 3464 2.1.2); an address that is not ASCII
    is written as RFC 6533 3 utf-8-addr-xtext under the "utf-8" type."""
    if address.isascii():
        return f"{addr_type}; {address}"
    encoded = "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
        for c in address)
    return f"utf-8; {encoded}"


def _orcpt_text(orcpt: str) -> str:
    """RFC 3464 2.3.1: the ORCPT as the sender gave it (the queue stores it xtext-decoded,
    as Postfix writes it); only a non-ASCII address is re-encoded (RFC 6533 3)."""
    text = _clean(orcpt)
    addr_type, sep, address = text.partition(";")
    if not sep:
        return _typed_address("rfc822", text)
    if text.isascii():
        return text
    return _typed_address(addr_type.strip() or "rfc822", address.strip())


def _diagnostic_field(diagnostic: str) -> str:
    """diagnostic-type ";" *text (RFC 3464 2.3.6), as one cleaned ASCII line."""
    text = _ascii(_clean(diagnostic))[:_MAX_DIAGNOSTIC]
    match = _DIAG_TYPE.fullmatch(text)
    if match is not None:
        return f"{match.group(1)}; {match.group(2)}"
    # No type given: an SMTP reply is "smtp"; anything else is our own words.
    kind = "smtp" if _REPLY_CODE.match(text) else "X-Relaywarden"
    return f"{kind}; {text}"


def _diagnostic_text(diagnostic: str) -> str:
    """The diagnostic for people: without its type, with its own characters."""
    text = _clean(diagnostic)[:_MAX_DIAGNOSTIC]
    match = _DIAG_TYPE.fullmatch(text)
    return match.group(2) if match is not None else text


def _field(name: str, value: str) -> list[str]:
    """``name: value`` folded at spaces near 78 columns, never over 998 (RFC 5322 2.2.3).

    ``value`` is one clean line (no controls), so folding is the only line break.
    """
    words = _clean(value).split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
        while len(line.encode("utf-8")) > MAX_LINE:
            # One word longer than a line: cut it; the fold adds a space on unfolding,
            # the price of keeping every line legal.
            cut = _cut_point(line, MAX_LINE)
            lines.append(line[:cut])
            line = " " + line[cut:]
    lines.append(line)
    return lines


def _cut_point(line: str, limit: int) -> int:
    """The longest prefix of ``line`` whose UTF-8 form fits in ``limit`` octets."""
    size = 0
    for i, ch in enumerate(line):
        size += len(ch.encode("utf-8"))
        if size > limit:
            return i
    return len(line)
