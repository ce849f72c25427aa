"""DNS blocklists and allowlists at connect (issue 13), through the real interface: a real
DNS server (unbound) serving list zones, the relay process, clients from several loopback
addresses. Unit tests of the entry syntax and the verdict follow."""

from __future__ import annotations

import smtplib

import pytest

from support.relay import free_port, start_relay, write_config
from dnsserver import DnsServer
from relaywarden.policy.dnsbl import ZoneAnswer, decide, parse_site, query_name, sanitize_txt

RECORDS = {
    # 127.0.0.20: listed by bl.test with a code the entry asks for, and a TXT
    "20.0.0.127.bl.test": {"A": "127.0.0.2", "TXT": "Listed: see https://bl.test/q/127.0.0.20"},
    # 127.0.0.21: listed by bl.test, but with a code the entry does not count
    "21.0.0.127.bl.test": {"A": "127.0.0.10"},
    # 127.0.0.22: listed by bl.test, and by the allowlist
    "22.0.0.127.bl.test": {"A": "127.0.0.2"},
    "22.0.0.127.wl.test": {"A": "127.0.10.3"},
    # 127.0.0.23: the blocklist cannot answer for now
    "23.0.0.127.bl.test": "servfail",
    # 127.0.0.24: only in the weak list (weight 1 < threshold 2 on the "strict" listener)
    "24.0.0.127.weak.test": {"A": "127.0.0.2"},
    # 127.0.0.25: in both weighted lists (1 + 1 >= 2)
    "25.0.0.127.weak.test": {"A": "127.0.0.2"},
    "25.0.0.127.weak2.test": {"A": "127.0.0.4"},
    # 127.0.0.26: an answer outside 127.0.0.0/8 is not a listing (RFC 5782 2.1)
    "26.0.0.127.bl.test": {"A": "10.1.2.3"},
    # 127.0.0.30 is in the relay networks and listed: the company's own machines are not asked
    "30.0.0.127.bl.test": {"A": "127.0.0.2"},
    # 127.0.0.31: listed with a TXT that tries to smuggle a second reply line
    "31.0.0.127.bl.test": {"A": "127.0.0.3", "TXT": "bad\t250 ok \u00fcber"},
}

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]

[dns]
nameservers = ["127.0.0.1"]
port = {dns}
timeout = 2

[routes."*"]
next_hops = ["[127.0.0.1]:1"]

[listeners.inbound]
address = "127.0.0.1"
port = {inbound}
[listeners.inbound.access]
dnsbl = ["bl.test=127.0.0.[2..4]"]
dnswl = ["wl.test"]
[listeners.inbound.relay]
networks = ["127.0.0.30/32"]

[listeners.strict]
address = "127.0.0.1"
port = {strict}
[listeners.strict.access]
dnsbl = ["weak.test", "weak2.test=127.0.0.4"]
dnsbl_threshold = 2
"""


@pytest.fixture(scope="module")
def dns():
    with DnsServer(RECORDS) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory, dns):
    tmp = tmp_path_factory.mktemp("dnsbl")
    ports = {"inbound": free_port(), "strict": free_port()}
    config = write_config(tmp, CONFIG, dns=dns.port, **ports)
    r = start_relay(config, tmp / "var", ports)
    yield r, ports
    r.stop()


def greet(port: int, source: str) -> tuple[int, str]:
    """The greeting a client at ``source`` gets, and the answer to its EHLO."""
    c = smtplib.SMTP(timeout=10, source_address=(source, 0))
    try:
        code, text = c.connect("127.0.0.1", port)
        return code, text.decode()
    finally:
        c.close()


def test_a_listed_client_is_refused_with_the_zone_and_its_txt(relay):
    r, ports = relay
    code, text = greet(ports["inbound"], "127.0.0.20")
    assert code == 554
    assert "5.7.1" in text and "blocked using bl.test" in text
    assert "Listed: see https://bl.test/q/127.0.0.20" in text
    assert "[127.0.0.20]" in text


def test_the_refusal_is_in_the_mail_log_with_the_rule(relay):
    r, ports = relay
    greet(ports["inbound"], "127.0.0.20")
    r.flush_logs()
    lines = [l for l in r.logs("mail", ".log").splitlines() if "event=reject" in l and "client=127.0.0.20" in l]
    assert lines, "no reject line for 127.0.0.20"
    assert 'rule=listeners.inbound.access.dnsbl' in lines[-1]
    assert "bl.test=127.0.0.2" in lines[-1]


def test_a_client_with_an_answer_the_entry_does_not_count_is_greeted(relay):
    r, ports = relay
    assert greet(ports["inbound"], "127.0.0.21")[0] == 220


def test_an_unlisted_client_is_greeted_and_can_send(relay):
    r, ports = relay
    with smtplib.SMTP("127.0.0.1", ports["inbound"], source_address=("127.0.0.27", 0),
                      timeout=10) as c:
        c.ehlo("client.test")
        refused = c.sendmail("a@remote.test", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert refused == {}


def test_the_allowlist_wins_over_the_blocklist(relay):
    r, ports = relay
    assert greet(ports["inbound"], "127.0.0.22")[0] == 220


def test_a_list_that_cannot_answer_never_rejects(relay):
    r, ports = relay
    assert greet(ports["inbound"], "127.0.0.23")[0] == 220


def test_an_answer_outside_127_8_is_not_a_listing(relay):
    r, ports = relay
    assert greet(ports["inbound"], "127.0.0.26")[0] == 220


def test_the_relay_networks_are_not_asked_about(relay):
    r, ports = relay
    assert greet(ports["inbound"], "127.0.0.30")[0] == 220


def test_weights_add_up_to_the_threshold(relay):
    r, ports = relay
    assert greet(ports["strict"], "127.0.0.24")[0] == 220      # 1 < 2
    code, text = greet(ports["strict"], "127.0.0.25")           # 1 + 1 >= 2
    assert code == 554 and "5.7.1" in text


def test_a_hostile_txt_cannot_add_a_reply_line(relay):
    r, ports = relay
    code, text = greet(ports["inbound"], "127.0.0.31")
    assert code == 554
    assert "\n" not in text.strip() and "\t" not in text and "\u00fc" not in text
    assert "bad 250 ok" in text


# -- the pure parts ----------------------------------------------------------------------

def test_entry_syntax_is_postscreens():
    site = parse_site("zen.example.org=127.0.0.[2..11]*3")
    assert (site.zone, site.weight) == ("zen.example.org", 3)
    assert site.matches("127.0.0.2") and site.matches("127.0.0.11")
    assert not site.matches("127.0.0.12") and not site.matches("127.0.1.2")
    assert parse_site("list.example.net*-2").weight == -2
    assert parse_site("B.Example.ORG.").zone == "b.example.org"
    assert parse_site("x.example=127.0.0.[2;4]").matches("127.0.0.4")
    assert not parse_site("x.example=127.0.0.[2;4]").matches("127.0.0.3")
    assert not parse_site("x.example").matches("10.0.0.2")


@pytest.mark.parametrize("entry, words", [
    ("zen", "not a DNS zone name"),
    ("zen.example.org=127.0.0", "four octets"),
    ("zen.example.org=127.0.0.[9..2]", "is empty"),
    ("zen.example.org=127.0.0.300", "at most 255"),
    ("zen.example.org=10.0.0.2", "127.0.0.0/8"),
    ("zen.example.org*x", "whole number"),
    ("zen.example.org*0", "never count"),
    ("bad_zone..org", "not a DNS zone name"),
])
def test_bad_entries_say_what_is_wrong(entry, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.").replace("[", r"\[")):
        parse_site(entry)


def test_query_names_follow_rfc5782():
    assert query_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    assert query_name("::ffff:192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    name = query_name("2001:db8:1:2:3:4:567:89ab", "bl.example")
    assert name == ("b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
                    ".bl.example")
    assert query_name("not-an-ip", "bl.example") is None


def test_txt_is_sanitised():
    assert sanitize_txt("a\r\n250 ok\x00\x7f") == "a 250 ok"
    assert len(sanitize_txt("x" * 1000)) == 200


def test_decide_first_hit_and_failure():
    bl = (parse_site("a.test"), parse_site("b.test"))
    got, note = decide("l", "192.0.2.1", bl, (), 1, {
        "a.test": ZoneAnswer("a.test", failed="timed out"),
        "b.test": ZoneAnswer("b.test", answers=("127.0.0.2",), txt="because")})
    assert got is not None and got.reply.code == 554 and "b.test; because" in got.reply.text
    assert "a.test: lookup failed" in note
    got, _ = decide("l", "192.0.2.1", bl, (), 1, {
        "a.test": ZoneAnswer("a.test", failed="SERVFAIL"), "b.test": ZoneAnswer("b.test")})
    assert got is None


def test_a_bad_entry_is_a_config_error_naming_the_key(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('"bl.test=127.0.0.[2..4]"', '"bl.test=127.0.0.[4..2]"')
                   .replace("{dns}", "53").replace("{inbound}", "2525").replace("{strict}", "2526"))
    out = subprocess.run([sys.executable, "-m", "relaywarden", "config", "check", "--config",
                          str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "listeners.inbound.access.dnsbl" in out.stderr + out.stdout
    assert "is empty" in out.stderr + out.stdout
