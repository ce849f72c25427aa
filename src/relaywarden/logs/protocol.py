"""The protocol log: every command and reply of every session.

Two formats, as the admin chooses: W3C extended log format with the fields IIS's SMTP service
wrote, in IIS's order (so existing log parsers keep working), then two of our own,
``x-session-id`` (every line of one connection has the same) and ``x-queue-id`` (the message
the line belongs to, once it has one); and JSON lines with the same names.

Two series, as IIS kept a log per service and Exchange one per direction: the sessions clients
opened to the relay (``exYYMMDD.log``, ``exYYMMDD.jsonl``) and the sessions the relay opened to
deliver (``outYYMMDD.log``, ``outYYMMDD.jsonl``). Both have the same fields; in the outbound
one the relay is the client: ``c-ip`` is its own address, ``cs-username`` the user it logged in
as, ``s-sitename`` the route, ``s-computername``/``s-ip``/``s-port`` the next hop.

Credentials never reach it: the smtp core hands over AUTH arguments as "***" already, and the
outbound client shows its AUTH lines as "***".
"""

from __future__ import annotations

import itertools
import secrets
import time
from json.encoder import encode_basestring as _json_str
from dataclasses import dataclass

from relaywarden import __version__
from relaywarden.logs.files import RotatingFile
from relaywarden.logs.stamp import SecondStamp

W3C_FIELDS = (
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-query"
    " sc-status sc-bytes cs-bytes time-taken x-session-id x-queue-id"
)
W3C_HEADER = (
    f"#Software: relaywarden {__version__}\n#Version: 1.0\n#Date: {{date}}\n#Fields: {W3C_FIELDS}\n"
)
#: The outbound series says which way round its fields are (W3C "#Remark" directive).
W3C_OUTBOUND_HEADER = W3C_HEADER.replace("#Fields:", (
    "#Remark: outbound sessions: c-ip and cs-username are this relay's, s-sitename is the "
    "route, s-computername s-ip s-port the next hop\n#Fields:"))

# Session IDs: a random prefix per process (the receiving and the delivering process, and
# one run and the next, never share one), then a counter: unique without a lookup, and
# cheap enough for every connection.
_SESSION_PREFIX = secrets.token_hex(4)
_sessions = itertools.count(1)


def new_session_id() -> str:
    return f"{_SESSION_PREFIX}-{next(_sessions):x}"


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
    session_id: str = ""
    queue_id: str = ""


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
        # Lines that could not be written (disk full) are counted; the first write that
        # succeeds says how many, as a W3C #Remark directive / a JSON line of its own.
        if w3c is not None:
            w3c.lost_notice = lambda count, name, now: (
                f"#Remark: log-lost count={count} file={name}: {count} line(s) could not be"
                " written\n")
        if jsonl is not None:
            jsonl.lost_notice = lambda count, name, now: (
                f'{{"ts": {round(now, 6)}, "event": "log-lost", "count": {int(count)},'
                f' "file": {_json_str(name)}}}\n')
        self._w3c_stamp = SecondStamp(
            lambda second: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))

    def session(self, *, client_ip: str, site: str, server_name: str, server_ip: str,
                server_port: int, session_id: str | None = None) -> "SessionLog":
        """The log of one session: the fields that stay the same for all its lines are
        formatted once, here, not on every command. A new session ID unless given one."""
        return SessionLog(self, client_ip=client_ip, site=site, server_name=server_name,
                          server_ip=server_ip, server_port=server_port,
                          session_id=session_id or new_session_id())

    def record(self, e: ProtocolEntry) -> None:
        self.session(client_ip=e.client_ip, site=e.site, server_name=e.server_name,
                     server_ip=e.server_ip, server_port=e.server_port,
                     session_id=e.session_id).record(
            e.username, e.method, e.query, e.status, e.sc_bytes, e.cs_bytes, e.time_taken_ms,
            e.queue_id)

    def flush(self) -> None:
        for f in (self._w3c, self._json):
            if f is not None:
                f.flush()

    def close(self) -> None:
        for f in (self._w3c, self._json):
            if f is not None:
                f.close()


class SessionLog:
    """Writes one session's protocol log lines (see ProtocolLog.session)."""

    __slots__ = ("_log", "session_id", "_w3c_ip", "_w3c_server", "_w3c_id", "_json_ip",
                 "_json_server", "_json_id")

    def __init__(self, log: ProtocolLog, *, client_ip: str, site: str, server_name: str,
                 server_ip: str, server_port: int, session_id: str) -> None:
        self._log = log
        self.session_id = session_id
        self._w3c_id = _w3c(session_id)
        self._json_id = f', "x-session-id": {_json_str(session_id)}, "x-queue-id": '
        self._w3c_ip = _w3c(client_ip)
        self._w3c_server = f"{_w3c(site)} {_w3c(server_name)} {_w3c(server_ip)} {server_port}"
        self._json_ip = f', "c-ip": {_json_str(client_ip)}, "cs-username": '
        self._json_server = (
            f', "s-sitename": {_json_str(site)}, "s-computername": {_json_str(server_name)},'
            f' "s-ip": {_json_str(server_ip)}, "s-port": {int(server_port)}, "cs-method": ')

    def record(self, username: str | None, method: str, query: str, status: int,
               sc_bytes: int, cs_bytes: int, time_taken_ms: int, queue_id: str = "") -> None:
        """One line. ``queue_id``: the message the line belongs to, "" for none."""
        log = self._log
        now = log._clock()
        if log._w3c is not None:
            log._w3c.write(
                f"{log._w3c_stamp(now)} {self._w3c_ip} {_w3c(username or '')} "
                f"{self._w3c_server} {_w3c(method)} {_w3c(query)} "
                f"{status} {sc_bytes} {cs_bytes} {time_taken_ms} "
                f"{self._w3c_id} {_w3c(queue_id)}\n", now)
        if log._json is not None:
            user = "null" if username is None else _json_str(username)
            log._json.write(
                f'{{"ts": {round(now, 3)}{self._json_ip}{user}{self._json_server}'
                f'{_json_str(method)}, "cs-uri-query": {_json_str(query)},'
                f' "sc-status": {int(status)}, "sc-bytes": {int(sc_bytes)},'
                f' "cs-bytes": {int(cs_bytes)}, "time-taken": {int(time_taken_ms)}'
                f'{self._json_id}{_json_str(queue_id) if queue_id else "null"}}}\n', now)
