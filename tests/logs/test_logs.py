"""Log files: formats, rotation, caps."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest

from relaywarden.logs import files as files_module
from relaywarden.logs.files import RotatingFile, Rotation
from relaywarden.logs.maillog import MailEvent, MailLog
from relaywarden.logs.protocol import W3C_FIELDS, W3C_HEADER, ProtocolEntry, ProtocolLog


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
    log.record(entry(session_id="5e55-1"))
    log.record(entry(session_id="5e55-1", method=".", query="id=Q1", queue_id="Q1"))
    log.close()
    [path] = tmp_path.iterdir()
    assert path.name == "ex260921.log"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#Software: relaywarden")
    # IIS's fields first, in IIS's order (its parsers read them so), then our two.
    assert lines[3] == ("#Fields: date time c-ip cs-username s-sitename s-computername s-ip "
                        "s-port cs-method cs-uri-query sc-status sc-bytes cs-bytes time-taken "
                        "x-session-id x-queue-id")
    fields = lines[4].split(" ")
    assert len(fields) == 16  # one column per W3C field
    assert fields[2:] == ["10.0.0.9", "-", "inbound", "relay.test", "10.0.0.1", "25", "MAIL",
                          "FROM:<a+b@example.com>", "250", "14", "30", "0", "5e55-1", "-"]
    assert lines[5].split(" ")[-2:] == ["5e55-1", "Q1"]


def test_json_protocol_log(tmp_path):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="ex", suffix=".jsonl", rotation=Rotation.DAILY,
                     max_size=0, keep=5, clock=clock)
    log = ProtocolLog(w3c=None, jsonl=f, clock=clock)
    log.record(entry(username="alice", session_id="5e55-2"))
    log.record(entry(session_id="5e55-2", queue_id="Q2"))
    log.close()
    first, second = map(json.loads, (tmp_path / "ex260921.jsonl").read_text().splitlines())
    assert first["cs-username"] == "alice" and first["cs-uri-query"] == "FROM:<a b@example.com>"
    assert (first["x-session-id"], first["x-queue-id"]) == ("5e55-2", None)
    assert (second["x-session-id"], second["x-queue-id"]) == ("5e55-2", "Q2")
    # The same field names as the W3C log, in the same order.
    assert list(first)[1:] == W3C_FIELDS.split()[2:]


def test_sessions_get_distinct_ids_and_keep_theirs(tmp_path):
    f = RotatingFile(tmp_path, prefix="ex", suffix=".jsonl", rotation=Rotation.DAILY,
                     max_size=0, keep=5)
    log = ProtocolLog(w3c=None, jsonl=f)
    one = log.session(client_ip="10.0.0.9", site="a", server_name="r", server_ip="10.0.0.1",
                      server_port=25)
    two = log.session(client_ip="10.0.0.9", site="a", server_name="r", server_ip="10.0.0.1",
                      server_port=25)
    again = log.session(client_ip="10.0.0.9", site="b", server_name="r", server_ip="10.0.0.1",
                        server_port=25, session_id=one.session_id)
    for s in (one, two, again):
        s.record(None, "NOOP", "", 250, 14, 6, 0)
    log.close()
    [path] = tmp_path.iterdir()
    ids = [json.loads(line)["x-session-id"] for line in path.read_text().splitlines()]
    assert ids == [one.session_id, two.session_id, one.session_id]
    assert one.session_id != two.session_id


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
    assert line == ('2026-09-21T14:13:20.500000Z event=reject stage=rcpt client=10.0.0.9 '
                    'reason="said \\"no\\" here"\n')


# --- two processes writing one series (the receiving and the delivering process share the
# mail log). Two RotatingFile objects open the files independently, as two processes do:
# flock, rename and O_APPEND behave the same across open file descriptions.

LINE = 50    # bytes per test line


def _lines_of(directory, pattern):
    out = []
    for path in directory.glob(pattern):
        out += path.read_text().splitlines()
    return out


def _interleave(a, b, total, flush_every):
    for i in range(total):
        writer, name = (a, "A") if i % 3 else (b, "B")
        writer.write(f"{name} {i:07d} ".ljust(LINE - 1, "x") + "\n")
        if i % flush_every == flush_every - 1:
            a.flush()
            b.flush()
    a.close()
    b.close()


def test_two_writers_share_size_rotation_without_loss_or_overshoot(tmp_path):
    make = lambda: RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.SIZE,
                                max_size=2000, keep=1000)
    total, flush_every = 3000, 10
    _interleave(make(), make(), total, flush_every)
    lines = _lines_of(tmp_path, "mail.log*")
    # Every line once: none lost in a file renamed under the other writer, none twice.
    assert sorted(int(line.split()[1]) for line in lines) == list(range(total))
    # The cap holds for both together: a file passes max_size by at most what the two
    # writers wrote between two flushes (each notices the other's rotation at its flush).
    sizes = [p.stat().st_size for p in tmp_path.glob("mail.log*")]
    assert max(sizes) <= 2000 + 2 * flush_every * LINE
    # One shift per full file: no near-empty files from both writers shifting at once.
    assert len(sizes) <= total * LINE // 2000 + 2
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"mail.log"} | {f"mail.log.{n}" for n in range(1, len(names))}


def test_two_writers_share_daily_parts(tmp_path):
    clock = Clock(1_790_000_000.0)
    make = lambda: RotatingFile(tmp_path, prefix="ex", suffix=".log", rotation=Rotation.DAILY,
                                max_size=2000, keep=1000, header="#Fields: x\n", clock=clock)
    total, flush_every = 3000, 10
    _interleave(make(), make(), total, flush_every)
    lines = [line for line in _lines_of(tmp_path, "ex*.log") if not line.startswith("#")]
    assert sorted(int(line.split()[1]) for line in lines) == list(range(total))
    sizes = [p.stat().st_size for p in tmp_path.glob("ex*.log")]
    assert max(sizes) <= 2000 + 2 * flush_every * LINE
    assert len(sizes) <= total * LINE // 2000 + 2
    # Each part starts with its header, written once.
    for path in tmp_path.glob("ex*.log"):
        text = path.read_text()
        assert text.startswith("#Fields: x\n") and text.count("#Fields") == 1


def test_a_writer_follows_a_rename_by_the_other(tmp_path):
    a = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.SIZE,
                     max_size=100, keep=10)
    b = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.SIZE,
                     max_size=100, keep=10)
    b.write("b1\n")
    b.flush()
    a.write("a" * 120 + "\n")
    a.flush()                 # full: a shifts mail.log -> mail.log.1 (which b still has open)
    a.write("a2\n")           # the next line goes to the new mail.log
    b.flush()                 # b sees the name now means another file, and follows
    b.write("b2\n")
    a.flush()
    b.flush()
    assert (tmp_path / "mail.log.1").read_text() == "b1\n" + "a" * 120 + "\n"
    assert (tmp_path / "mail.log").read_text() == "a2\nb2\n"


def test_outbound_protocol_log_follows_the_inbound_one_unless_set(tmp_path):
    from relaywarden.config.build import build_outbound_log
    from relaywarden.config.load import parse_config

    def outbound(log: dict):
        cfg = parse_config({"relay": {"data_dir": str(tmp_path)}, "log": log,
                            "listeners": {"in": {"address": "127.0.0.1", "port": 2525}}},
                           source="test.toml", base_dir=tmp_path)
        return cfg.log.outbound_protocol, build_outbound_log(cfg)

    on, log = outbound({})
    assert on and log is not None
    log.record(entry(session_id="s-1", queue_id="Q1"))
    log.close()
    # Its own series beside the inbound one, with the same fields and a remark saying
    # which way round they are.
    names = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert [re.sub(r"\d{6}", "YYMMDD", n) for n in names] == ["outYYMMDD.jsonl", "outYYMMDD.log"]
    w3c = next((tmp_path / "log").glob("out*.log")).read_text()
    assert "#Remark: outbound sessions" in w3c and f"#Fields: {W3C_FIELDS}\n" in w3c
    assert outbound({"protocol": False}) == (False, None)
    assert outbound({"protocol": False, "protocol_outbound": True})[0] is True
    assert outbound({"protocol_outbound": False}) == (False, None)
    only_json = outbound({"protocol_formats": ["json"]})[1]
    assert only_json._w3c is None and only_json._json is not None


# --- a full disk (issue 14 item 1). The file system is real; only os.write in logs/files.py
# is replaced, by one that fails (ENOSPC) or takes a part, as a full disk does.


class Disk:
    """os.write for logs/files.py: ``room`` bytes more fit (None: any), then ENOSPC."""

    def __init__(self) -> None:
        self.room: int | None = None
        self.calls = 0

    def write(self, fd, data):
        self.calls += 1
        if self.room is None:
            return os.write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[:self.room]))
        self.room -= n
        return n


class _Os:
    def __init__(self, disk: Disk) -> None:
        self._disk = disk

    def __getattr__(self, name):
        return self._disk.write if name == "write" else getattr(os, name)


@pytest.fixture
def disk(monkeypatch):
    d = Disk()
    monkeypatch.setattr(files_module, "os", _Os(d))
    return d


def mail_series(tmp_path, clock):
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=3, clock=clock)
    return f, MailLog(f, clock=clock)


def test_a_full_disk_never_raises_keeps_what_it_can_and_says_how_many_it_lost(
        tmp_path, disk, capsys):
    clock = Clock(1_790_000_000.25)
    f, log = mail_series(tmp_path, clock)
    log.event(MailEvent.CONNECT, client="10.0.0.1", n=0)
    log.flush()
    disk.room = 0                                    # the disk is full from here
    n = 1
    while f.lost == 0:                               # until the kept lines are at their cap
        log.event(MailEvent.CONNECT, client="10.0.0.1", n=n)
        n += 1
        if n % 500 == 0:
            log.flush()                              # the timer: fails, never raises
    for i in range(n, n + 99):
        log.event(MailEvent.CONNECT, client="10.0.0.1", n=i)
    log.flush()
    assert f.lost == 100 and f.lost_total == 100
    err = capsys.readouterr().err
    assert err.count("mail260921.log: cannot write: No space left on device") == 1

    disk.room = None                                 # space again
    clock.t += 5
    log.flush()                                      # the timer
    log.event(MailEvent.DISCONNECT, client="10.0.0.1", n=n + 99)
    log.flush()
    lines = (tmp_path / "mail260921.log").read_text().splitlines()
    kept = n - 2                                     # lines 1 .. n-2 were kept, in order
    assert [int(line.rsplit("n=", 1)[1]) for line in lines[:kept + 1]] == list(range(kept + 1))
    assert lines[kept + 1] == "2026-09-21T14:13:25.250000Z event=log-lost count=100 file=mail260921.log"
    assert lines[kept + 2].endswith(f"event=disconnect client=10.0.0.1 n={n + 99}")
    assert len(lines) == kept + 3
    assert f.lost == 0
    assert "mail260921.log: writing again; 100 log line(s) were lost" in capsys.readouterr().err
    assert files_module.KEEP_WHILE_FAILING - 200 < sum(len(x) + 1 for x in lines[1:kept + 1]) \
        <= files_module.KEEP_WHILE_FAILING


def test_a_write_the_disk_cut_short_leaves_no_half_line(tmp_path, disk):
    clock = Clock(1_790_000_000.0)
    f = RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                     max_size=0, keep=3, clock=clock)
    for i in range(10):
        f.write(f"line {i} " + "x" * 40 + "\n")
    disk.room = 120                                  # two lines and a part of the third
    f.flush()
    path = tmp_path / "mail260921.log"
    assert path.read_text().splitlines() == [f"line {i} " + "x" * 40 for i in range(2)]
    f.write("line 10\n")
    disk.room = None
    f.flush()
    assert path.read_text().splitlines() == (
        [f"line {i} " + "x" * 40 for i in range(10)] + ["line 10"])
    assert f.lost_total == 0


def test_a_failing_log_costs_no_system_call_per_line(tmp_path, disk):
    clock = Clock(1_790_000_000.0)
    f, log = mail_series(tmp_path, clock)
    disk.room = 0
    log.event(MailEvent.CONNECT, client="10.0.0.1")
    log.flush()
    calls = disk.calls
    for i in range(3000):                            # several buffers' worth
        log.event(MailEvent.CONNECT, client="10.0.0.1", n=i)
    assert disk.calls == calls                       # only the timer's flush tries again
    log.flush()
    assert disk.calls == calls + 1


def test_a_header_the_disk_refused_is_written_with_the_first_lines_that_fit(tmp_path, disk):
    clock = Clock(1_790_000_000.0)
    plog = ProtocolLog(w3c=RotatingFile(tmp_path, prefix="ex", suffix=".log",
                                        rotation=Rotation.DAILY, max_size=0, keep=3,
                                        header=W3C_HEADER, clock=clock),
                       jsonl=None, clock=clock)
    disk.room = 10                                   # part of the header
    plog.record(entry())
    plog.flush()
    assert (tmp_path / "ex260921.log").read_text() == ""
    disk.room = None
    plog.record(entry(method="RCPT"))
    plog.flush()
    text = (tmp_path / "ex260921.log").read_text()
    assert text.count("#Fields:") == 1 and text.startswith("#Software:")
    assert [line.split()[8] for line in text.splitlines() if not line.startswith("#")] == [
        "MAIL", "RCPT"]


def test_protocol_logs_say_in_their_own_format_how_many_lines_they_lost(tmp_path, disk,
                                                                        monkeypatch):
    monkeypatch.setattr(files_module, "KEEP_WHILE_FAILING", 1000)
    clock = Clock(1_790_000_000.0)
    make = lambda suffix, header="": RotatingFile(
        tmp_path, prefix="ex", suffix=suffix, rotation=Rotation.DAILY, max_size=0, keep=3,
        header=header, clock=clock)
    plog = ProtocolLog(w3c=make(".log", W3C_HEADER), jsonl=make(".jsonl"), clock=clock)
    plog.record(entry())
    plog.flush()
    disk.room = 0
    for _ in range(20):
        plog.record(entry())
    plog.flush()
    disk.room = None
    plog.flush()
    w3c = (tmp_path / "ex260921.log").read_text().splitlines()
    jsonl = (tmp_path / "ex260921.jsonl").read_text().splitlines()
    remarks = [line for line in w3c if line.startswith("#Remark:")]
    assert len(remarks) == 1 and "log-lost count=" in remarks[0]
    lost_w3c = int(remarks[0].split("count=")[1].split()[0])
    assert len(w3c) - 5 + lost_w3c == 21           # 4 header lines and the remark
    notice = json.loads(jsonl[-1])
    assert notice["event"] == "log-lost" and notice["file"] == "ex260921.jsonl"
    assert len(jsonl) - 1 + notice["count"] == 21


def test_lines_of_a_day_the_disk_never_took_do_not_land_in_the_next_days_file(tmp_path, disk):
    clock = Clock(1_790_000_000.0)
    f, log = mail_series(tmp_path, clock)
    log.event(MailEvent.CONNECT, client="10.0.0.1")
    log.flush()
    disk.room = 0
    log.event(MailEvent.CONNECT, client="10.0.0.2")
    log.flush()
    clock.t += 86400
    log.event(MailEvent.CONNECT, client="10.0.0.3")   # a new day, the disk still full
    disk.room = None
    log.flush()
    log.event(MailEvent.CONNECT, client="10.0.0.4")
    log.flush()
    assert (tmp_path / "mail260921.log").read_text().splitlines() == [
        "2026-09-21T14:13:20.000000Z event=connect client=10.0.0.1"]
    assert (tmp_path / "mail260922.log").read_text().splitlines() == [
        "2026-09-22T14:13:20.000000Z event=log-lost count=2 file=mail260922.log",
        "2026-09-22T14:13:20.000000Z event=connect client=10.0.0.4"]


def test_mail_log_stamps_are_microseconds_and_at_gives_the_moment_of_the_event(tmp_path):
    clock = Clock(1_790_000_000.123456)
    log = MailLog(RotatingFile(tmp_path, prefix="mail", suffix=".log", rotation=Rotation.DAILY,
                               max_size=0, keep=3, clock=clock), clock=clock)
    log.event(MailEvent.QUEUED, at=1_790_000_000.000001, id="A")
    log.event(MailEvent.ATTEMPT, id="A")
    log.close()
    assert (tmp_path / "mail260921.log").read_text().splitlines() == [
        "2026-09-21T14:13:20.000001Z event=queued id=A",
        "2026-09-21T14:13:20.123456Z event=attempt id=A"]
