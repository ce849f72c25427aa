"""Log files: formats, rotation, caps."""

from __future__ import annotations

import json

from relaywarden.logs.files import RotatingFile, Rotation
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.logs.protocol import W3C_HEADER, ProtocolEntry, ProtocolLog


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def entry(**kw) -> ProtocolEntry:
    base = dict(client_ip="10.0.0.9", username=None, site="inbound", server_name="relay.test",
                server_ip="10.0.0.1", server_port=25, method="MAIL",
                query="FROM:<a b@example.com>", status=250, sc_bytes=14, cs_bytes=30,
                time_taken_ms=0)
    base.update(kw)
    return ProtocolEntry(**base)


def test_w3c_line_has_iis_fields_and_escapes_spaces(tmp_path):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="ex", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=5, header=W3C_HEADER, clock=clock)
    log = ProtocolLog(w3c=f, jsonl=None, clock=clock)
    log.record(entry())
    log.close()
    [path] = tmp_path.iterdir()
    assert path.name == "ex260921.log"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#Software: relaywarden")
    assert lines[3].startswith("#Fields: date time c-ip cs-username")
    fields = lines[4].split(" ")
    assert len(fields) == 14  # one column per W3C field
    assert fields[2:] == ["10.0.0.9", "-", "inbound", "relay.test", "10.0.0.1", "25", "MAIL",
                          "FROM:<a+b@example.com>", "250", "14", "30", "0"]


def test_json_protocol_log(tmp_path):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="ex", suffix=".jsonl", rotation=Rotation.DAILY,
                     max_size=0, keep=5, clock=clock)
    log = ProtocolLog(w3c=None, jsonl=f, clock=clock)
    log.record(entry(username="alice"))
    log.close()
    record = json.loads((tmp_path / "ex260921.jsonl").read_text())
    assert record["cs-username"] == "alice" and record["cs-uri-query"] == "FROM:<a b@example.com>"


def test_daily_rotation_and_keep_cap(tmp_path):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=3, clock=clock)
    for day in range(6):
        clock.t = 1_790_000_000.0 + day * 86400
        f.write(f"day {day}\n")
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3
    assert names[-1] == "mail260926.log"


def test_size_rotation_caps_total_size(tmp_path):
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.SIZE,
                     max_size=1000, keep=3)
    for i in range(500):
        f.write(f"line {i:05d} " + "x" * 40 + "\n")
        if i % 20 == 0:
            f.flush()
    f.close()
    files = sorted(tmp_path.iterdir())
    assert {p.name for p in files} <= {"mail.log", "mail.log.1", "mail.log.2", "mail.log.3"}
    assert sum(p.stat().st_size for p in files) < 4 * 1000 + 64 * 1024
    assert "line 00499" in (tmp_path / "mail.log").read_text()


def test_daily_file_over_max_size_continues_in_a_numbered_part(tmp_path):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="ex", suffix=".log", rotation=Rotation.DAILY,
                     max_size=200, keep=10, clock=clock)
    for i in range(20):
        f.write("x" * 49 + "\n")
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "ex260921.log" and "ex260921_1.log" in names


def test_mail_log_is_logfmt_and_quotes_unsafe_values(tmp_path):
    clock = Clock(1_790_000_000.5)
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=3, clock=clock)
    log = MailLog(f, clock=clock)
    log.event(MailEvent.REJECT, stage="rcpt", client="10.0.0.9", reason='said "no" here',
              user=None)
    log.close()
    line = (tmp_path / "mail260921.log").read_text()
    assert line == ('2026-09-21T14:13:20.500Z event=reject stage=rcpt client=10.0.0.9 '
                    'reason="said \\"no\\" here"\n')
