"""A real relay with the admin process and its HTTP API on loopback, and its users.

Users are made with the real CLI (`relaywarden admin-user add ... --password-stdin`,
`admin-user token`) for the module-scoped console, with the same AdminAccounts calls in
process elsewhere (a CLI run is a Python start: a second each); requests go over real HTTP with httpx; mail goes in with smtplib
(every route points at a closed loopback port, so it stays queued)."""

from __future__ import annotations

import email.policy
import re
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from support.configs import BASIC
from support.relay import RelayProcess, free_port, start_relay, wait_admin, write_config

USERS = {"ada": "admin", "otto": "operator", "vera": "viewer"}
PASSWORD = "correct horse battery staple"

SECRET_ROUTE = """
[routes."secret.example"]
next_hops = ["[127.0.0.1]:1"]
username = "relayuser"
password = "hunter2-route-secret"
auth_without_tls = true
"""


def cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "relaywarden", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"relaywarden {' '.join(args)}: {proc.returncode}: {proc.stderr}")
    return proc


@dataclass
class Console:
    relay: RelayProcess
    base: str
    tokens: dict[str, str] = field(default_factory=dict)

    def bearer(self, user: str | None = None, token: str | None = None) -> httpx.Client:
        headers = {}
        if user is not None or token is not None:
            headers["Authorization"] = f"Bearer {token or self.tokens[user]}"
        return httpx.Client(base_url=self.base, headers=headers, timeout=15)

    def login(self, user: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
        client = httpx.Client(base_url=self.base, timeout=15)
        r = client.post("/api/v1/session", json={"username": user, "password": password})
        assert r.status_code == 200, r.text
        return client, r.json()["csrf_token"]

    def send(self, *recipients: str, sender: str = "app@example.com", source: str = "127.0.0.1",
             subject: str = "hello") -> str:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{time.time_ns()}@test.example>"
        msg.set_content("Hello from the admin tests.\n")
        with smtplib.SMTP("127.0.0.1", self.relay.port, source_address=(source, 0),
                          timeout=15) as s:
            s.ehlo("test.example")
            s.mail(sender)
            for r in recipients:
                code, text = s.rcpt(r)
                assert code == 250, (code, text)
            code, text = s.data(msg.as_bytes(policy=email.policy.SMTP))
            assert code == 250, (code, text)
        return re.search(rb"queued as (\S+)", text).group(1).decode()

    def mail_log(self) -> str:
        return self.relay.logs("mail", ".log")


def start_console(tmp_path: Path, extra: str = "", *, users: dict[str, str] = USERS,
                  admin_table: str = "", scheme: str = "http", verify=True,
                  via_cli: bool = False) -> Console:
    smtp, http = free_port(), free_port()
    config = write_config(tmp_path, BASIC + SECRET_ROUTE + f"""
[admin]
enabled = true
address = "127.0.0.1"
port = {http}
{admin_table}
""" + extra, main=smtp)
    accounts = None
    if not via_cli:
        from relaywarden.admin.accounts import AdminAccounts
        from relaywarden.config.load import load_config

        accounts = AdminAccounts(load_config(config).admin.users_file)
    for name, role in users.items():
        if accounts is None:
            cli("admin-user", "add", name, "--role", role, "--config", str(config),
                "--password-stdin", stdin=PASSWORD + "\n")
        else:
            accounts.add(name, PASSWORD, role)
    relay = start_relay(config, tmp_path / "var", {"main": smtp})
    console = Console(relay=relay, base=f"{scheme}://127.0.0.1:{http}")
    try:
        wait_admin(console.base, relay.proc, verify=verify)
        for name in users:
            console.tokens[name] = (
                cli("admin-user", "token", name, "--config", str(config)).stdout.strip()
                if accounts is None else accounts.new_token(name))
    except Exception:
        relay.stop()
        raise
    return console


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    c = start_console(tmp_path_factory.mktemp("console"), via_cli=True)
    yield c
    c.relay.stop()


def problem(r: httpx.Response, status: int, field: str | None = None) -> dict:
    """Asserts an RFC 9457 problem with this status (and field)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"], body
    if field is not None:
        assert body.get("field") == field, body
    return body
