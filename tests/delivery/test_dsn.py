"""delivery/dsn.py: when a DSN is due (RFC 3461 4.1) and its exact bytes (RFC 3464, 6522).

Every DSN is read back with the stdlib parser (policy.default), as a mail client would,
and checked line by line for CRLF and the 998-octet limit.
"""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage

import pytest

from relaywarden.delivery.dsn import (
    MAX_LINE,
    DsnAction,
    DsnRecipient,
    build_dsn,
    wants_notice,
)

FAILED, DELAYED, DELIVERED, RELAYED = (
    DsnAction.FAILED, DsnAction.DELAYED, DsnAction.DELIVERED, DsnAction.RELAYED)

ARRIVAL = 1736240000.0          # Tue, 07 Jan 2025 08:53:20 +0000
ATTEMPT = 1736244000.0          # Tue, 07 Jan 2025 10:00:00 +0000
NOW = 1736244100.0              # Tue, 07 Jan 2025 10:01:40 +0000
UNTIL = 1736672400.0            # Sun, 12 Jan 2025 09:00:00 +0000

ORIGINAL = (
    b"Received: from printer.corp.example ([192.0.2.10])\r\n"
    b"\tby relay.example.com; Tue, 07 Jan 2025 08:53:20 +0000\r\n"
    b"From: Alice <alice@corp.example>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Scan from MFP-3\r\n"
    b"Message-ID: <scan.42@corp.example>\r\n"
    b"\r\n"
    b"Please find the scan attached.\r\n"
)
ORIGINAL_HEADERS = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]


def rcpt(action: DsnAction = FAILED, **kw) -> DsnRecipient:
    defaults = {
        FAILED: dict(status="5.1.1", diagnostic="smtp; 550 5.1.1 <bob@example.net>: User unknown"),
        DELAYED: dict(status="4.4.1", diagnostic="smtp; 451 4.4.1 Try again later",
                      will_retry_until=UNTIL),
        DELIVERED: dict(status="2.0.0", diagnostic="smtp; 250 2.0.0 Ok: queued as 4ABC"),
        RELAYED: dict(status="2.0.0", diagnostic="smtp; 250 2.0.0 Ok"),
    }[action]
    args = dict(final="bob@example.net", action=action, remote_mta="mx.example.net",
                last_attempt=ATTEMPT) | defaults | kw
    return DsnRecipient(**args)


def make(recipients=None, **kw) -> bytes:
    args = dict(reporting_mta="relay.example.com", sender="alice@corp.example",
                recipients=recipients if recipients is not None else [rcpt()],
                original=ORIGINAL, ret=None, envid=None, arrival=ARRIVAL, now=NOW,
                message_id="<dsn.1@relay.example.com>") | kw
    return build_dsn(**args)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def parts(data: bytes) -> list[EmailMessage]:
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    return list(msg.iter_parts())


def status_groups(data: bytes) -> list[list[tuple[str, str]]]:
    """The raw message/delivery-status body as groups of (name, unfolded value)."""
    body = raw_part(data, 1)
    groups = []
    for block in body.split(b"\r\n\r\n"):
        block = block.strip(b"\r\n")
        if not block:
            continue
        text = re.sub(r"\r\n[ \t]", " ", block.decode("ascii"))
        groups.append([tuple(line.split(": ", 1)) for line in text.split("\r\n")])
    return groups


def raw_part(data: bytes, index: int) -> bytes:
    """The raw body bytes of part ``index`` (between its header and the next delimiter)."""
    boundary = parse(data).get_boundary().encode()
    chunks = data.split(b"\r\n--" + boundary)
    part = chunks[index + 1]
    assert part.startswith(b"\r\n")
    return part[part.index(b"\r\n\r\n") + 4:]


def assert_wire_clean(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    for line in data.split(b"\r\n"):
        assert len(line) <= MAX_LINE, line[:80]


# --- wants_notice: RFC 3461 4.1, one line each ----------------------------------------

@pytest.mark.parametrize("notify, action, expected", [
    (None, FAILED, True),                        # default: failures are reported
    (None, DELAYED, True),                       # our choice at the MTA's discretion
    (None, DELIVERED, False),
    (None, RELAYED, False),
    (("NEVER",), FAILED, False),
    (("NEVER",), DELAYED, False),
    (("NEVER",), DELIVERED, False),
    (("NEVER",), RELAYED, False),
    (("FAILURE",), FAILED, True),
    (("FAILURE",), DELAYED, False),
    (("FAILURE",), DELIVERED, False),
    (("DELAY",), DELAYED, True),
    (("DELAY",), FAILED, False),
    (("SUCCESS",), DELIVERED, True),
    (("SUCCESS",), RELAYED, True),               # RFC 3461 5: relayed answers SUCCESS
    (("SUCCESS",), FAILED, False),
    (("SUCCESS",), DELAYED, False),
    (("SUCCESS", "FAILURE"), FAILED, True),
    (("SUCCESS", "FAILURE"), DELAYED, False),
    (("FAILURE", "DELAY"), DELAYED, True),
    (("FAILURE", "DELAY"), RELAYED, False),
    (("failure", "delay"), FAILED, True),        # keywords are case-insensitive
    ((), FAILED, False),                         # an explicit empty list names nothing
])
def test_wants_notice(notify, action, expected):
    assert wants_notice(notify, action) is expected


# --- the golden DSN ---------------------------------------------------------------------

GOLDEN = (
    b"From: Mail Delivery System <MAILER-DAEMON@relay.example.com>\r\n"
    b"To: <alice@corp.example>\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Date: Tue, 07 Jan 2025 10:01:40 +0000\r\n"
    b"Message-ID: <dsn.1@relay.example.com>\r\n"
    b"In-Reply-To: <scan.42@corp.example>\r\n"
    b"References: <scan.42@corp.example>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
    b" boundary=\"=_rw_BOUNDARY\"\r\n"
    b"\r\n"
    b"This is a MIME-encapsulated message.\r\n"
    b"\r\n"
    b"--=_rw_BOUNDARY\r\n"
    b"Content-Description: Notification\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"This is the mail system at host relay.example.com.\r\n"
    b"\r\n"
    b"Your message could not be delivered to one or more recipients, and the mail\r\n"
    b"system has stopped trying. The reasons are below.\r\n"
    b"\r\n"
    b"Your message from <alice@corp.example> was received on Tue, 07 Jan 2025\r\n"
    b"08:53:20 +0000.\r\n"
    b"\r\n"
    b"If you need help, ask your mail administrator (postmaster) and include this\r\n"
    b"report.\r\n"
    b"\r\n"
    b"Your original message is attached.\r\n"
    b"\r\n"
    b"Delivery failed for:\r\n"
    b"    <bob@example.net>: host mx.example.net said: 550 5.1.1\r\n"
    b"        <bob@example.net>: User unknown\r\n"
    b"\r\n"
    b"--=_rw_BOUNDARY\r\n"
    b"Content-Description: Delivery report\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Original-Envelope-Id: scan-42+a\r\n"
    b"Reporting-MTA: dns; relay.example.com\r\n"
    b"Arrival-Date: Tue, 07 Jan 2025 08:53:20 +0000\r\n"
    b"\r\n"
    b"Original-Recipient: rfc822;Bob@Example.NET\r\n"
    b"Final-Recipient: rfc822; bob@example.net\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Remote-MTA: dns; mx.example.net\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: User unknown\r\n"
    b"Last-Attempt-Date: Tue, 07 Jan 2025 10:00:00 +0000\r\n"
    b"\r\n"
    b"--=_rw_BOUNDARY\r\n"
    b"Content-Description: Undelivered Message\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    + ORIGINAL +
    b"\r\n"
    b"--=_rw_BOUNDARY--\r\n"
)


def test_golden_failure_dsn():
    data = make([rcpt(original="rfc822;Bob@Example.NET")], envid="scan-42+a")
    boundary = parse(data).get_boundary()
    assert re.fullmatch(r"=_rw_[0-9a-f]{24}", boundary)
    assert data == GOLDEN.replace(b"=_rw_BOUNDARY", boundary.encode())
    assert_wire_clean(data)


def test_output_is_a_function_of_the_inputs():
    assert make() == make()
    assert make(message_id="<a@relay.example.com>") != make(message_id="<b@relay.example.com>")


# --- structure and top-level header ------------------------------------------------------

def test_structure_is_multipart_report_with_three_parts():
    msg = parse(make())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    assert not msg.defects
    for part in msg.walk():
        assert not part.defects, (part.get_content_type(), part.defects)


def test_top_level_header_fields():
    msg = parse(make())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.com>"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.example.com"
    assert msg["To"].addresses[0].addr_spec == "alice@corp.example"
    assert msg["Date"].datetime.timestamp() == NOW
    assert msg["Message-ID"] == "<dsn.1@relay.example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg["In-Reply-To"] == msg["References"] == "<scan.42@corp.example>"
    assert "Content-Transfer-Encoding" not in msg       # all 7-bit


def test_from_address_can_be_configured():
    msg = parse(make(from_address="postmaster@corp.example"))
    assert msg["From"].addresses[0].addr_spec == "postmaster@corp.example"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"


@pytest.mark.parametrize("actions, subject", [
    ([FAILED], "Undelivered Mail Returned to Sender"),
    ([DELAYED], "Delayed Mail (still being retried)"),
    ([DELIVERED], "Successful Mail Delivery Report"),
    ([RELAYED], "Relayed Mail Delivery Report"),
    ([DELIVERED, RELAYED], "Successful Mail Delivery Report"),
    ([DELAYED, FAILED], "Undelivered Mail Returned to Sender"),   # a failure dominates
])
def test_subject_follows_the_actions(actions, subject):
    assert parse(make([rcpt(a) for a in actions]))["Subject"] == subject


def test_default_message_id_is_unique_and_ours():
    ids = {parse(make(message_id=None))["Message-ID"] for _ in range(20)}
    assert len(ids) == 20
    for mid in ids:
        assert re.fullmatch(r"<[!-~]+@relay\.example\.com>", mid)


@pytest.mark.parametrize("given, written", [
    ("<x.1@relay.example.com>", "<x.1@relay.example.com>"),
    ("x.1@relay.example.com", "<x.1@relay.example.com>"),
])
def test_message_id_is_injectable(given, written):
    assert parse(make(message_id=given))["Message-ID"] == written


@pytest.mark.parametrize("bad", ["no-at-sign", "<a b@c>", "<a@b>\r\nBcc: x@y", ""])
def test_malformed_message_id_is_refused(bad):
    with pytest.raises(ValueError):
        make(message_id=bad)


def test_no_in_reply_to_without_a_usable_original_message_id():
    plain = b"Subject: x\r\n\r\nbody\r\n"
    assert "In-Reply-To" not in parse(make(original=plain))
    hostile = b"Message-ID: not an id\r\nSubject: x\r\n\r\nbody\r\n"
    assert "In-Reply-To" not in parse(make(original=hostile))
    folded = b"Subject: x\r\nMessage-ID:\r\n <folded@corp.example>\r\n\r\nbody\r\n"
    assert parse(make(original=folded))["In-Reply-To"] == "<folded@corp.example>"


# --- message/delivery-status --------------------------------------------------------------

def test_per_message_fields_with_envid():
    groups = status_groups(make(envid="ID-1"))
    assert groups[0] == [
        ("Original-Envelope-Id", "ID-1"),
        ("Reporting-MTA", "dns; relay.example.com"),
        ("Arrival-Date", "Tue, 07 Jan 2025 08:53:20 +0000"),
    ]


@pytest.mark.parametrize("envid", [None, ""])
def test_per_message_fields_without_envid(envid):
    groups = status_groups(make(envid=envid))
    assert [name for name, _ in groups[0]] == ["Reporting-MTA", "Arrival-Date"]


def test_stdlib_reads_the_delivery_status_groups():
    data = make([rcpt(FAILED), rcpt(DELAYED, final="carol@example.org")], envid="E1")
    report = parts(data)[1]
    groups = report.get_payload()
    assert len(groups) == 3
    assert groups[0]["Reporting-MTA"] == "dns; relay.example.com"
    assert groups[0]["Original-Envelope-Id"] == "E1"
    assert groups[1]["Final-Recipient"] == "rfc822; bob@example.net"
    assert groups[2]["Final-Recipient"] == "rfc822; carol@example.org"
    assert groups[2]["Action"] == "delayed"


def test_failed_recipient_fields():
    r = rcpt(FAILED, original="rfc822;bob@example.net")
    assert status_groups(make([r]))[1] == [
        ("Original-Recipient", "rfc822;bob@example.net"),
        ("Final-Recipient", "rfc822; bob@example.net"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; mx.example.net"),
        ("Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.net>: User unknown"),
        ("Last-Attempt-Date", "Tue, 07 Jan 2025 10:00:00 +0000"),
    ]


def test_delayed_recipient_fields():
    assert status_groups(make([rcpt(DELAYED)]))[1] == [
        ("Final-Recipient", "rfc822; bob@example.net"),
        ("Action", "delayed"),
        ("Status", "4.4.1"),
        ("Remote-MTA", "dns; mx.example.net"),
        ("Diagnostic-Code", "smtp; 451 4.4.1 Try again later"),
        ("Last-Attempt-Date", "Tue, 07 Jan 2025 10:00:00 +0000"),
        ("Will-Retry-Until", "Sun, 12 Jan 2025 09:00:00 +0000"),
    ]


def test_relayed_recipient_fields():
    assert status_groups(make([rcpt(RELAYED)]))[1] == [
        ("Final-Recipient", "rfc822; bob@example.net"),
        ("Action", "relayed"),
        ("Status", "2.0.0"),
        ("Remote-MTA", "dns; mx.example.net"),
        ("Diagnostic-Code", "smtp; 250 2.0.0 Ok"),
        ("Last-Attempt-Date", "Tue, 07 Jan 2025 10:00:00 +0000"),
    ]


def test_delivered_recipient_fields():
    group = dict(status_groups(make([rcpt(DELIVERED)]))[1])
    assert group["Action"] == "delivered"
    assert group["Status"] == "2.0.0"


def test_optional_fields_are_left_out_when_unknown():
    r = DsnRecipient(final="bob@example.net", action=FAILED, status="5.4.4")
    assert status_groups(make([r]))[1] == [
        ("Final-Recipient", "rfc822; bob@example.net"),
        ("Action", "failed"),
        ("Status", "5.4.4"),
    ]


def test_will_retry_until_only_for_delayed():
    r = rcpt(FAILED, status="4.4.7", will_retry_until=UNTIL)   # expired: 4.x.x failure
    assert "Will-Retry-Until" not in dict(status_groups(make([r]))[1])


def test_one_group_per_recipient_in_order():
    recipients = [rcpt(FAILED, final=f"u{i}@example.net") for i in range(5)]
    groups = status_groups(make(recipients))
    assert [dict(g)["Final-Recipient"] for g in groups[1:]] == [
        f"rfc822; u{i}@example.net" for i in range(5)]
    assert b"\r\n\r\nFinal-Recipient: rfc822; u1@example.net\r\n" in raw_part(make(recipients), 1)


def test_envid_is_echoed_decoded_and_exact():
    # RFC 3464 2.2.1: case and spelling preserved; "+" is the decoded character.
    assert dict(status_groups(make(envid="AbC+1=2 x"))[0])["Original-Envelope-Id"] == "AbC+1=2 x"


def test_envid_outside_printable_ascii_is_written_as_xtext():
    data = make(envid="id\r\nBcc: evil@x.example\u00e9")
    value = dict(status_groups(data)[0])["Original-Envelope-Id"]
    assert value == "id+0D+0ABcc:+20evil@x.example+C3+A9"
    assert b"\r\nBcc:" not in data


def test_orcpt_is_echoed_as_stored():
    r = rcpt(original="rfc822;Bob.Original@Example.NET")
    assert dict(status_groups(make([r]))[1])["Original-Recipient"] == "rfc822;Bob.Original@Example.NET"
    bare = rcpt(original="bob@example.net")           # no type stored: rfc822
    assert dict(status_groups(make([bare]))[1])["Original-Recipient"] == "rfc822; bob@example.net"


def test_non_ascii_addresses_use_the_utf8_address_type():
    r = rcpt(final="j\u00f6rg@b\u00fccher.example", original="rfc822;j\u00f6rg@b\u00fccher.example")
    group = dict(status_groups(make([r]))[1])
    assert group["Final-Recipient"] == "utf-8; j\\x{F6}rg@b\\x{FC}cher.example"
    assert group["Original-Recipient"] == "utf-8; j\\x{F6}rg@b\\x{FC}cher.example"
    raw_part(make([r]), 1).decode("ascii")            # the report stays US-ASCII


@pytest.mark.parametrize("diagnostic, field", [
    ("smtp; 550 5.1.1 no", "smtp; 550 5.1.1 no"),
    ("smtp;550 5.1.1 no", "smtp; 550 5.1.1 no"),
    ("550 5.1.1 no", "smtp; 550 5.1.1 no"),                       # a bare reply is smtp
    ("connection refused by the host", "X-Relaywarden; connection refused by the host"),
    ("smtp; 550-5.1.1 first\r\n550 5.1.1 second", "smtp; 550-5.1.1 first 550 5.1.1 second"),
    ("smtp; 554 5.7.1 r\u00e9jet\u00e9", "smtp; 554 5.7.1 r?jet?"),   # report is ASCII
])
def test_diagnostic_code_field(diagnostic, field):
    r = rcpt(diagnostic=diagnostic)
    assert dict(status_groups(make([r]))[1])["Diagnostic-Code"] == field


def test_long_diagnostic_is_folded_and_capped():
    words = "smtp; 550 5.7.1 " + " ".join(f"word{i}" for i in range(2000))
    data = make([rcpt(diagnostic=words)])
    assert_wire_clean(data)
    value = dict(status_groups(data)[1])["Diagnostic-Code"]
    assert value.startswith("smtp; 550 5.7.1 word0 word1 ")
    assert len(value) <= 4096 + len("smtp; ")
    report = raw_part(data, 1)
    assert all(len(line) <= 78 for line in report.split(b"\r\n"))


def test_unbreakable_diagnostic_is_cut_below_998():
    data = make([rcpt(diagnostic="smtp; 550 " + "x" * 3000)])
    assert_wire_clean(data)
    value = dict(status_groups(data)[1])["Diagnostic-Code"]
    assert value.replace(" ", "").startswith("smtp;550" + "x" * 100)


# --- header injection: remote text and addresses stay inside their field -------------------

INJECTIONS = [
    "550 5.1.1 no\r\nBcc: victim@example.org",
    "550 5.1.1 no\nBcc: victim@example.org",
    "550 5.1.1 no\rBcc: victim@example.org",
    "550 5.1.1 no\r\n\r\n--=_rw_fake\r\nContent-Type: text/html\r\n\r\n<script>",
    "550 5.1.1 no\x00\x0b\x0c\x1b[31m\x7f",
]


@pytest.mark.parametrize("diagnostic", INJECTIONS)
def test_injection_in_diagnostic_stays_in_its_field(diagnostic):
    data = make([rcpt(diagnostic="smtp; " + diagnostic)])
    assert_wire_clean(data)
    msg = parse(data)
    assert "Bcc" not in msg
    assert len(list(msg.iter_parts())) == 3
    assert not re.search(rb"\r\n(Bcc|Content-Type: text/html)", data)
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", data) is None
    group = status_groups(data)[1]
    assert [n for n, _ in group].count("Diagnostic-Code") == 1
    assert "Bcc" not in dict(group)


@pytest.mark.parametrize("field", ["final", "original", "remote_mta"])
def test_injection_in_recipient_fields_stays_in_its_field(field):
    evil = "bob@example.net\r\nAction: delivered\r\nBcc: victim@example.org"
    data = make([rcpt(**{field: evil})])
    assert_wire_clean(data)
    assert b"\r\nBcc:" not in data
    group = status_groups(data)[1]
    assert [n for n, _ in group].count("Action") == 1
    assert dict(group)["Action"] == "failed"


def test_injection_in_sender_stays_in_the_to_field():
    data = make(sender="alice@corp.example\r\nBcc: victim@example.org")
    assert_wire_clean(data)
    msg = parse(data)
    assert "Bcc" not in msg
    assert b"\r\nBcc:" not in data


# --- the returned original: RET (RFC 3461 4.3) and size -------------------------------------

@pytest.mark.parametrize("ret, action, kind", [
    (None, FAILED, "message/rfc822"),
    ("FULL", FAILED, "message/rfc822"),
    ("full", FAILED, "message/rfc822"),
    ("HDRS", FAILED, "text/rfc822-headers"),
    (None, DELAYED, "text/rfc822-headers"),          # MTA's choice: headers with a warning
    (None, DELIVERED, "text/rfc822-headers"),
    (None, RELAYED, "text/rfc822-headers"),
    ("FULL", DELAYED, "message/rfc822"),             # asked for: honoured
    ("FULL", DELIVERED, "message/rfc822"),
    ("HDRS", DELIVERED, "text/rfc822-headers"),
])
def test_ret_chooses_the_third_part(ret, action, kind):
    assert parts(make([rcpt(action)], ret=ret))[2].get_content_type() == kind


def test_full_return_carries_the_whole_original():
    third = parts(make(ret="FULL"))[2]
    inner = third.get_payload(0)
    assert inner["Subject"] == "Scan from MFP-3"
    assert inner.get_content().strip() == "Please find the scan attached."
    assert raw_part(make(ret="FULL"), 2) == ORIGINAL


def test_headers_return_carries_exactly_the_header_block():
    data = make(ret="HDRS")
    assert raw_part(data, 2) == ORIGINAL_HEADERS
    assert b"Please find the scan" not in data
    assert "headers of your original message" in parts(data)[0].get_content()
    assert parts(data)[2]["Content-Description"] == "Undelivered Message Headers"


def test_original_over_the_size_limit_is_returned_as_headers():
    data = make(max_full_size=len(ORIGINAL) - 1)
    assert parts(data)[2].get_content_type() == "text/rfc822-headers"
    assert raw_part(data, 2) == ORIGINAL_HEADERS
    text = " ".join(parts(data)[0].get_content().split())
    assert f"too large to return in full ({len(ORIGINAL)} bytes, the limit is {len(ORIGINAL) - 1})" in text
    assert parts(make(max_full_size=len(ORIGINAL)))[2].get_content_type() == "message/rfc822"


def test_original_with_overlong_lines_is_returned_as_headers():
    original = ORIGINAL + b"y" * 5000 + b"\r\n"
    data = make(original=original)
    assert_wire_clean(data)
    assert parts(data)[2].get_content_type() == "text/rfc822-headers"
    assert "lines too long" in parts(data)[0].get_content()


def test_overlong_header_line_is_refolded_in_the_headers_part():
    long_subject = b"Subject: " + b" ".join(b"w%d" % i for i in range(600)) + b"\r\n"
    unbroken = b"X-Token: " + b"t" * 2500 + b"\r\n"
    original = long_subject + unbroken + b"\r\nbody\r\n"
    data = make(original=original, ret="HDRS")
    assert_wire_clean(data)
    headers = raw_part(data, 2)
    assert re.sub(rb"\r\n(?=[ \t])", b"", headers).replace(b" ", b"") == \
        (long_subject + unbroken).replace(b" ", b"")


def test_eight_bit_original_is_labelled_8bit():
    original = "Subject: Gr\u00fc\u00dfe\r\n\r\nK\u00e4se\r\n".encode("utf-8")
    data = make(original=original)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    third = parts(data)[2]
    assert third.get_content_type() == "message/rfc822"
    assert third["Content-Transfer-Encoding"] == "8bit"
    assert raw_part(data, 2) == original
    assert_wire_clean(data)


def test_eight_bit_headers_only_are_labelled_8bit():
    original = "Subject: Gr\u00fc\u00dfe\r\n\r\nK\u00e4se\r\n".encode("utf-8")
    third = parts(make(original=original, ret="HDRS"))[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert third["Content-Transfer-Encoding"] == "8bit"


def test_bare_line_ends_in_the_original_become_crlf():
    original = b"Subject: x\nFrom: a@b.example\r\rbody\nmore\r\n"
    data = make(original=original)
    assert_wire_clean(data)
    assert raw_part(data, 2) == b"Subject: x\r\nFrom: a@b.example\r\n\r\nbody\r\nmore\r\n"


def test_original_without_final_crlf_or_body():
    data = make(original=b"Subject: only headers")
    assert_wire_clean(data)
    assert raw_part(data, 2) == b"Subject: only headers\r\n"
    empty = make(original=b"")
    assert_wire_clean(empty)
    assert len(parts(empty)) == 3


def test_boundary_never_occurs_in_the_content():
    first = parse(make()).get_boundary()
    original = ORIGINAL + b"--" + first.encode() + b"\r\n--" + first.encode() + b"--\r\n"
    data = make(original=original)
    boundary = parse(data).get_boundary()
    assert boundary != first
    assert raw_part(data, 2) == original
    assert len(parts(data)) == 3


# --- the human-readable part ---------------------------------------------------------------

def test_text_part_explains_every_recipient():
    recipients = [
        rcpt(FAILED),
        rcpt(DELAYED, final="carol@example.org", remote_mta=None),
        rcpt(DELIVERED, final="dave@example.com"),
        rcpt(RELAYED, final="erin@example.com", diagnostic=None),
    ]
    text = " ".join(parts(make(recipients))[0].get_content().split())
    assert "This is the mail system at host relay.example.com." in text
    assert ("<bob@example.net>: host mx.example.net said: "
            "550 5.1.1 <bob@example.net>: User unknown") in text
    assert "<carol@example.org>: 451 4.4.1 Try again later" in text
    assert "will keep trying until Sun, 12 Jan 2025 09:00:00 +0000" in text
    assert "<dave@example.com>: delivered via host mx.example.net: 250 2.0.0 Ok: queued as 4ABC" in text
    assert "<erin@example.com>: relayed via host mx.example.net" in text
    for heading in ("Delivery failed for:", "Delivery is delayed for:", "Delivered to:",
                    "Relayed for:"):
        assert heading in text
    assert "smtp;" not in text                         # the type is for programs


@pytest.mark.parametrize("action, status, host, line", [
    (FAILED, "5.4.4", None, "<bob@example.net>: delivery failed (status 5.4.4)"),
    (FAILED, "5.4.7", "mx.example.net",
     "<bob@example.net>: delivery failed at host mx.example.net (status 5.4.7)"),
    (DELAYED, "4.4.1", "mx.example.net",
     "<bob@example.net>: delivery temporarily failed at host mx.example.net (status 4.4.1)"),
    (DELIVERED, "2.0.0", None, "<bob@example.net>: delivered"),
    (RELAYED, "2.0.0", "mx.example.net", "<bob@example.net>: relayed via host mx.example.net"),
])
def test_text_part_without_diagnostic(action, status, host, line):
    r = DsnRecipient(final="bob@example.net", action=action, status=status, remote_mta=host)
    text = " ".join(parts(make([r]))[0].get_content().split())
    assert line in text


def test_text_part_lines_are_short():
    data = make([rcpt(diagnostic="smtp; 550 " + "z" * 2000)])
    body = raw_part(data, 0)
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_non_ascii_diagnostic_is_quoted_printable_in_the_text_part():
    r = rcpt(diagnostic="smtp; 550 5.1.1 Empf\u00e4nger unbekannt")
    data = make([r])
    text_part = parts(data)[0]
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Empf\u00e4nger unbekannt" in " ".join(text_part.get_content().split())
    assert max(data) < 0x80                            # the DSN of a 7-bit message stays 7-bit
    assert_wire_clean(data)


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(sender=""),                                   # never bounce a bounce
    dict(recipients=[]),
    dict(ret="BODY"),
    dict(reporting_mta=""),
    dict(reporting_mta="relay.example.com\r\nBcc: x"),
    dict(reporting_mta="relay example"),
])
def test_build_dsn_refuses(kw):
    with pytest.raises(ValueError):
        make(**kw)


@pytest.mark.parametrize("action, status, written", [
    (FAILED, "5.1.1", "5.1.1"),
    (FAILED, "4.4.7", "4.4.7"),          # RFC 3463 3.1: a persistent transient failure
    (FAILED, "2.1.5", "5.1.5"),          # wrong class: the action's class, same detail
    (DELAYED, "5.7.1", "4.7.1"),         # "450 5.7.1" is a real remote reply
    (DELIVERED, "4.4.1", "2.4.1"),
    (RELAYED, "5.0.0", "2.0.0"),
    (FAILED, "5.1", "5.0.0"),            # malformed: the action's generic code
    (DELAYED, "6.1.1", "4.0.0"),
    (DELIVERED, "", "2.0.0"),
    (FAILED, "5.1.1\r\nBcc: x", "5.0.0"),
    (FAILED, "5.\u0661.1", "5.0.0"),      # only ASCII digits
])
def test_status_is_written_so_its_action_can_carry_it(action, status, written):
    # Never refused: a DSN that cannot be built is a notice lost.
    r = DsnRecipient(final="bob@example.net", action=action, status=status)
    assert r.dsn_status == written
    data = make([r])
    assert_wire_clean(data)
    assert dict(status_groups(data)[1])["Status"] == written


def test_recipient_needs_a_real_action():
    with pytest.raises(TypeError):
        DsnRecipient(final="bob@example.net", action="failed", status="5.0.0")


def test_failure_may_carry_a_persistent_transient_status():
    # RFC 3463 3.1: 4.x.x after the queue lifetime ran out (Postfix reports 4.4.7 so).
    r = rcpt(FAILED, status="4.4.7", diagnostic="smtp; 451 4.4.7 message expired")
    assert dict(status_groups(make([r]))[1])["Status"] == "4.4.7"


# --- wire hygiene over a matrix of inputs ------------------------------------------------------

@pytest.mark.parametrize("ret", [None, "FULL", "HDRS"])
@pytest.mark.parametrize("action", list(DsnAction))
def test_every_dsn_is_crlf_and_within_998(ret, action):
    recipients = [rcpt(action, final=f"user{i}-{'x' * 40}@example.net",
                       diagnostic="smtp; " + "5" * 1200 + " y" * 600 + "\n\r\x00 tail")
                  for i in range(3)]
    if action is not FAILED:
        recipients = [rcpt(action, final=r.final, diagnostic=r.diagnostic) for r in recipients]
    data = make(recipients, ret=ret, envid="E" * 100, original=ORIGINAL + b"line\n" * 50)
    assert_wire_clean(data)
    msg = parse(data)
    for part in msg.walk():
        assert not part.defects
