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
import math
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


#: Lines kept as raw values before they are formatted and handed to the files. A session
#: writes ~7 lines per message, so about 70 messages' worth: batches big enough to pay for
#: themselves, small enough to hold little memory (formatted: ~65 KB of W3C, about the
#: files' own buffer, and ~170 KB of JSON). The timer formats the rest once a second.
BATCH = 512


class ProtocolLog:
    """The protocol log of one direction (see the module's docstring).

    A line costs the session one clock read and one tuple (``SessionLog.record``): the raw
    values wait in a list, and are formatted, in order, both formats in one pass each, when
    the list is full or the log is flushed (the app's timer, once a second; close). Each
    line keeps the moment it was recorded, which decides its date, its time and the day's
    file it goes to, so the files read exactly as if each line had been formatted at once.
    While a file cannot be written (a full disk), lines go out one by one again, so that
    what it keeps and what it counts as lost is decided line by line (files.RotatingFile).
    """

    def __init__(self, *, w3c: RotatingFile | None, jsonl: RotatingFile | None,
                 clock=time.time) -> None:
        self._w3c = w3c
        self._json = jsonl
        self._clock = clock
        # (moment, SessionLog, username, method, query, status, sc_bytes, cs_bytes,
        #  time_taken_ms, queue_id): lines recorded, not formatted yet.
        self._lines: list[tuple] = []
        self._batch = BATCH       # 1 while a file is failing (see the class docstring)
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
        formatted once per session, not on every command. A new session ID unless given
        one."""
        return SessionLog(self, client_ip=client_ip, site=site, server_name=server_name,
                          server_ip=server_ip, server_port=server_port,
                          session_id=session_id or new_session_id())

    def record(self, e: ProtocolEntry) -> None:
        self.session(client_ip=e.client_ip, site=e.site, server_name=e.server_name,
                     server_ip=e.server_ip, server_port=e.server_port,
                     session_id=e.session_id).record(
            e.username, e.method, e.query, e.status, e.sc_bytes, e.cs_bytes, e.time_taken_ms,
            e.queue_id)

    def _drain(self) -> None:
        """Format the recorded lines and hand them to the files (their buffers)."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        moments = [line[0] for line in lines]
        if self._w3c is not None:
            self._w3c.write_lines(self._w3c_lines(lines), moments)
        if self._json is not None:
            self._json.write_lines(_json_lines(lines), moments)
        self._follow_files()

    def _follow_files(self) -> None:
        failing = any(f is not None and f.failing for f in (self._w3c, self._json))
        self._batch = 1 if failing else BATCH

    def _w3c_lines(self, lines: list[tuple]) -> list[str]:
        stamp = self._w3c_stamp
        # Escaped values seen in this batch: verbs, users and queue IDs repeat from line to
        # line, and escaping costs more than a look-up.
        esc: dict = {None: "-", "": "-"}
        out: list[str] = []
        append = out.append
        # The stamp of the second the last line fell in: most lines of a batch share one
        # (asked of the SecondStamp only when the second changes: a call per line saved).
        second, when = -math.inf, ""
        for now, s, user, method, query, status, sc, cs, taken, qid in lines:
            if not second <= now < second + 1:
                when = stamp(now)
                second = float(int(now))
            pre = s._w3c or s._format()._w3c
            try:
                u = esc[user]
            except KeyError:
                u = esc[user] = _w3c(user)
            try:
                m = esc[method]
            except KeyError:
                m = esc[method] = _w3c(method)
            # Queue IDs and arguments are mostly new: _w3c written out (non-empty here),
            # and looked up with get(), not by a KeyError caught: a raised exception costs
            # ~7,000 instructions in CPython 3.11, and these two a line, with the mail
            # log's, were 3% of the receiving process's (issue 15, callgrind).
            q = esc.get(qid)
            if q is None:
                q = qid.replace(" ", "+")
                if not q.isprintable():
                    q = _w3c(qid)
                esc[qid] = q
            r = esc.get(query)
            if r is None:
                r = query.replace(" ", "+")
                if not r.isprintable():
                    r = _w3c(query)
                esc[query] = r
            append(f"{when} {pre[0]} {u} {pre[1]} {m} {r} "
                   f"{status} {sc} {cs} {taken} {pre[2]} {q}\n")
        return out

    def flush(self) -> None:
        self._drain()
        for f in (self._w3c, self._json):
            if f is not None:
                f.flush()
        self._follow_files()

    def close(self) -> None:
        self._drain()
        for f in (self._w3c, self._json):
            if f is not None:
                f.close()


def _json_lines(lines: list[tuple]) -> list[str]:
    out: list[str] = []
    append = out.append
    # JSON strings made in this batch: verbs, users, a message's queue ID and the
    # addresses repeat from line to line, and a look-up costs a tenth of encode_basestring
    # (callgrind: ~1,200 instructions a call). None: the JSON null.
    esc: dict = {None: "null", "": '""'}
    for now, s, user, method, query, status, sc, cs, taken, qid in lines:
        pre = s._json or s._format()._json
        # "ts" is ``round(now, 3)`` as Python writes that float, made 2.5x cheaper: both
        # round to the nearest 3-decimal value the same way (correctly rounded, ties to
        # even, on the exact binary value), and for a number of under 15 digits Python's
        # shortest repr of the result is that decimal without its trailing zeros ("x.0"
        # for a whole second). Checked on millions of values, halfway cases included
        # (tests/logs/test_formats_at_flush.py).
        ts = f"{now:.3f}".rstrip("0")
        if ts[-1] == ".":
            ts += "0"
        u = esc.get(user)
        if u is None:
            u = esc[user] = _json_str(user)
        m = esc.get(method)
        if m is None:
            m = esc[method] = _json_str(method)
        r = esc.get(query)
        if r is None:
            r = esc[query] = _json_str(query)
        q = esc.get(qid) if qid else "null"
        if q is None:
            q = esc[qid] = _json_str(qid)
        # The numbers as they are: the callers' are ints (SessionLog.record's signature),
        # and an int() around each cost ~900 instructions, a third of the line's.
        append(f'{{"ts": {ts}{pre[0]}{u}{pre[1]}{m}, "cs-uri-query": {r},'
               f' "sc-status": {status}, "sc-bytes": {sc},'
               f' "cs-bytes": {cs}, "time-taken": {taken}'
               f'{pre[2]}{q}}}\n')
    return out


#: A session's constant fields as formatted (SessionLog._format), by (client IP, site,
#: server name, server IP, server port): clients and next hops are few, sessions many.
_constants: dict[tuple[str, str, str, str, int], tuple[str, str, str, str]] = {}
_CONSTANTS_KEPT = 4096


class SessionLog:
    """Records one session's protocol log lines (see ProtocolLog)."""

    __slots__ = ("_log", "session_id", "_client_ip", "_site", "_server_name", "_server_ip",
                 "_server_port", "_w3c", "_json")

    def __init__(self, log: ProtocolLog, *, client_ip: str, site: str, server_name: str,
                 server_ip: str, server_port: int, session_id: str) -> None:
        self._log = log
        self.session_id = session_id
        self._client_ip = client_ip
        self._site = site
        self._server_name = server_name
        self._server_ip = server_ip
        self._server_port = server_port
        # The session's constant fields, formatted when its first line is (at a flush).
        self._w3c: tuple[str, str, str] | None = None
        self._json: tuple[str, str, str] | None = None

    @property
    def client_ip(self) -> str:
        return self._client_ip

    def _format(self) -> "SessionLog":
        # The fields but the session ID are the same for every session of a client on a
        # listener (or of the relay to a next hop): formatted once for all of them.
        key = (self._client_ip, self._site, self._server_name, self._server_ip,
               self._server_port)
        formatted = _constants.get(key)
        if formatted is None:
            if len(_constants) >= _CONSTANTS_KEPT:
                _constants.clear()
            formatted = _constants[key] = (
                _w3c(self._client_ip),
                f"{_w3c(self._site)} {_w3c(self._server_name)} {_w3c(self._server_ip)}"
                f" {self._server_port}",
                f', "c-ip": {_json_str(self._client_ip)}, "cs-username": ',
                f', "s-sitename": {_json_str(self._site)},'
                f' "s-computername": {_json_str(self._server_name)},'
                f' "s-ip": {_json_str(self._server_ip)}, "s-port": {int(self._server_port)},'
                ' "cs-method": ')
        w3c_ip, w3c_rest, json_ip, json_rest = formatted
        self._w3c = (w3c_ip, w3c_rest, _w3c(self.session_id))
        self._json = (json_ip, json_rest,
                      f', "x-session-id": {_json_str(self.session_id)}, "x-queue-id": ')
        return self

    def record(self, username: str | None, method: str, query: str, status: int,
               sc_bytes: int, cs_bytes: int, time_taken_ms: int, queue_id: str = "") -> None:
        """One line. ``queue_id``: the message the line belongs to, "" for none. Kept as
        raw values; formatted in a batch (see ProtocolLog)."""
        log = self._log
        lines = log._lines
        lines.append((log._clock(), self, username, method, query, status, sc_bytes,
                      cs_bytes, time_taken_ms, queue_id))
        if len(lines) >= log._batch:
            log._drain()
