"""Content filters over the Sendmail milter protocol (rspamd, clamav-milter, OpenDKIM).

protocol.py is the sans-IO codec; client.py talks to one milter over asyncio."""

from relaywarden.milter.client import Facts, MilterSpec, Outcome, check, parse_socket, rewrite

__all__ = ["Facts", "MilterSpec", "Outcome", "check", "parse_socket", "rewrite"]
