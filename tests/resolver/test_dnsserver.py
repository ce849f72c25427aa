"""The DNS server test helper itself: real answers over UDP and TCP, clean stop."""

from __future__ import annotations

import socket

import dns.message
import dns.query
import dns.rcode
import pytest
from dnsserver import DnsServer, reverse_name


def ask(server: DnsServer, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=2)
    return dns.query.udp(query, server.host, port=server.port, timeout=2)


def test_answers_over_udp_and_tcp(dns_server: DnsServer) -> None:
    for tcp in (False, True):
        reply = ask(dns_server, "example.test", "MX", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert len(reply.answer[0]) == 5
        assert ask(dns_server, "nosuch.example.test", "A", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
        nodata = ask(dns_server, "implicit.test", "MX", tcp=tcp)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert ask(dns_server, "broken.test", "A", tcp=tcp).rcode() == dns.rcode.SERVFAIL


def test_names_outside_the_records_never_leave_loopback(dns_server: DnsServer) -> None:
    # Real-world names answer NXDOMAIN at once from the server's own root zone.
    for name in ("example.com", "mail.example.org", "1.0.0.127.in-addr.arpa", "4.3.2.1.in-addr.arpa"):
        assert ask(dns_server, name, "A").rcode() == dns.rcode.NXDOMAIN


def test_null_mx_and_reverse_names(dns_server: DnsServer) -> None:
    assert ask(dns_server, "nullmx.test", "MX").answer[0][0].to_text() == "0 ."
    assert reverse_name("127.0.0.60") == "60.0.0.127.in-addr.arpa"
    reply = ask(dns_server, reverse_name("2001:db8::70"), "PTR")
    assert reply.answer[0][0].to_text() == "v6.rdns.test."


def test_bad_descriptions_fail_before_starting() -> None:
    with pytest.raises(ValueError):
        DnsServer({"x.test": {"CNAME": "a.test", "A": "127.0.0.1"}})
    with pytest.raises(ValueError):
        DnsServer({"x.test": {"A": "not-an-ip"}})
    with pytest.raises(ValueError):
        DnsServer({"x.test": "sometimes"})


def test_stop_ends_the_process_and_frees_the_port() -> None:
    server = DnsServer({"a.test": {"A": "127.0.0.1"}})
    with server:
        proc = server._proc
        assert server.running and proc is not None
        port = server.port
    assert not server.running and proc.poll() is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # free again
