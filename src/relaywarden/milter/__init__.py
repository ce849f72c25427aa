"""Content filters over the Sendmail milter protocol (rspamd, clamav-milter, OpenDKIM).

protocol.py is the sans-IO codec; client.py talks to one milter over asyncio (a connection
per milter and SMTP session, or one for a single message: check)."""

from relaywarden.milter.client import (Connection, Facts, MilterSpec, Outcome, check, connect,
                                       connection_key, parse_socket, rewrite)

__all__ = ["Connection", "Facts", "MilterSpec", "Outcome", "check", "connect", "connection_key",
           "parse_socket", "rewrite"]
