"""One real DNS server (unbound on loopback) for the resolver tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnsserver import DnsServer

from relaywarden.resolver import DnsSettings, Resolver

from .resolver_helpers import RECORDS, TIMEOUT


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as server:
        yield server


@pytest.fixture
def settings(dns_server: DnsServer) -> DnsSettings:
    return DnsSettings(nameservers=("127.0.0.1",), port=dns_server.port, timeout=TIMEOUT)


@pytest.fixture
def resolver(settings: DnsSettings) -> Resolver:
    # A fresh resolver per test: its cache must not carry answers between tests.
    return Resolver(settings)
