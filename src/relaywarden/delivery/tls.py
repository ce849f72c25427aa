"""The outbound TLS policy (`TlsMode`): defined in policy/tls.py, so that the config's schema
can name it without importing delivery/; this name stays for the delivery code."""

from relaywarden.policy.tls import TlsMode

__all__ = ["TlsMode"]
