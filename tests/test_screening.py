"""The attachment screener through the real interface: swaks and smtplib send messages with
attachments to the running relay, which refuses them, quarantines them or lets them pass
to a real downstream server."""

from __future__ import annotations

import io
import json
import re
import shutil
import smtplib
import subprocess
import time
import zipfile
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path

import pytest

import support.site

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[screening]
blocked_extensions = [".EXE", "scr", "js"]
blocked_content_types = ["application/x-msdownload"]
max_attachment_size = "2MB"
action = "{action}"
scope = "{scope}"

[badmail]
notify = "admin@example.com"
notify_interval = 1

[delivery]
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


class Site(support.site.Site):
    def __init__(self, tmp_path: Path, *, action: str = "reject", scope: str = "all") -> None:
        super().__init__(tmp_path, CONFIG.replace("{action}", action).replace("{scope}", scope))

    def swaks(self, to: str, *attachments: Path) -> subprocess.CompletedProcess:
        args = [shutil.which("swaks"), "--server", "127.0.0.1", "--port",
                str(self.ports["main"]), "--from", "app@example.com", "--to", to,
                "--helo", "app.test", "--body", "see attached"]
        for path in attachments:
            args += ["--attach", f"@{path}"]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    out = {}
    for name, data in {"setup.exe": b"MZ\x90\x00" * 100, "report.pdf": b"%PDF-1.4\n..."}.items():
        out[name] = tmp_path / name
        out[name].write_bytes(data)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("invoice.pdf", b"%PDF")
        z.writestr("tools/update.js", b"alert(1)")
    out["invoices.zip"] = tmp_path / "invoices.zip"
    out["invoices.zip"].write_bytes(archive.getvalue())
    return out


@pytest.fixture
def make_site(tmp_path):
    """Site(action, scope), stopped after the test."""
    made = []

    def make(**settings) -> Site:
        made.append(Site(tmp_path, **settings))
        return made[-1]
    yield make
    for s in made:
        s.close()


@pytest.fixture
def site(make_site):
    return make_site()


def test_a_blocked_attachment_is_refused_at_the_end_of_data(site, files):
    out = site.swaks("user@gmail.test", files["report.pdf"], files["setup.exe"])
    assert out.returncode != 0
    assert "<** 550 5.7.1 Message refused: attachment 'setup.exe': .exe files are not allowed" \
        in out.stdout, out.stdout
    log = site.wait_log(r"event=reject stage=data")      # the session is done with it
    assert site.relay.messages() == []
    assert list((site.data_dir / "tmp").iterdir()) == []        # no spool file left
    assert re.search(r"event=reject stage=data listener=main client=127\.0\.0\.1 id=\S+ "
                     r"code=550 sender=app@example\.com to=user@gmail\.test "
                     r"rule=screening\.blocked_extensions", log), log


def test_a_clean_attachment_passes_and_is_delivered(site, files):
    out = site.swaks("user@gmail.test", files["report.pdf"])
    assert out.returncode == 0, out.stdout
    [msg] = site.down.wait_for(1)
    assert b'filename="report.pdf"' in msg.content or b"filename=report.pdf" in msg.content


def test_names_inside_a_zip_are_screened(site, files):
    out = site.swaks("user@gmail.test", files["invoices.zip"])
    assert "550 5.7.1 Message refused: 'tools/update.js' inside 'invoices.zip'" in out.stdout


def test_content_type_and_size_limits(site, tmp_path):
    def send(name: str, data: bytes, ctype: str) -> tuple[int, bytes]:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "app@example.com", "u@gmail.test", "x"
        msg.set_content("hi")
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
            c.ehlo("app.test")
            c.mail("app@example.com")
            c.rcpt("u@gmail.test")
            return c.data(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    code, text = send("tool.bin", b"MZ", "application/x-msdownload")
    assert (code, text) == (550, b"5.7.1 Message refused: attachment 'tool.bin': type "
                                 b"application/x-msdownload is not allowed")
    # 3 MB decoded: over max_attachment_size; the message itself (4 MB in base64) is past
    # the 1 MiB the relay keeps in memory, so it is screened from its spool file.
    code, text = send("big.pdf", b"x" * 3_000_000, "application/pdf")
    assert (code, text[:5]) == (550, b"5.7.1") and b"3000000 bytes" in text
    assert send("small.pdf", b"x" * 1000, "application/pdf")[0] == 250
    assert list((site.data_dir / "tmp").iterdir()) == []


def test_badmail_action_keeps_the_message_and_tells_the_admin(make_site, files):
    site = make_site(action="badmail")
    out = site.swaks("user@gmail.test", files["setup.exe"])
    assert out.returncode == 0, out.stdout             # accepted: 250
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    [notice] = site.down.wait_for(1)                     # the admin's notice, nothing else
    assert notice.recipients == ["admin@example.com"] and qid.encode() in notice.content
    meta = site.data_dir / "badmail" / f"{qid}.json"
    deadline = time.monotonic() + 10
    while not meta.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    info = json.loads(meta.read_text())
    assert info["recipients"][0]["rule"] == "screening.blocked_extensions"
    assert "setup.exe" in info["recipients"][0]["reason"]
    assert b"setup.exe" in (site.data_dir / "badmail" / f"{qid}.eml").read_bytes()


def test_scope_outbound_leaves_inbound_mail_alone(make_site, files):
    site = make_site(scope="outbound")
    assert site.swaks("boss@example.com", files["setup.exe"]).returncode == 0   # hosted
    assert "550 5.7.1" in site.swaks("user@gmail.test", files["setup.exe"]).stdout
    [msg] = site.down.wait_for(1)
    assert msg.recipients == ["boss@example.com"]


def test_strip_action_delivers_the_message_without_the_forbidden_attachment(make_site, files):
    site = make_site(action="strip")
    out = site.swaks("user@gmail.test", files["report.pdf"], files["setup.exe"])
    assert out.returncode == 0, out.stdout
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    [msg] = site.down.wait_for(1)
    assert msg.recipients == ["user@gmail.test"]
    got = message_from_bytes(msg.content, policy=email_policy.default)
    names = [p.get_filename() for p in got.walk() if p.get_filename()]
    assert names == ["report.pdf", "setup.exe.removed.txt"]
    assert got["Received"].startswith("from app.test")      # our trace header kept
    notice = [p for p in got.walk() if p.get_filename() == "setup.exe.removed.txt"][0]
    assert "removed from this message by relay.test" in notice.get_content()
    log = site.maillog()
    assert re.search(rf"event=queued id={qid} .*stripped=\"attachment 'setup.exe': "
                     r"\.exe files are not allowed\"", log), log
    # A message that is nothing but the forbidden file cannot be stripped: refused.
    raw = (b"From: app@example.com\r\nTo: user@gmail.test\r\nSubject: x\r\n"
           b"Content-Type: application/octet-stream; name=\"a.exe\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n")
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as c:
        c.ehlo("app.test")
        c.mail("app@example.com")
        c.rcpt("user@gmail.test")
        code, text = c.data(raw)
    assert (code, text[:5]) == (550, b"5.7.1")
