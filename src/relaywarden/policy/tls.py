"""The outbound TLS policy, shared by the config (delivery.tls, routes.*.tls), the router
and the delivery client. Its own module so that none of them has to import another, and in
policy/ so that the config's schema does not import delivery/ (docs/architecture.md)."""

from __future__ import annotations

from enum import Enum


class TlsMode(Enum):
    # RFC 3207 STARTTLS is optional for a client; what to do when it is missing or the
    # certificate does not check out is a local policy, chosen per route.
    NONE = "none"                    # never STARTTLS (a broken peer on a trusted LAN)
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, any certificate; else plaintext
    REQUIRED = "required"            # STARTTLS or no delivery; any certificate (encryption only)
    VERIFY = "verify"                # STARTTLS or no delivery; certificate must match the host
