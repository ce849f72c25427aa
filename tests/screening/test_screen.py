"""The attachment screener on messages built by hand and by the email package."""

from __future__ import annotations

import base64
import io
import zipfile
from email.message import EmailMessage

import pytest

from relaywarden.screening import ScreenRules, screen

RULES = ScreenRules(blocked_extensions=frozenset({"exe", "scr", "js", "vbs"}),
                    blocked_content_types=frozenset({"application/x-msdownload"}),
                    max_attachment_size=100_000)


def message(*attachments: tuple[str | None, bytes, str], text: str = "hello") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.net", "files"
    msg.set_content(text)
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def zipped(**members: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def check(raw: bytes, rules: ScreenRules = RULES, chunk: int = 0):
    chunks = [raw] if not chunk else [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    return screen(chunks, rules)


def test_a_clean_message_passes():
    assert check(message(("report.pdf", b"%PDF-1.4 ...", "application/pdf"))) is None
    assert check(message()) is None


@pytest.mark.parametrize("name", ["setup.exe", "SETUP.EXE", "invoice.pdf.exe", "x.scr. ",
                                  "dir\\evil.js", "r\u00e9sum\u00e9.vbs"])
def test_blocked_extensions(name):
    found = check(message((name, b"MZ\x90\x00", "application/octet-stream")))
    assert found is not None and found.rule == "screening.blocked_extensions"
    assert found.filename.strip() == name.strip() and "not allowed" in found.detail


def test_rfc2047_and_rfc2231_names_are_decoded():
    raw = (b"From: a@example.com\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--XX\r\nContent-Type: application/octet-stream; name=\"=?utf-8?B?aW52b2ljZS5leGU=?=\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XX--\r\n")
    assert check(raw).filename == "invoice.exe"
    raw2 = raw.replace(b'Content-Type: application/octet-stream; name="=?utf-8?B?aW52b2ljZS5leGU=?="',
                       b"Content-Type: application/octet-stream\r\n"
                       b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.SCR")
    assert check(raw2).filename == "r\u00e9sum\u00e9.SCR"


def test_content_type_and_size():
    found = check(message(("tool.bin", b"MZ", "application/x-msdownload")))
    assert found.rule == "screening.blocked_content_types"
    found = check(message(("big.pdf", b"x" * 100_001, "application/pdf")))
    assert found.rule == "screening.max_attachment_size" and "100001 bytes" in found.detail
    assert check(message(("ok.pdf", b"x" * 100_000, "application/pdf"))) is None


def test_names_inside_zip_archives_also_when_renamed_and_nested():
    found = check(message(("docs.zip", zipped(**{"a.txt": b"x", "run/setup.exe": b"MZ"}),
                           "application/zip")))
    assert found.rule == "screening.blocked_extensions" and found.filename == "run/setup.exe"
    # A ZIP called .pdf is still opened: its first bytes say what it is.
    assert check(message(("scan.pdf", zipped(**{"a.js": b"x"}), "application/pdf"))).filename == "a.js"
    inner = zipped(**{"payload.scr": b"x"})
    found = check(message(("outer.zip", zipped(**{"inner.zip": inner}), "application/zip")))
    assert found.filename == "payload.scr" and "outer.zip/inner.zip" in found.detail
    assert check(message(("fine.zip", zipped(**{"a.txt": b"x"}), "application/zip"))) is None
    # Not screened inside when look_inside_zip is off.
    off = ScreenRules(blocked_extensions=RULES.blocked_extensions, look_inside_zip=False)
    assert check(message(("docs.zip", zipped(**{"setup.exe": b"MZ"}), "application/zip")), off) is None


def test_a_broken_zip_is_not_a_finding():
    assert check(message(("docs.zip", b"PK\x03\x04garbage", "application/zip"))) is None


def test_attached_messages_are_screened_too():
    inner = message(("setup.exe", b"MZ", "application/octet-stream"))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.net", "fwd"
    msg.set_content("see attached")
    from email import message_from_bytes, policy
    msg.add_attachment(message_from_bytes(inner, policy=policy.default))
    found = check(msg.as_bytes())
    assert found is not None and found.filename == "setup.exe"


def test_uuencoded_files_in_text():
    body = "see below\r\n\r\nbegin 644 update.exe\r\nM35H`\r\n`\r\nend\r\n"
    found = check(message(text=body))
    assert found is not None and found.filename == "update.exe"
    assert check(message(text="begin 644 notes.txt\r\n`\r\nend\r\n")) is None


def test_fed_in_small_chunks_gives_the_same_answer():
    raw = message(("setup.exe", b"MZ" * 5000, "application/octet-stream"))
    assert check(raw, chunk=7) == check(raw)


def test_rules_without_anything_to_check_are_inactive():
    assert not ScreenRules().active
    assert ScreenRules(max_attachment_size=1).active


def test_malformed_mime_does_not_crash():
    # Broken structure without a name in it: nothing forbidden to find, and no exception.
    for raw in (b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
                b"Content-Type: multipart/mixed; boundary=\"X\"\r\n\r\n--X\r\nContent-Type: ;;;\r\n\r\n",
                b"\x00\xff" * 100, b""):
        assert screen([raw], RULES) is None, raw
        assert strip([raw], RULES, hostname="relay.test") is None, raw


def test_a_name_hidden_in_broken_rfc2231_continuations_is_still_screened():
    # The strict parser drops `name*0*=''` as invalid and reads the name as "", a lenient
    # one (and a mail client) reads "a.exe": the screener fails closed.
    raw = b"Content-Type: application/octet-stream; name*0*=''; name*1=\"a.exe\"\r\n\r\nx"
    found = screen([raw], RULES)
    assert found is not None and found.rule == "screening.blocked_extensions"
    assert found.filename == "a.exe"
    # The same name in the Content-Disposition, inside a multipart message.
    raw = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/plain\r\n\r\nhi\r\n--XX\r\n"
           b"Content-Disposition: attachment; filename*0*=''; filename*1=\"b.scr\"\r\n\r\nx\r\n"
           b"--XX--\r\n")
    assert screen([raw], RULES).filename == "b.scr"


# --- action = "strip" ----------------------------------------------------------------------

from email import message_from_bytes, policy as email_policy  # noqa: E402

from relaywarden.screening import strip  # noqa: E402


def test_strip_replaces_each_forbidden_attachment_with_a_notice():
    raw = message(("report.pdf", b"%PDF-1.4 keep me", "application/pdf"),
                  ("setup.exe", b"MZ" * 50, "application/octet-stream"),
                  ("docs.zip", zipped(**{"run.js": b"x"}), "application/zip"))
    result = strip([raw], RULES, hostname="relay.test")
    assert [f.filename for f in result.findings] == ["setup.exe", "run.js"]
    out = message_from_bytes(result.content, policy=email_policy.default)
    parts = [(p.get_content_type(), p.get_filename()) for p in out.walk() if not p.is_multipart()]
    assert parts == [("text/plain", None), ("application/pdf", "report.pdf"),
                     ("text/plain", "setup.exe.removed.txt"), ("text/plain", "docs.zip.removed.txt")]
    pdf = [p for p in out.walk() if p.get_filename() == "report.pdf"][0]
    assert pdf.get_content() == b"%PDF-1.4 keep me"                 # kept as it was
    notice = [p for p in out.walk() if p.get_filename() == "setup.exe.removed.txt"][0]
    assert "'setup.exe' was removed from this message by relay.test" in notice.get_content()
    assert b"MZMZ" not in result.content and b"TVpN" not in result.content
    assert b"\r\n" in result.content and b"\n" not in result.content.replace(b"\r\n", b"")
    # The result passes the screener.
    assert screen([result.content], RULES) is None


def test_strip_of_a_clean_message_is_none_and_of_a_lone_part_refuses():
    assert strip([message(("a.pdf", b"x", "application/pdf"))], RULES, hostname="r") is None
    lone = (b"From: a@example.com\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n")
    result = strip([lone], RULES, hostname="r")
    assert result.content is None and result.findings[0].filename == "a.exe"


def test_strip_names_a_non_ascii_file_with_rfc2231():
    result = strip([message(("r\u00e9sum\u00e9.exe", b"MZ", "application/octet-stream"))],
                   RULES, hostname="r")
    out = message_from_bytes(result.content, policy=email_policy.default)
    assert "r\u00e9sum\u00e9.exe.removed.txt" in [p.get_filename() for p in out.walk()]
