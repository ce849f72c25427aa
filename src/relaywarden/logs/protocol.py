"""The protocol log: every command and reply of every session.

Two formats, as the admin chooses: W3C extended log format with the fields IIS's SMTP service
wrote (so existing log parsers keep working), and JSON lines. Credentials never reach it: the
smtp core hands over AUTH arguments as "***" already.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from relaywarden import __version__
from relaywarden.logs.files import RotatingFile

W3C_FIELDS = (
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-query"
    " sc-status sc-bytes cs-bytes time-taken"
)
W3C_HEADER = (
    f"#Software: relaywarden {__version__}\n#Version: 1.0\n#Date: {{date}}\n#Fields: {W3C_FIELDS}\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolEntry:
    client_ip: str
    username: str | None
    site: str          # the listener name (IIS: the virtual server, s-sitename)
    server_name: str   # s-computername
    server_ip: str
    server_port: int
    method: str        # the SMTP verb, or "CONNECT" / "CLOSE" / "." (end of DATA)
    query: str         # the command's argument, as received (AUTH data masked)
    status: int        # reply code (0: none)
    sc_bytes: int
    cs_bytes: int
    time_taken_ms: int


def _w3c(value: str) -> str:
    """W3C fields are space separated: IIS wrote spaces as '+', empty fields as '-'."""
    if not value:
        return "-"
    out = value.replace(" ", "+")
    if not out.isprintable():
        out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out)
    return out


class ProtocolLog:
    def __init__(self, *, w3c: RotatingFile | None, jsonl: RotatingFile | None,
                 clock=time.time) -> None:
        self._w3c = w3c
        self._json = jsonl
        self._clock = clock

    def record(self, e: ProtocolEntry) -> None:
        now = self._clock()
        if self._w3c is not None:
            t = time.gmtime(now)
            self._w3c.write(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', t)} {_w3c(e.client_ip)} "
                f"{_w3c(e.username or '')} {_w3c(e.site)} {_w3c(e.server_name)} "
                f"{_w3c(e.server_ip)} {e.server_port} {_w3c(e.method)} {_w3c(e.query)} "
                f"{e.status} {e.sc_bytes} {e.cs_bytes} {e.time_taken_ms}\n"
            )
        if self._json is not None:
            self._json.write(json.dumps({
                "ts": round(now, 3), "c-ip": e.client_ip, "cs-username": e.username,
                "s-sitename": e.site, "s-computername": e.server_name, "s-ip": e.server_ip,
                "s-port": e.server_port, "cs-method": e.method, "cs-uri-query": e.query,
                "sc-status": e.status, "sc-bytes": e.sc_bytes, "cs-bytes": e.cs_bytes,
                "time-taken": e.time_taken_ms,
            }, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        for f in (self._w3c, self._json):
            if f is not None:
                f.flush()

    def close(self) -> None:
        for f in (self._w3c, self._json):
            if f is not None:
                f.close()
