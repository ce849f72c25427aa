"""One rule for "is this client in that network list", whichever list it is (relay
networks, TLS optional and AUTH plaintext networks in the policy; normalize networks in
the listener context): IPv4-mapped IPv6 clients and entries match both ways."""

from __future__ import annotations

import ipaddress

import pytest

from relaywarden.policy import gates
from relaywarden.policy.match import first_network
from relaywarden.policy.model import Gates
from relaywarden.server.context import ListenerContext, ListenerTlsMode
from relaywarden.smtp.server import ServerSettings

NETWORKS = ["10.0.0.0/8", "::ffff:10.0.0.0/104", "2001:db8::/32", "::ffff:192.0.2.0/120",
            "192.0.2.7/32"]
CLIENTS = ["10.1.2.3", "::ffff:10.1.2.3", "192.0.2.9", "::ffff:192.0.2.9", "192.0.2.7",
           "::ffff:192.0.2.7", "2001:db8::1", "172.16.0.1", "::ffff:172.16.0.1", "::1"]


def context(networks) -> ListenerContext:
    nets = tuple(networks)
    return ListenerContext(
        name="main", hostname="relay.test", banner="", settings=ServerSettings(hostname="relay.test"),
        command_timeout=1, data_timeout=1, postmaster="postmaster@relay.test",
        normalize_networks=nets, tls_mode=ListenerTlsMode.REQUIRED)


def listener_gates(networks) -> Gates:
    nets = tuple(networks)
    return Gates(tls_mode="required", tls_optional_networks=nets, auth_enabled=True,
                 auth_plaintext_networks=nets)


@pytest.mark.parametrize("entry", NETWORKS)
@pytest.mark.parametrize("client", CLIENTS)
def test_every_list_agrees_with_the_policy(entry, client):
    nets = (ipaddress.ip_network(entry),)
    ip = ipaddress.ip_address(client)
    member = first_network(nets, ip) is not None
    assert context(nets).normalizes(ip) is member
    g = listener_gates(nets)
    assert (gates.check_auth("main", g, ip, tls=False) is None) is member
    assert gates.tls_required(g, ip) is (not member)


def test_a_mapped_entry_matches_the_plain_ipv4_client():
    # Written as ::ffff:10.0.0.0/104 in the TLS optional list: the IPv4 client 10.0.0.5 is
    # in it, as it is in the relay networks (it was not, before one rule served both).
    g = listener_gates([ipaddress.ip_network("::ffff:10.0.0.0/104")])
    assert not gates.tls_required(g, ipaddress.ip_address("10.0.0.5"))
