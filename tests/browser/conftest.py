"""Browser tests of the web console: Playwright drives Debian's chromium (installed by
scripts/test.sh; `playwright install` is never used) against a real relay, its admin
process and its HTTP server on loopback. Users come from the real CLI, mail goes in with
smtplib (every route points at a closed loopback port, so mail stays queued).

On a failure the page's screenshot goes to tests/browser/artifacts/ (ignored by git)."""

from __future__ import annotations

import email.policy
import re
import shutil
import smtplib
import subprocess
import sys
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from support.configs import BASIC
from support.relay import RelayProcess, free_port, start_relay, wait_admin, write_config

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that would call out from a machine that only has loopback.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
USER = "alice"           # role admin
VIEWER = "victor"        # role viewer
PASSWORD = "a browser's long passphrase"

ADMIN = """
[admin]
enabled = true
address = "127.0.0.1"
port = {admin}
users_file = "admin-users"
"""


def cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "relaywarden", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"relaywarden {' '.join(args)}: {proc.returncode}: {proc.stderr}"
    return proc.stdout


@dataclass
class Console:
    relay: RelayProcess
    base: str
    smtp_port: int

    def send(self, *recipients: str, sender: str = "app@example.com", source: str = "127.0.0.1",
             subject: str = "console test") -> str:
        """One message through real SMTP; its queue ID (from the 250 reply)."""
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{uuid.uuid4().hex}@browser.test>"
        msg.set_content("Sent by the browser tests.\n")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, source_address=(source, 0), timeout=15) as c:
            c.ehlo("browser.test")
            code, _ = c.mail(sender)
            assert code == 250
            for r in recipients:
                code, reply = c.rcpt(r)
                assert code == 250, reply
            code, reply = c.data(msg.as_bytes(policy=email.policy.SMTP))
            assert code == 250, reply
        m = re.search(rb"queued as (\S+)", reply)
        assert m, reply
        return m.group(1).decode()

    def recipients(self, queue_id: str) -> dict[str, dict]:
        """The queue's own record of a message's recipients (not through the API)."""
        for row in self.relay.messages():
            if row["id"] == queue_id:
                return {r["address"]: r for r in row["recipients"]}
        return {}


def unique(local: str = "rcpt", domain: str = "example.com") -> str:
    return f"{local}-{uuid.uuid4().hex[:10]}@{domain}"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    smtp_port, admin_port = free_port(), free_port()
    config = write_config(tmp, BASIC + ADMIN, main=smtp_port, admin=admin_port)
    for name, role in ((USER, "admin"), (VIEWER, "viewer")):
        cli("admin-user", "add", name, "--role", role, "--config", str(config), "--password-stdin",
            stdin=PASSWORD + "\n")
    relay = start_relay(config, tmp / "var", {"main": smtp_port})
    base = f"http://127.0.0.1:{admin_port}"
    try:
        wait_admin(base, relay.proc)
    except Exception:
        relay.stop()
        raise
    yield Console(relay=relay, base=base, smtp_port=smtp_port)
    relay.stop()


# Module scope, not session: Playwright's sync API runs an event loop in this thread while
# it is open, and the other test modules' asyncio.run() refuses to start beside it.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(browser, console, request):
    """A fresh browser context (no cookies) on the console; a screenshot when the test fails;
    an uncaught script error in the page fails the test."""
    context = browser.new_context(base_url=console.base, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception as exc:  # noqa: BLE001 - the test's own failure matters more
            print(f"screenshot failed: {exc!r}")
    context.close()
    assert not errors, f"script errors in the page: {errors}"
