"""`policy explain` shows the lookups the server makes (issue 13): the listener's DNS lists
at connect (each zone's answer) and the hosted domain's recipient validation sources at
RCPT (source, answer, cached or not); the mail log records each lookup the running relay
makes (event=lookup). Through the real interfaces: the CLI and the HTTP API against a real
relay config, a real DNS server (unbound) serving the list zones, a real next hop
(aiosmtpd) answering callaheads, and real SMTP sessions from several loopback addresses."""

from __future__ import annotations

import smtplib
import subprocess
import sys

import httpx
import pytest

from support.relay import free_port, start_relay, wait_admin, write_config
from dnsserver import DnsServer
from downstream import Downstream

PASSWORD = "correct horse battery"

RECORDS = {
    "20.0.0.127.bl.test": {"A": "127.0.0.2", "TXT": "Listed: see https://bl.test/q/127.0.0.20"},
    "22.0.0.127.bl.test": {"A": "127.0.0.2"},
    "22.0.0.127.wl.test": {"A": "127.0.10.3"},
    "23.0.0.127.bl.test": "servfail",
}

CONFIG = """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com"]
min_free_space = 0

[dns]
nameservers = ["127.0.0.1"]
port = {dns}
timeout = 2

[routes."example.com"]
next_hops = ["[127.0.0.1]:{down}"]
[routes."*"]
next_hops = ["[127.0.0.1]:1"]

[recipients."example.com"]
files = ["users.txt"]
callahead = true

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
[listeners.inbound.access]
dnsbl = ["bl.test=127.0.0.[2..4]"]
dnswl = ["wl.test"]

[admin]
enabled = true
address = "127.0.0.1"
port = {http}
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaywarden", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain-lookups")
    (tmp / "users.txt").write_text("alice@example.com\n")
    down = Downstream(free_port()).start()
    down.behaviour.rcpt["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user"
    ports = {"inbound": free_port(), "http": free_port()}
    with DnsServer(RECORDS) as dns:
        config = write_config(tmp, CONFIG, dns=dns.port, down=down.port, **ports)
        out = run("admin-user", "add", "vera", "--role", "viewer", "--config", str(config),
                  "--password-stdin", stdin=PASSWORD + "\n")
        assert out.returncode == 0, out.stderr
        token = run("admin-user", "token", "vera", "--config", str(config))
        assert token.returncode == 0, token.stderr
        relay = start_relay(config, tmp / "var", {"inbound": ports["inbound"]})
        base = f"http://127.0.0.1:{ports['http']}"
        try:
            wait_admin(base, relay.proc)
            api = httpx.Client(base_url=base, timeout=30,
                               headers={"Authorization": f"Bearer {token.stdout.strip()}"})
            yield {"config": config, "relay": relay, "down": down, "api": api, "tmp": tmp}
            api.close()
        finally:
            relay.stop()
            down.stop()


def explain(site, client: str, to: str) -> list[str]:
    out = run("policy", "explain", "--config", str(site["config"]), "--listener", "inbound",
              "--client", client, "--from", "someone@remote.test", "--to", to)
    assert out.returncode == 0, out.stderr
    return out.stdout.rstrip("\n").splitlines()


def test_a_listed_client_is_refused_at_connect_and_explain_shows_each_zone(site):
    lines = explain(site, "127.0.0.20", "alice@example.com")
    assert lines[0] == (
        "connect: reject 554 5.7.1 (listeners.inbound.access.dnsbl): "
        "bl.test=127.0.0.2*1 (score 1 >= 1)")
    assert set(lines[1:3]) == {
        "  lookup dnswl wl.test: not listed",
        "  lookup dnsbl bl.test: listed 127.0.0.2 (Listed: see https://bl.test/q/127.0.0.20)"}
    assert lines[3:] == ["sender: not reached", "recipient: not reached"]


def test_an_allowlisted_client_passes_and_a_failed_zone_never_rejects(site):
    lines = explain(site, "127.0.0.22", "alice@example.com")
    assert lines[0].startswith("connect: accept")
    assert "  lookup dnswl wl.test: listed 127.0.10.3" in lines
    lines = explain(site, "127.0.0.23", "alice@example.com")
    assert lines[0].startswith("connect: accept")
    assert any(l.startswith("  lookup dnsbl bl.test: failed (") for l in lines), lines


def test_a_user_in_the_file_is_known_without_a_callahead(site):
    lines = explain(site, "127.0.0.2", "alice@example.com")
    assert lines[-2:] == [
        "recipient: accept 250 2.1.5 (relay.hosted_domains): example.com is hosted "
        f'(example.com); file {site["tmp"] / "users.txt"}: known',
        f'  lookup recipient file {site["tmp"] / "users.txt"}: known [not cached]']
    assert "alice@example.com" not in site["down"].rcpts_seen


def test_an_unknown_user_is_refused_with_each_source_s_answer(site):
    down = site["down"]
    lines = explain(site, "127.0.0.2", "nobody@example.com")
    users = site["tmp"] / "users.txt"
    assert lines[-3] == (
        f'recipient: reject 550 5.1.1 (recipients."example.com"): file {users}: unknown; '
        f"callahead 127.0.0.1:{down.port}: unknown (550 5.1.1 <nobody@example.com>: no such user)")
    assert lines[-2:] == [
        f"  lookup recipient file {users}: unknown [not cached]",
        f"  lookup recipient callahead 127.0.0.1:{down.port}: unknown "
        "(550 5.1.1 <nobody@example.com>: no such user) [not cached]"]
    assert "nobody@example.com" in down.rcpts_seen


def test_the_api_keeps_its_cache_and_says_so(site):
    body = {"listener": "inbound", "client": "127.0.0.2", "from": "someone@remote.test",
            "to": "carol@example.com"}
    first = site["api"].post("/api/v1/explain", json=body)
    assert first.status_code == 200, first.text
    again = site["api"].post("/api/v1/explain", json=body).json()
    port = site["down"].port
    def rcpt(answer):
        return [(x["source"], x["answer"], x["cached"]) for x in answer["lookups"]
                if x["step"] == "recipient"]
    assert rcpt(first.json()) == [
        (f"file {site['tmp'] / 'users.txt'}", "unknown", False),
        (f"callahead 127.0.0.1:{port}", "known", False)]
    assert rcpt(again) == [
        (f"file {site['tmp'] / 'users.txt'}", "unknown", False),
        (f"callahead 127.0.0.1:{port}", "known", True)]
    assert again["recipient"]["decision"] == "accept"
    assert f"callahead 127.0.0.1:{port}: known (250 2.1.5 OK) [cached]" in again["text"]


def test_explain_says_what_the_server_answers(site):
    relay = site["relay"]
    for client, to in (("127.0.0.20", "alice@example.com"), ("127.0.0.2", "alice@example.com"),
                       ("127.0.0.2", "nobody@example.com"), ("127.0.0.22", "bob@example.com")):
        first = explain(site, client, to)[0]
        c = smtplib.SMTP(timeout=30, source_address=(client, 0))
        try:
            code, _ = c.connect("127.0.0.1", relay.port)
            if first.startswith("connect: reject"):
                assert code == 554 and first.startswith("connect: reject 554 5.7.1")
                continue
            assert code == 220
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            code, text = c.rcpt(to)
            said = [l for l in explain(site, client, to) if l.startswith("recipient:")][0]
            assert said.startswith(f"recipient: {'accept' if code == 250 else 'reject'} "
                                   f"{code} {text.decode().split()[0]} "), (said, code, text)
        finally:
            c.close()


def test_the_mail_log_records_each_lookup(site):
    relay, down = site["relay"], site["down"]
    with smtplib.SMTP(timeout=30, source_address=("127.0.0.20", 0)) as c:
        assert c.connect("127.0.0.1", relay.port)[0] == 554
    for _ in range(2):
        with smtplib.SMTP(timeout=30, source_address=("127.0.0.24", 0)) as c:
            c.connect("127.0.0.1", relay.port)
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            assert c.rcpt("dave@example.com")[0] == 250      # the next hop knows him
    relay.flush_logs()
    lines = [l for l in relay.logs("mail", ".log").splitlines() if " event=lookup " in l]
    listed = [l for l in lines if "client=127.0.0.20" in l]
    assert any("kind=dnsbl" in l and "source=bl.test" in l and 'answer="listed 127.0.0.2"' in l
               and "Listed: see https://bl.test/q/127.0.0.20" in l for l in listed), listed
    assert any("kind=dnswl" in l and "source=wl.test" in l and 'answer="not listed"' in l
               for l in listed), listed
    dave = [l for l in lines if "recipient=dave@example.com" in l and "kind=recipient" in l]
    callahead = [l for l in dave if f"callahead 127.0.0.1:{down.port}" in l]
    assert [("answer=known" in l, "cached=no" in l, "cached=yes" in l) for l in callahead] == [
        (True, True, False), (True, False, True)], callahead
    assert down.rcpts_seen.count("dave@example.com") == 1
    assert sum("answer=unknown" in l and "source=\"file " in l for l in dave) == 2, dave
