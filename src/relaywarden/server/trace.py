"""The trace header (RFC 5321 4.4): the ``Received`` field a session writes before the first
byte of a message's content, and what the header and the logs say of the client's name.

Pure: the facts of the session in, the header's bytes out (the clock is the caller's).
"""

from __future__ import annotations

from email.utils import formatdate

from relaywarden.logs.stamp import SecondStamp
from relaywarden.resolver import RdnsResult, RdnsStatus

# RFC 5322 date, local time: formatted once per second, not once per message.
_received_date = SecondStamp(lambda second: formatdate(second, localtime=True))


def clean(text: str, limit: int = 255) -> str:
    """Make client-supplied text safe for a header line: printable ASCII, bounded."""
    # ASCII that is printable is exactly " " to "~": the usual case, checked in C.
    if text.isascii() and text.isprintable():
        return text[:limit]
    out = "".join(c if " " <= c <= "~" else "?" for c in text)
    return out[:limit]


def rdns_note(rdns: RdnsResult | None) -> str | None:
    """What the Received header and the logs say of the client's name (as IIS did): the
    verified name, the name it claims with "unverified", or "RDNS failed"; None when no
    lookup was made."""
    if rdns is None:
        return None
    if rdns.status is RdnsStatus.VERIFIED:
        return rdns.name
    if rdns.status is RdnsStatus.UNVERIFIED:
        return f"{rdns.name} unverified" if rdns.name else "unverified"
    return "RDNS failed"


def received(*, hostname: str, listener: str, helo: str, client_ip: str, note: str | None,
             esmtp: bool, smtputf8: bool, tls: tuple[str, str, int] | None,
             user: str | None, queue_id: str, recipients: list, now: float) -> bytes:
    """The Received field of one message (RFC 5321 4.4): ``from`` the client's HELO name,
    its name (``note``, from rdns_note) and address; ``by`` this listener; ``with`` the
    protocol (RFC 3848, RFC 6531), the queue ID and the TLS parameters; ``for`` the
    recipient when there is only one; the date. ``recipients``: the transaction's records
    (``.address``)."""
    proto = "UTF8SMTP" if smtputf8 else ("ESMTP" if esmtp else "SMTP")
    if tls is not None and proto != "SMTP":
        proto += "S"   # RFC 3848 (ESMTPS), RFC 6531 (UTF8SMTPS); HELO has no TLS type
    if user is not None:
        proto += "A"   # RFC 3848
    name = clean(helo)
    from_part = (f"{name} ({clean(note)} [{client_ip}])" if note
                 else f"{name} ([{client_ip}])")
    cipher = ""
    if tls is not None:
        version, suite, bits = tls
        cipher = f"\r\n\t(version={clean(version, 32)} cipher={clean(suite, 64)} bits={bits})"
    # Only a single recipient is named: listing them all would disclose Bcc's.
    rcpt = (f"\r\n\tfor <{clean(recipients[0].address, 900)}>"
            if len(recipients) == 1 else "")
    return (f"Received: from {from_part}\r\n"
            f"\tby {hostname} (relaywarden, listener {listener})\r\n"
            f"\twith {proto} id {queue_id}{cipher}{rcpt};\r\n"
            f"\t{_received_date(now)}\r\n").encode("ascii")
