"""`relaywarden config check` tells what the relay will really do (issue 14 item 12): where
a hosted domain without a route goes, that AUTH with a missing users file refuses every
login, and that a quarantining group outside the listener's relay networks gets its
foreign mail refused instead. Each warning is checked against a real relay or the router."""

from __future__ import annotations

import base64
import smtplib
import subprocess
import sys

import pytest

from support.configs import HERMETIC
from support.relay import free_port, start_relay, write_config
from relaywarden.config import build_router, load_config

LISTENER = """
[listeners.main]
address = "127.0.0.1"
port = {main}
"""


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaywarden", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


def warnings_of(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [line.removeprefix("warning: ") for line in out.stderr.splitlines()]


# ----------------------------------------------------------------- (a) hosted without a route

HOSTED_CASES = [
    # routes and sender routes, what the warning says after "its mail would be "
    ('[routes."*"]\nnext_hops = ["smart.example.net:587"]\n',
     'delivered via routes."*" to smart host smart.example.net:587, possibly back to this relay'),
    ('[routes."*"]\nnext_hops = ["a.example.net", "[192.0.2.7]:25"]\n',
     'delivered via routes."*" to next hops a.example.net, [192.0.2.7]:25, possibly back to '
     'this relay'),
    ('[routes."*"]\nnext_hops = ["mx"]\n',
     'delivered via routes."*" by MX lookup, possibly back to this relay'),
    ('[routes."*"]\nhold = true\n',
     'held in the queue by routes."*" (hold = true), not delivered'),
    ('[sender_routes.apps]\nsender_domains = ["apps.test"]\nnext_hops = ["relay.provider.test"]\n',
     'delivered by MX lookup, possibly back to this relay; mail that sender_routes.apps '
     'matches goes to smart host relay.provider.test instead'),
]


@pytest.mark.parametrize(("routes", "goes"), HOSTED_CASES)
def test_hosted_domain_without_route_says_where_its_mail_goes(tmp_path, routes, goes):
    path = write_config(tmp_path, '[relay]\nhosted_domains = ["example.com"]\n' + routes
                        + LISTENER, main=2525)
    assert warnings_of(check(path)) == [
        f"{path}: relay.hosted_domains[0]: 'example.com' has no route (routes.\"example.com\"); "
        f"its mail would be {goes}"]
    # What the router (the delivery side) does with it: the route the warning names.
    route = build_router(load_config(path)).route("example.com", sender="x@other.test",
                                                  group=None, user=None)
    if 'routes."*"' in goes:
        assert route.name == 'routes."*"'
        assert (route.kind.value == "hold") == ("held" in goes)
        for hop in route.hops:
            assert (hop.mx and "MX" in goes) or str(hop) in goes
    else:
        assert route.name == "default (MX)"
        by_apps = build_router(load_config(path)).route("example.com", sender="x@apps.test",
                                                        group=None, user=None)
        assert by_apps.name == "sender_routes.apps" and str(by_apps.hops[0]) in goes


# ----------------------------------------------------------------- (b) the users file

AUTH_CONFIG = HERMETIC + """
[relay]
hosted_domains = ["example.com"]
[routes."example.com"]
next_hops = ["[127.0.0.1]:1"]

[auth]
users_file = "users"
[auth.throttle]
delays = [0]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.auth]
enabled = true
plaintext_networks = ["127.0.0.1/32"]
[listeners.main.relay]
authenticated = true
"""


def auth_plain(port: int, user: str, password: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as c:
        c.ehlo("client.test")
        secret = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, text = c.docmd("AUTH", f"PLAIN {secret}")
        return code, text.decode().split()[0]


def test_auth_with_a_missing_users_file_warns_and_the_relay_refuses_every_login(tmp_path):
    port = free_port()
    path = write_config(tmp_path, AUTH_CONFIG, main=port)
    users = tmp_path / "users"
    assert warnings_of(check(path)) == [
        f"{path}: auth.users_file: {users} does not exist: every AUTH fails (535 5.7.8) on "
        f"listeners.main.auth.enabled until it is created (relaywarden user add NAME --file "
        f"{users}; read without a reload)"]
    # The relay starts all the same (a warning, not an error) and does what it says.
    relay = start_relay(path, tmp_path / "var", {"main": port})
    try:
        assert auth_plain(port, "alice", "pw-alice-1") == (535, "5.7.8")
        out = subprocess.run([sys.executable, "-m", "relaywarden", "user", "add", "alice",
                              "--file", str(users), "--password-stdin"], input="pw-alice-1\n",
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert auth_plain(port, "alice", "pw-alice-1") == (235, "2.7.0")
    finally:
        relay.stop()
    assert warnings_of(check(path)) == []


# ----------------------------------------------------------------- (c) groups and relay networks

GROUP_CONFIG = HERMETIC + """
[relay]
hosted_domains = ["example.com"]
[routes."example.com"]
next_hops = ["[127.0.0.1]:1"]

[groups.scanners]
networks = ["127.0.0.3/32", "::ffff:127.0.0.4/128"]
recipient_domains = ["example.com"]
on_violation = "badmail"

[groups.printers]                       # refuses anyway: nothing to warn about
networks = ["127.0.0.5/32"]
recipient_domains = ["example.com"]
on_violation = "reject"

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = {relay}
"""


def group_config(tmp_path, relay: str, port: int = 2525):
    return write_config(tmp_path, GROUP_CONFIG.replace("{relay}", relay), main=port)


def rcpt_from(port: int, source: str, recipient: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=15) as c:
        c.ehlo("scanner.test")
        c.mail("scan@example.com")
        code, text = c.rcpt(recipient)
        return code, text.decode().split()[0]


def test_group_outside_relay_networks_warns_and_its_foreign_mail_is_refused(tmp_path):
    port = free_port()
    path = group_config(tmp_path, '["127.0.0.1/32"]', port)
    tail = ("its mail to domains that are not hosted is refused there (550 5.7.1 Unable to "
            "relay) instead of quarantined by on_violation = \"badmail\"; add it to "
            "listeners.main.relay.networks")
    assert warnings_of(check(path)) == [
        f"{path}: groups.scanners.networks[0]: 127.0.0.3/32 is not in "
        f"listeners.main.relay.networks: {tail}",
        # (Python writes ::ffff:127.0.0.4/128 so; the index names the entry.)
        f"{path}: groups.scanners.networks[1]: ::ffff:7f00:4/128 is not in "
        f"listeners.main.relay.networks: {tail}",
    ]
    # What the warning says, from a real relay: 550 at RCPT, not 250 into badmail.
    relay = start_relay(path, tmp_path / "var", {"main": port})
    try:
        assert rcpt_from(port, "127.0.0.3", "me@gmail.test") == (550, "5.7.1")
    finally:
        relay.stop()


def test_group_partly_outside_relay_networks_warns(tmp_path):
    path = group_config(tmp_path, '["127.0.0.2/32", "127.0.0.3/32"]')
    path.write_text(path.read_text().replace('"127.0.0.3/32", "::ffff:127.0.0.4/128"',
                                             '"127.0.0.2/31"'))
    assert warnings_of(check(path)) == []     # 127.0.0.2/31 = .2 and .3: both relay
    path.write_text(path.read_text().replace('"127.0.0.2/31"', '"127.0.0.0/30"'))
    [line] = warnings_of(check(path))
    assert line.startswith(f"{path}: groups.scanners.networks[0]: 127.0.0.0/30 is only partly "
                           "in listeners.main.relay.networks: ")


def test_group_inside_relay_networks_is_quiet_and_quarantines(tmp_path):
    port = free_port()
    # The mapped entry is covered by the plain IPv4 relay network, as the policy matches.
    path = group_config(tmp_path, '["127.0.0.0/29"]', port)
    assert warnings_of(check(path)) == []
    relay = start_relay(path, tmp_path / "var", {"main": port})
    try:
        assert rcpt_from(port, "127.0.0.3", "me@gmail.test") == (250, "2.1.5")
    finally:
        relay.stop()
