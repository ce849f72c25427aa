"""The logs format their lines at flush (issue 15), and the files read byte for byte as when
each line was formatted as it was written.

The reference below is the per-line formatting the protocol and mail logs had before
(relaywarden main at 12e74ba), copied as it was, writing each line through
``RotatingFile.write`` at once. The same varied lines (escapes, spaces, non-ASCII, control
characters, lone surrogates, None fields, a UTC midnight, the clock stepping back over it, a
file cut by size) go through the real logs and through the reference, with the same fake
clock and flushes; every file the two make must be the same, name and bytes.
"""

from __future__ import annotations

import random
import re
import time
from json.encoder import encode_basestring as _json_str
from pathlib import Path

import pytest

from relaywarden.logs import maillog as maillog_module
from relaywarden.logs import protocol as protocol_module
from relaywarden.logs.files import RotatingFile, Rotation
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.logs.protocol import W3C_HEADER, ProtocolLog
from relaywarden.logs.stamp import SecondStamp

# -- the reference: formatting at write time, as it was --------------------------------------


def _ref_w3c(value: str) -> str:
    if not value:
        return "-"
    out = value.replace(" ", "+")
    if not out.isprintable():
        out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out)
    return out


class RefSession:
    def __init__(self, log: "RefProtocolLog", *, client_ip, site, server_name, server_ip,
                 server_port, session_id) -> None:
        self._log = log
        self._w3c_id = _ref_w3c(session_id)
        self._json_id = f', "x-session-id": {_json_str(session_id)}, "x-queue-id": '
        self._w3c_ip = _ref_w3c(client_ip)
        self._w3c_server = (f"{_ref_w3c(site)} {_ref_w3c(server_name)} {_ref_w3c(server_ip)}"
                            f" {server_port}")
        self._json_ip = f', "c-ip": {_json_str(client_ip)}, "cs-username": '
        self._json_server = (
            f', "s-sitename": {_json_str(site)}, "s-computername": {_json_str(server_name)},'
            f' "s-ip": {_json_str(server_ip)}, "s-port": {int(server_port)}, "cs-method": ')

    def record(self, username, method, query, status, sc_bytes, cs_bytes, time_taken_ms,
               queue_id=""):
        log = self._log
        now = log._clock()
        if log._w3c is not None:
            log._w3c.write(
                f"{log._w3c_stamp(now)} {self._w3c_ip} {_ref_w3c(username or '')} "
                f"{self._w3c_server} {_ref_w3c(method)} {_ref_w3c(query)} "
                f"{status} {sc_bytes} {cs_bytes} {time_taken_ms} "
                f"{self._w3c_id} {_ref_w3c(queue_id)}\n", now)
        if log._json is not None:
            user = "null" if username is None else _json_str(username)
            log._json.write(
                f'{{"ts": {round(now, 3)}{self._json_ip}{user}{self._json_server}'
                f'{_json_str(method)}, "cs-uri-query": {_json_str(query)},'
                f' "sc-status": {int(status)}, "sc-bytes": {int(sc_bytes)},'
                f' "cs-bytes": {int(cs_bytes)}, "time-taken": {int(time_taken_ms)}'
                f'{self._json_id}{_json_str(queue_id) if queue_id else "null"}}}\n', now)


class RefProtocolLog:
    def __init__(self, *, w3c, jsonl, clock) -> None:
        self._w3c, self._json, self._clock = w3c, jsonl, clock
        self._w3c_stamp = SecondStamp(
            lambda second: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))

    def session(self, **kw) -> RefSession:
        return RefSession(self, **kw)

    def flush(self) -> None:
        for f in (self._w3c, self._json):
            if f is not None:
                f.flush()

    close = flush


_PLAIN = re.compile(r'[^ "=\\]+')


def _ref_value(v: object) -> str:
    if type(v) is int:
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.isprintable():
        return s
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


class RefMailLog:
    def __init__(self, out, *, clock) -> None:
        self._out, self._clock = out, clock
        self._stamp = SecondStamp(
            lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))

    def event(self, event, /, *, at=None, **fields):
        now = self._clock()
        second, micros = divmod(round((now if at is None else at) * 1_000_000), 1_000_000)
        parts = [f"{self._stamp(second)}.{micros:06d}Z event={event.value}"]
        for k, v in fields.items():
            if v is not None:
                parts.append(f"{k}={_ref_value(v)}")
        self._out.write(" ".join(parts) + "\n", now)

    def flush(self) -> None:
        self._out.flush()

    close = flush


# -- varied input ---------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


MIDNIGHT = 1_790_035_200.0          # 2026-09-22T00:00:00Z

TEXTS = ["", "x", "two words", "tab\there", "jörg@bücher.example", "日本語 テキスト",
         'quote " and \\ backslash', "a=b", "ctl\x00\x1b\x7f", "nl\r\nin it", "\u2028sep",
         "lone \udcff surrogate", "\ud800\udc00 pair of halves", "emoji 📨", "  lead+trail  ",
         "-", "+", "null", "#Remark: not a directive"]
METHODS = ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT", "CLOSE", "AUTH", "x y",
           "ÜBER", ""]
USERS = [None, "", "alice", "bob smith", "jörg", "ctl\x01"]
QIDS = ["", "0QX1A2B3C4", "Q 1", "qïd"]


def moments(rng: random.Random, n: int) -> list[float]:
    """Times before and after a UTC midnight: fractions of every kind (halfway cases of the
    3-decimal and the microsecond rounding, whole seconds), and the clock stepping back
    over midnight once."""
    t = MIDNIGHT - 2.0
    out = []
    for i in range(n):
        t += rng.choice([0.0, 0.0005, 0.0015, 0.000137, 0.25, 0.0000005, 0.0123456789,
                         rng.random() / 50])
        out.append(t)
        if i == n // 2:
            out.append(MIDNIGHT - 0.0004)               # the clock stepped back
            out.append(MIDNIGHT - 0.0000004)            # rounds up into the next second
    return [round(x, rng.choice([0, 1, 3, 4, 6, 9])) if i % 5 == 0 else x
            for i, x in enumerate(out)]


def series(directory: Path, clock, prefix: str, suffix: str, *, max_size: int = 0,
           header: str = "") -> RotatingFile:
    return RotatingFile(directory, prefix=prefix, suffix=suffix, rotation=Rotation.DAILY,
                        max_size=max_size, keep=100, header=header, clock=clock)


def run(directory: Path, reference: bool, *, seed: int, max_size: int) -> None:
    clock = Clock(MIDNIGHT - 3.0)
    plog_cls, mail_cls = (RefProtocolLog, RefMailLog) if reference else (ProtocolLog, MailLog)
    plog = plog_cls(w3c=series(directory, clock, "ex", ".log", max_size=max_size,
                               header=W3C_HEADER),
                    jsonl=series(directory, clock, "ex", ".jsonl", max_size=max_size),
                    clock=clock)
    mail = mail_cls(series(directory, clock, "mail", ".log", max_size=max_size), clock=clock)
    rng = random.Random(seed)
    constants = [dict(client_ip=rng.choice(["10.0.0.9", "::1", "fe80::1%eth0"]),
                      site=rng.choice(["inbound", "routes.\"*\"", "sïte x"]),
                      server_name=rng.choice(TEXTS[1:]), server_ip="10.0.0.1",
                      server_port=rng.choice([25, 587])) for _ in range(8)]
    sessions = [plog.session(**c, session_id=f"5e55-{n:x}") for n, c in enumerate(constants)]
    # A second session of each client (the constants are formatted once for all of a
    # client's sessions): each line must still carry its own session's ID.
    siblings = {id(s): plog.session(**c, session_id=f"5e55-{n + 8:x}")
                for n, (s, c) in enumerate(zip(sessions, constants))}
    for n, now in enumerate(moments(rng, 1500)):
        clock.t = now
        chosen = rng.choice(sessions)
        (siblings[id(chosen)] if n % 3 == 0 else chosen).record(
            rng.choice(USERS), rng.choice(METHODS), rng.choice(TEXTS), rng.choice([0, 220, 250,
                                                                                  354, 550]),
            rng.randrange(0, 500), rng.randrange(0, 10**6), rng.randrange(0, 30000),
            rng.choice(QIDS))
        at = rng.choice([None, now - rng.random() * 3, now - 0.0000004])
        mail.event(rng.choice(list(MailEvent)), at=at, id=rng.choice(QIDS), text=rng.choice(TEXTS),
                   n=rng.randrange(-5, 10**9), none=None, flag=rng.choice([True, False]),
                   ratio=rng.random() * 10, path=Path("/var/spool/x y"),
                   **{rng.choice(["to", "from"]): rng.choice(TEXTS)})
        if rng.random() < 0.01:             # the app's timer, at irregular moments
            plog.flush()
            mail.flush()
    plog.close()
    mail.close()


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_size", [0, 40_000])
def test_lines_formatted_at_flush_are_the_lines_formatted_at_write(tmp_path, seed, max_size):
    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    run(tmp_path / "ref", True, seed=seed, max_size=max_size)
    run(tmp_path / "new", False, seed=seed, max_size=max_size)
    ref, new = files_of(tmp_path / "ref"), files_of(tmp_path / "new")
    # Both days have files of their own (and parts, when cut by size).
    assert {"ex260921.log", "ex260922.log", "ex260921.jsonl", "ex260922.jsonl",
            "mail260921.log", "mail260922.log"} <= set(ref)
    if max_size:
        assert any("_1" in name for name in ref)
    assert list(new) == list(ref)
    for name in ref:
        if max_size:
            # A part cut by size is opened at the flush after the line that filled the one
            # before; its header's #Date is that moment (the flush's clock), which is now
            # when the batch is formatted, not when that line was written. Every line is
            # the same.
            assert _dateless(new[name]) == _dateless(ref[name]), name
        else:
            assert new[name] == ref[name], name


def _dateless(data: bytes) -> bytes:
    return re.sub(rb"(?m)^#Date: .*$", b"#Date: -", data)


def test_batches_that_fill_the_buffer_write_the_same_lines(tmp_path, monkeypatch):
    """Small batches: lines are formatted and handed over while others are still coming,
    not only at the timer's flush."""
    monkeypatch.setattr(protocol_module, "BATCH", 7)
    monkeypatch.setattr(maillog_module, "BATCH", 5)
    (tmp_path / "ref").mkdir()
    (tmp_path / "new").mkdir()
    run(tmp_path / "ref", True, seed=9, max_size=0)
    run(tmp_path / "new", False, seed=9, max_size=0)
    assert files_of(tmp_path / "new") == files_of(tmp_path / "ref")


@pytest.mark.slow   # 1.2 million moments formatted
def test_the_json_timestamp_is_the_rounded_float_python_writes(tmp_path):
    """``ts`` is written without round() (see protocol._json_lines): the same text for
    whole seconds, halfway cases and a million random moments."""
    rng = random.Random(15)
    values = [0.0, 1.0, 0.0005, 0.0015, 0.9995, 1_790_000_000.0, 1_790_000_000.1,
              1_790_000_000.0005, 1_790_000_000.9995, 1_790_000_000.12, 4_102_444_800.4445]
    values += [rng.uniform(1.7e9, 2.2e9) for _ in range(1_000_000)]
    values += [int(v) + rng.choice([0.0005, 0.0015, 0.0025, 0.9995, 0.5, 0.1, 0.12])
               for v in values[:200_000]]
    plog = ProtocolLog(w3c=None, jsonl=None)
    session = plog.session(client_ip="10.0.0.9", site="a", server_name="r",
                           server_ip="10.0.0.1", server_port=25)
    lines = [(v, session, None, "NOOP", "", 250, 14, 6, 0, "") for v in values]
    got = [line.split(",", 1)[0] for line in protocol_module._json_lines(lines)]
    assert got == [f'{{"ts": {round(v, 3)}' for v in values]
