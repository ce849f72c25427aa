"""Recipient validation for hosted domains (issue 13), through the real interface: the relay
process, a real SMTP client, a real downstream server (aiosmtpd) that knows some users and
answers callaheads; plus unit tests of the pure parts (policy/recipients.py)."""

from __future__ import annotations

import smtplib
import time

import pytest

from support.relay import free_port, start_relay, write_config
from downstream import Downstream
from relaywarden.policy.recipients import Answer, Known, combine, parse_list

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com", "files.test", "down.test", "lenient.test"]

[routes."example.com"]
next_hops = ["[127.0.0.1]:{down}"]
[routes."files.test"]
next_hops = ["[127.0.0.1]:{down}"]
[routes."down.test"]
next_hops = ["[127.0.0.1]:{dead}"]
[routes."lenient.test"]
next_hops = ["[127.0.0.1]:{dead}"]

[recipients."example.com"]
files = ["users.txt"]
callahead = true
negative_ttl = 600

[recipients."files.test"]
files = ["users.txt"]

[recipients."down.test"]
callahead = true

[recipients."lenient.test"]
callahead = true
on_lookup_failure = "accept"

# The tests below send many unknown recipients from 127.0.0.1: no throttle in the way
# (the throttle has its own relay, test_a_dictionary_attack...).
[recipient_throttle]
delays = [0]
connection_limit = 1000
client_limit = 100000

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
"""

USERS = """
# the people the file knows
alice@example.com
Carol@Files.Test
@catchall.files.test       # not hosted: never asked, but a valid entry
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rcpt")
    (tmp / "users.txt").write_text(USERS)
    down = Downstream(free_port()).start()
    down.behaviour.rcpt["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: unknown"
    down.behaviour.rcpt["busy@example.com"] = "450 4.2.1 try later"
    for i in range(200):
        down.behaviour.rcpt[f"ghost{i}@example.com"] = "550 5.1.1 unknown"
    ports = {"inbound": free_port()}
    config = write_config(tmp, CONFIG, down=down.port, dead=free_port(), **ports)
    relay = start_relay(config, tmp / "var", ports)
    yield relay, down, tmp
    relay.stop()
    down.stop()


def rcpt(port: int, *addresses: str, sender: str = "someone@remote.test") -> list[tuple[int, str]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("mx.remote.test")
        c.mail(sender)
        out = []
        for a in addresses:
            code, text = c.rcpt(a)
            out.append((code, text.decode()))
        return out


def test_a_user_in_the_file_is_accepted_without_asking_the_next_hop(site):
    relay, down, _ = site
    [(code, _)] = rcpt(relay.port, "alice@example.com")
    assert code == 250
    assert "alice@example.com" not in down.rcpts_seen


def test_the_file_is_case_insensitive(site):
    relay, down, _ = site
    [(code, _)] = rcpt(relay.port, "carol@files.test")
    assert code == 250


def test_a_user_the_next_hop_knows_is_accepted_by_callahead(site):
    relay, down, _ = site
    [(code, _)] = rcpt(relay.port, "bob@example.com")
    assert code == 250
    assert "bob@example.com" in down.rcpts_seen
    # The callahead sent nothing: no message reached the next hop for it.
    assert not [m for m in down.messages if "bob@example.com" in m.recipients]


def test_an_unknown_user_gets_550_5_1_1_and_the_answer_is_cached(site):
    relay, down, _ = site
    [(code, text)] = rcpt(relay.port, "nobody@example.com")
    assert (code, text[:5]) == (550, "5.1.1")
    asked = down.rcpts_seen.count("nobody@example.com")
    [(code, _)] = rcpt(relay.port, "nobody@example.com")
    assert code == 550
    assert down.rcpts_seen.count("nobody@example.com") == asked == 1


def test_a_file_only_domain_refuses_who_is_not_in_it(site):
    relay, _, _ = site
    [(code, text)] = rcpt(relay.port, "dave@files.test")
    assert code == 550 and text.startswith("5.1.1")


def test_a_next_hop_that_cannot_answer_gives_450_not_550(site):
    relay, _, _ = site
    [(code, text)] = rcpt(relay.port, "anyone@down.test")
    assert code == 450 and text.startswith("4.1.1")
    [(code, text)] = rcpt(relay.port, "busy@example.com")     # a 4xx to the callahead
    assert code == 450


def test_on_lookup_failure_accept(site):
    relay, _, _ = site
    [(code, _)] = rcpt(relay.port, "anyone@lenient.test")
    assert code == 250


def test_the_mail_log_says_which_source_decided(site):
    relay, _, _ = site
    rcpt(relay.port, "dave@files.test")
    relay.flush_logs()
    lines = [l for l in relay.logs("mail", ".log").splitlines()
             if "event=reject" in l and "dave@files.test" in l]
    assert lines and 'rule="recipients.\\"files.test\\""' in lines[-1] or \
        'recipients."files.test"' in lines[-1]
    assert "unknown" in lines[-1]


def test_the_file_is_read_again_when_it_changes(site):
    relay, _, tmp = site
    [(code, _)] = rcpt(relay.port, "erin@files.test")
    assert code == 550
    (tmp / "users.txt").write_text(USERS + "erin@files.test\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [(code, _)] = rcpt(relay.port, "erin@files.test")
        if code == 250:
            break
        time.sleep(0.3)
    assert code == 250


def test_unknown_recipients_make_no_dsn(site):
    """100 messages to unknown users from a forged sender: all refused at RCPT, so nothing
    is queued and no DSN is made (no backscatter)."""
    relay, down, _ = site
    before = len(relay.messages())
    for i in range(100):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            c.ehlo("mx.remote.test")
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                c.sendmail("forged@victim.test", [f"ghost{i}@example.com"],
                           b"Subject: spam\r\n\r\nx\r\n")
    assert len(relay.messages()) == before
    assert not [m for m in down.messages if m.sender == ""]


THROTTLE = """
[relay]
hostname = "relay.test"
hosted_domains = ["files.test"]

[routes."files.test"]
next_hops = ["[127.0.0.1]:1"]

[recipients."files.test"]
files = ["users.txt"]

[recipient_throttle]
delays = [0, 0, 0.5, 1]
connection_limit = 5
client_limit = 7
window = 600

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
"""


def test_a_dictionary_attack_is_slowed_then_cut_off_per_connection_and_per_address(
        tmp_path):
    (tmp_path / "users.txt").write_text(USERS)
    ports = {"inbound": free_port()}
    relay = start_relay(write_config(tmp_path, THROTTLE, **ports), tmp_path / "var", ports)
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=60,
                          source_address=("127.0.0.5", 0)) as c:
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            times, codes = [], []
            for i in range(8):
                started = time.monotonic()
                try:
                    code, text = c.rcpt(f"guess{i}@files.test")
                except smtplib.SMTPServerDisconnected:
                    codes.append("closed")
                    break
                times.append(time.monotonic() - started)
                codes.append((code, text.decode()[:5]))
        # Growing delay, then 421 4.7.0 at connection_limit (5) and the connection closes.
        assert codes == [(550, "5.1.1")] * 4 + [(421, "4.7.0"), "closed"], codes
        assert max(times[:2]) < 0.4 and 0.4 <= times[2] < 0.95 and min(times[3:5]) >= 0.95
        # The address's count goes on in a new connection: client_limit (7) in the window.
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=60,
                          source_address=("127.0.0.5", 0)) as c:
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            assert c.rcpt("carol@files.test")[0] == 250      # a known user is still fine
            assert c.rcpt("guess10@files.test")[0] == 550
            assert c.rcpt("guess11@files.test")[0] == 421
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=60,
                          source_address=("127.0.0.5", 0)) as c:
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            # Locked: refused before any lookup, even a known user.
            code, text = c.rcpt("carol@files.test")
            assert (code, text.decode()[:5]) == (421, "4.7.0")
        # Another address is not affected.
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=60,
                          source_address=("127.0.0.6", 0)) as c:
            c.ehlo("mx.remote.test")
            c.mail("someone@remote.test")
            assert c.rcpt("guess1@files.test")[0] == 550
        relay.flush_logs()
        log = relay.logs("mail", ".log")
        assert "rule=recipient_throttle.connection_limit" in log
        assert "rule=recipient_throttle.client_limit" in log
    finally:
        relay.stop()


# -- the pure parts ------------------------------------------------------------------------

def test_parse_list_reports_bad_lines():
    found, bad = parse_list("a@x.test\nnot an address\n@nodot\n@y.test # c\n\n# only\n")
    assert found.knows("A@X.test") and found.knows("anyone@y.test")
    assert not found.knows("b@x.test")
    assert [n for n, _ in bad] == [2, 3]


def test_combine():
    yes, no, fail = Known.YES, Known.NO, Known.FAILED
    d = combine("k", [Answer("f", no), Answer("c", yes)], on_lookup_failure="tempfail")
    assert d.reply.code == 250
    d = combine("k", [Answer("f", no), Answer("c", no)], on_lookup_failure="tempfail")
    assert (d.reply.code, d.reply.enhanced) == (550, "5.1.1")
    d = combine("k", [Answer("f", no), Answer("c", fail, "down")], on_lookup_failure="tempfail")
    assert (d.reply.code, d.reply.enhanced) == (450, "4.1.1") and "down" in d.detail
    d = combine("k", [Answer("c", fail)], on_lookup_failure="accept")
    assert d.reply.code == 250 and d.rule == "k.on_lookup_failure"


@pytest.mark.parametrize("table, words", [
    ('[recipients."other.test"]\ncallahead = true\n', 'recipients."other.test": \'other.test\' is not in relay.hosted_domains'),
    ('[recipients."example.com"]\ncallahead = false\n', "no source"),
    ('[recipients."example.com"]\nfiles = ["missing.txt"]\n', "does not exist"),
])
def test_bad_tables_are_config_errors_naming_the_key(tmp_path, table, words):
    import subprocess
    import sys
    path = tmp_path / "relay.toml"
    path.write_text('[relay]\nhostname = "relay.test"\nhosted_domains = ["example.com"]\n'
                    '[routes."example.com"]\nnext_hops = ["[127.0.0.1]:2525"]\n'
                    '[listeners.in]\naddress = "127.0.0.1"\nport = 2525\n' + table)
    out = subprocess.run([sys.executable, "-m", "relaywarden", "config", "check", "--config",
                          str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert words in out.stdout + out.stderr, out.stdout + out.stderr


LDAP_CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.test"]

[auth.ldap]
url = "{url}"
mode = "search"
bind_dn = "cn=svc-relay,ou=people,dc=example,dc=test"
bind_password_file = "svc.pw"
search_base = "ou=people,dc=example,dc=test"
timeout = 2

[routes."example.test"]
next_hops = ["[127.0.0.1]:{dead}"]

[recipients."example.test"]
ldap = true

# The tests below send many unknown recipients from 127.0.0.1: no throttle in the way
# (the throttle has its own relay, test_a_dictionary_attack...).
[recipient_throttle]
delays = [0]
connection_limit = 1000
client_limit = 100000

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
"""


@pytest.fixture(scope="module")
def directory_site(tmp_path_factory):
    from ldapserver import SERVICE_PW, LdapServer
    tmp = tmp_path_factory.mktemp("rcpt-ldap")
    (tmp / "svc.pw").write_text(SERVICE_PW + "\n")
    with LdapServer(tls=False) as ldap:
        ports = {"inbound": free_port()}
        text = LDAP_CONFIG.replace("{url}", ldap.url)
        config = write_config(tmp, text, dead=free_port(), **ports)
        relay = start_relay(config, tmp / "var", ports)
        try:
            yield relay, ldap
        finally:
            relay.stop()


def test_the_directory_knows_who_exists(directory_site):
    relay, ldap = directory_site
    assert rcpt(relay.port, "alice@example.test", "Bob@Example.Test", "mallory@example.test") \
        == [(250, "2.1.5 Ok"), (250, "2.1.5 Ok"),
            (550, "5.1.1 Recipient address rejected: user unknown")]


def test_a_directory_that_is_down_gives_450(directory_site):
    relay, ldap = directory_site
    ldap.stop()
    try:
        [(code, text)] = rcpt(relay.port, "zoe@example.test")    # never asked before: no cache
        assert code == 450 and text.startswith("4.1.1")
    finally:
        ldap.start()
    [(code, _)] = rcpt(relay.port, "carol@example.test")
    relay.flush_logs()
    assert code == 250, relay.logs("mail", ".log")[-600:]


def test_unknown_throttle_counts_per_address_over_the_window():
    from relaywarden.policy.recipients import UnknownThrottle
    now = [0.0]
    t = UnknownThrottle(delays=(0, 1, 2), connection_limit=10, client_limit=3, window=60,
                        clock=lambda: now[0])
    assert t.unknown("a", 1) == (0, "")
    assert t.unknown("a", 1) == (1, "")            # a new session: the address's count
    assert not t.locked("a") and not t.locked("b")
    assert t.unknown("a", 1) == (2, "recipient_throttle.client_limit")
    assert t.locked("a")
    now[0] = 61.0                                  # the window lets it go
    assert not t.locked("a")
    assert t.unknown("b", 10) == (2, "recipient_throttle.connection_limit")
