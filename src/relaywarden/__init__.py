"""relaywarden: an SMTP relay gateway."""

__version__ = "0.1.0"
