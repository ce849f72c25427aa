"""The DNS data the resolver tests run against, and small helpers."""

from __future__ import annotations

import asyncio
import socket

TIMEOUT = 1.0  # seconds: every "timeout" case must end within this (plus scheduling slack)

RECORDS = {
    # MX order: 10 (three hosts, random order among them), then 20, then 30
    "example.test": {"MX": [(20, "mx-b.example.test"), (10, "mx-a1.example.test"),
                            (10, "mx-a2.example.test"), (10, "mx-a3.example.test"),
                            (30, "mx-c.example.test")]},
    "mx-a1.example.test": {"A": "127.0.0.11"},
    "mx-a2.example.test": {"A": "127.0.0.12"},
    "mx-a3.example.test": {"A": "127.0.0.13"},
    "mx-b.example.test": {"AAAA": "::1", "A": ["127.0.0.21", "127.0.0.22"]},
    "mx-c.example.test": {"AAAA": "2001:db8::25"},
    # implicit MX (RFC 5321 5.1)
    "implicit.test": {"A": "127.0.0.30", "AAAA": "2001:db8::30"},
    "implicit6.test": {"AAAA": "2001:db8::31"},
    "noaddr.test": {"TXT": "v=spf1 -all"},
    # null MX (RFC 7505)
    "nullmx.test": {"MX": [(0, ".")]},
    "nullmix.test": {"MX": [(0, "."), (10, "mx-a1.example.test")]},
    # MX hosts without addresses
    "partial.test": {"MX": [(10, "ghost.partial.test"), (20, "real.partial.test")]},
    "ghost.partial.test": {"TXT": "no address here"},
    "real.partial.test": {"A": "127.0.0.40"},
    "allghost.test": {"MX": [(10, "ghost.partial.test"), (20, "nowhere.invalid")]},
    "dupmx.test": {"MX": [(30, "mx-a1.example.test"), (10, "mx-a1.example.test")]},
    # CNAMEs
    "alias.test": {"CNAME": "implicit.test"},
    "mxviacname.test": {"CNAME": "nullmx.test"},
    "cnamemx.test": {"MX": [(10, "mxalias.cnamemx.test")]},
    "mxalias.cnamemx.test": {"CNAME": "mx-a1.example.test"},
    "dangling.test": {"CNAME": "nothing.nowhere.test"},
    # trouble
    "broken.test": "servfail",
    "slow.test": "timeout",
    "mxbroken.test": {"MX": [(10, "mx.broken.test"), (20, "mx-a1.example.test")]},
    "mxallbroken.test": {"MX": [(10, "mx.broken.test")]},
    "mxslowhost.test": {"MX": [(10, "mx.slow.test"), (20, "mx-a2.example.test")]},
    # next hops
    "smarthost.test": {"AAAA": "2001:db8::50", "A": "127.0.0.50"},
    "big.test": {"A": [f"127.0.1.{i}" for i in range(1, 121)]},  # > 1232 bytes: TCP
    "xn--bcher-kva.test": {"A": "127.0.0.51"},  # bücher.test
    # reverse DNS
    "127.0.0.60": {"PTR": "Good.RDNS.test"},
    "good.rdns.test": {"A": "127.0.0.60"},
    "127.0.0.61": {"PTR": "liar.rdns.test"},
    "liar.rdns.test": {"A": "127.0.0.99"},
    "127.0.0.62": {"PTR": ["liar.rdns.test", "second.rdns.test"]},
    "second.rdns.test": {"A": ["127.0.0.98", "127.0.0.62"]},
    "127.0.0.63": {"PTR": "gone.rdns.test"},
    "127.0.0.64": {"TXT": "a reverse name without PTR"},
    "127.0.0.65": {"PTR": "h.slow.test"},
    "127.0.0.66": "servfail",
    "127.0.0.67": "timeout",
    "127.0.0.68": {"PTR": "alias.rdns.test"},
    "alias.rdns.test": {"CNAME": "target.rdns.test"},
    "target.rdns.test": {"A": "127.0.0.68"},
    "2001:db8::70": {"PTR": "v6.rdns.test"},
    "v6.rdns.test": {"AAAA": "2001:db8::70", "A": "127.0.0.70"},
    "2001:db8::71": {"PTR": "v4only.rdns.test"},
    "v4only.rdns.test": {"A": "127.0.0.71"},
}


def run(coro):
    return asyncio.run(coro)


def closed_port() -> int:
    """A loopback port with nothing listening (UDP queries to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
