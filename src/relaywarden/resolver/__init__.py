"""DNS lookups for delivery: MX (null and implicit MX), host addresses, FCrDNS."""

from relaywarden.resolver.resolver import (
    DnsSettings,
    MxHost,
    MxResult,
    MxStatus,
    RdnsResult,
    RdnsStatus,
    Resolver,
)

__all__ = [
    "DnsSettings",
    "MxHost",
    "MxResult",
    "MxStatus",
    "RdnsResult",
    "RdnsStatus",
    "Resolver",
]
