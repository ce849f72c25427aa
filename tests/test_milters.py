"""Milters through the real interface: swaks sends to the running relay, which asks a real
rspamd (its proxy worker in milter mode, started here on loopback) or a deliberately
broken milter before it answers the final dot, and delivers to a real downstream server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.relay import free_port, start_relay, write_config
from debian import apt_install
from downstream import Downstream

# rspamd's configuration and start-up are shared with the benchmark (bench/rspamd_milter.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import rspamd_milter  # noqa: E402

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

CONFIG = """
[relay]
hostname = "relay.test"
hosted_domains = ["example.com"]
min_free_space = 0

[badmail]
notify = "admin@example.com"
notify_interval = 1

[delivery]
tls = "none"

[dns]
nameservers = ["127.0.0.1"]
port = {noport}
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[milters.filter]
socket = "{socket}"
connect_timeout = 2
command_timeout = 1
eom_timeout = 5
on_failure = "{on_failure}"

[listeners.main]
address = "127.0.0.1"
port = {main}
milters = ["filter"]
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""

def _rspamd() -> str:
    path = rspamd_milter.binary()
    if path is None:
        stderr = apt_install(["rspamd"])
        path = rspamd_milter.binary()
        assert path, f"rspamd is not installed and apt-get could not install it: {stderr}"
    return path


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    """rspamd's milter on a loopback port (bench/rspamd_milter.py, the benchmark's too); its
    milter_headers module adds X-Spamd-Result and X-Rspamd-Queue-Id (for loopback clients
    too: skip_local = false). Its DNS goes to a dead loopback port."""
    server = rspamd_milter.Rspamd(tmp_path_factory.mktemp("rspamd"), rspamd=_rspamd())
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


class Site:
    def __init__(self, tmp_path: Path, milter: int | str, on_failure: str = "tempfail") -> None:
        """``milter``: a loopback port, or a milter socket ("unix:/path")."""
        self.ports = {"main": free_port()}
        self.down = Downstream(free_port()).start()
        socket_text = milter if isinstance(milter, str) else f"inet:127.0.0.1:{milter}"
        self.config = write_config(
            tmp_path, CONFIG.replace("{on_failure}", on_failure).replace("{socket}", socket_text),
            main=self.ports["main"], down=self.down.port, noport=free_port())
        self.data_dir = tmp_path / "var"
        self.relay = start_relay(self.config, self.data_dir, self.ports)

    def swaks(self, to: str = "user@gmail.test", body: str = "Hello, a clean message.",
              *extra: str) -> subprocess.CompletedProcess:
        args = [shutil.which("swaks"), "--server", "127.0.0.1", "--port",
                str(self.ports["main"]), "--from", "app@example.com", "--to", to,
                "--helo", "app.test", "--body", body, *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def maillog(self) -> str:
        self.relay.flush_logs()
        return self.relay.logs("mail", ".log")


@pytest.fixture
def make_site(tmp_path):
    made = []

    def make(port: int | str, on_failure: str = "tempfail") -> Site:
        where = tmp_path / str(len(made))
        where.mkdir()
        made.append(Site(where, port, on_failure))
        return made[-1]
    yield make
    for s in made:
        s.relay.stop()
        s.down.stop()


def _message(smtp: smtplib.SMTP, body: str, to: str = "user@gmail.test") -> tuple[int, str]:
    """One more message in an SMTP session: the reply to its final dot."""
    smtp.mail("app@example.com")
    smtp.rcpt(to)
    code, text = smtp.data(f"From: app@example.com\r\nTo: {to}\r\nSubject: test\r\n\r\n"
                           f"{body}\r\n")
    return code, text.decode()


def _milter_links(port: int) -> set[int]:
    """The local ports of the established loopback TCP connections to ``port`` (the
    relay's connections to a milter there), from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.rpartition(":")[2], 16) == port:
            found.add(int(local.rpartition(":")[2], 16))
    return found


# --- rspamd -----------------------------------------------------------------------------

def test_rspamd_refuses_gtube_with_its_own_reply(make_site, rspamd):
    site = make_site(rspamd)
    out = site.swaks(body=GTUBE)
    assert out.returncode != 0
    # rspamd's SMFIR_REPLYCODE, passed on as it is, before anything is queued.
    assert "<** 554 5.7.1 Gtube pattern" in out.stdout, out.stdout
    # The refusal is logged, and the spool file removed, before the reply is sent.
    site.relay.wait_log(r"event=reject stage=data .*code=554 .*rule=milters\.filter")
    assert site.relay.messages() == []
    assert list((site.data_dir / "tmp").iterdir()) == []


def test_rspamd_adds_its_headers_to_a_clean_message(make_site, rspamd):
    site = make_site(rspamd)
    out = site.swaks()
    assert out.returncode == 0, out.stdout
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    [msg] = site.down.wait_for(1)
    head = msg.content.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"^X-Spamd-Result: default: False \[", head, re.M), head
    # rspamd was given the queue id as macro i.
    assert re.search(rf"^X-Rspamd-Queue-Id: {qid}\r?$", head, re.M), head
    assert b"Hello, a clean message." in msg.content


def test_rspamd_scans_each_message_of_a_session_over_one_connection(make_site, rspamd):
    """Three messages in one SMTP session: rspamd scans each (its own queue id in its
    headers), refuses the GTUBE one in the middle, and it is all one milter connection."""
    site = make_site(rspamd)
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("app.test")
        code, first = _message(smtp, "A first clean message.")
        assert code == 250, first
        links = _milter_links(rspamd)
        assert len(links) == 1, links                      # kept open between messages
        code, text = _message(smtp, GTUBE)
        assert (code, text.split(" ", 1)[0]) == (554, "5.7.1"), text
        assert "Gtube pattern" in text
        code, third = _message(smtp, "A third clean message.")
        assert code == 250, third
        assert _milter_links(rspamd) == links              # the same connection throughout
    qids = [re.search(r"queued as (\S+)", t).group(1) for t in (first, third)]
    scanned = {}
    for msg in site.down.wait_for(2):
        head = msg.content.split(b"\r\n\r\n", 1)[0].decode()
        assert re.search(r"^X-Spamd-Result: default: False \[", head, re.M), head
        scanned[re.search(r"^X-Rspamd-Queue-Id: (\S+?)\r?$", head, re.M).group(1)] = msg
    # Each clean message scanned as itself (its queue id, macro i, in its own headers).
    assert sorted(scanned) == sorted(qids)
    assert b"A first clean message." in scanned[qids[0]].content
    assert b"A third clean message." in scanned[qids[1]].content
    assert len(site.relay.messages()) <= 2                 # the GTUBE one was never queued
    site.relay.wait_log(r"event=reject stage=data .*code=554 .*rule=milters\.filter")


# --- a broken milter ------------------------------------------------------------------------

class BrokenMilter:
    """A milter that negotiates, then misbehaves: "close" (closes the connection at the
    first body chunk), "garbage" (answers nonsense), "silent" (never answers).

    "quarantine" is a working scripted milter: it changes and inserts headers and
    quarantines the message. Any other mode ("record") answers every step "continue";
    "close_after_eom" also closes the connection right after its end-of-message verdict,
    "close_at_next" when the next message begins (without a word about it);
    "reject_connect" refuses at connect, with its own reply.

    ``conversations``: the commands of each connection it accepted, in order (so their
    number is the number of connections); ``changed`` is notified at each command."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.seen: list[bytes] = []
        self.conversations: list[list[bytes]] = []
        self.helos: list[bytes] = []                   # SMFIC_HELO's data, in order
        self.changed = threading.Condition()
        # SMFIC_MACRO as received: (the command it goes with, {name: value}), in order.
        self.macros: list[tuple[bytes, dict[str, str]]] = []
        self.threads: list[threading.Thread] = []
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _read(conn: socket.socket) -> tuple[bytes, bytes] | None:
        head = b""
        while len(head) < 4:
            more = conn.recv(4 - len(head))
            if not more:
                return None
            head += more
        (length,) = struct.unpack("!I", head)
        data = b""
        while len(data) < length:
            more = conn.recv(length - len(data))
            if not more:
                return None
            data += more
        return data[:1], data[1:]

    @staticmethod
    def _send(conn: socket.socket, cmd: bytes, data: bytes = b"") -> None:
        conn.sendall(struct.pack("!I", len(data) + 1) + cmd + data)

    def wait(self, predicate, timeout: float = 10) -> None:
        """Until ``predicate()`` holds (checked at each command the milter gets)."""
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), self.conversations

    def _handle(self, conn: socket.socket) -> None:
        mine: list[bytes] = []
        with self.changed:
            self.conversations.append(mine)
        with conn:
            while True:
                got = self._read(conn)
                if got is None:
                    return
                cmd, data = got
                with self.changed:
                    self.seen.append(cmd)
                    mine.append(cmd)
                    self.changed.notify_all()
                if self.mode == "close_at_next" and b"E" in mine and cmd != b"E":
                    return                                # the next message: no answer
                if cmd == b"H":
                    self.helos.append(data)
                if cmd == b"O":
                    if self.mode == "garbage":
                        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + os.urandom(64))
                        continue
                    # version 6, add + change headers, quarantine (+ body and envelope for
                    # "rewrite"), every step answered
                    actions = 0xFF if self.mode == "rewrite" else 0x31
                    self._send(conn, b"O", struct.pack("!III", 6, actions, 0))
                elif cmd in (b"D",):
                    parts = data[1:].split(b"\0")[:-1]
                    self.macros.append((data[:1], {k.decode(): v.decode() for k, v in
                                                   zip(parts[::2], parts[1::2])}))
                    continue                              # macros get no reply
                elif cmd == b"C" and self.mode == "reject_connect":
                    self._send(conn, b"y", b"550 5.7.1 Not from you\0")
                elif cmd == b"B" and self.mode == "close":
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                elif cmd == b"B" and self.mode == "silent":
                    time.sleep(30)
                    return
                elif cmd == b"E":
                    if self.mode == "rewrite":
                        self._send(conn, b"e", b"<bounces@example.com>\0")
                        self._send(conn, b"+", b"<other@gmail.test>\0")
                        self._send(conn, b"-", b"<user@gmail.test>\0")
                        self._send(conn, b"b", b"replaced ")
                        self._send(conn, b"b", b"body\n")
                    if self.mode == "quarantine":
                        self._send(conn, b"m", struct.pack("!I", 1) + b"Subject\0[SPAM] milter test\0")
                        self._send(conn, b"i", struct.pack("!I", 0) + b"X-Filtered\0yes\n\tfolded\0")
                        self._send(conn, b"q", b"suspicious content\0")
                    self._send(conn, b"c")
                    if self.mode == "close_after_eom":
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                elif cmd == b"A":
                    continue                              # abort gets no reply
                elif cmd == b"Q":
                    return
                else:
                    self._send(conn, b"c")

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()


@pytest.fixture
def broken():
    made = []

    def make(mode: str) -> BrokenMilter:
        made.append(BrokenMilter(mode))
        return made[-1]
    yield make
    for m in made:
        m.stop()


@pytest.mark.parametrize("mode", ["close", "garbage", "silent"])
def test_a_broken_milter_tempfails_the_message(make_site, broken, mode):
    milter = broken(mode)
    site = make_site(milter.port, "tempfail")
    started = time.monotonic()
    out = site.swaks()
    assert out.returncode != 0
    assert "<** 451 4.7.1 Content filter unavailable, try again later" in out.stdout, out.stdout
    if mode == "silent":
        assert time.monotonic() - started < 10          # command_timeout = 1, not forever
    # The refusal is logged, and the spool file removed, before the reply is sent.
    site.relay.wait_log(r"event=reject stage=data .*code=451 .*rule=milters\.filter")
    assert site.relay.messages() == []
    assert list((site.data_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize("mode", ["close", "garbage", "silent"])
def test_a_broken_milter_with_on_failure_accept_lets_mail_through(make_site, broken, mode):
    milter = broken(mode)
    site = make_site(milter.port, "accept")
    out = site.swaks()
    assert out.returncode == 0, out.stdout
    [msg] = site.down.wait_for(1)
    assert b"Hello, a clean message." in msg.content
    assert "on_failure = accept" in site.maillog()


def test_a_milter_that_is_down_is_a_tempfail(make_site):
    site = make_site(free_port(), "tempfail")          # nobody listens there
    out = site.swaks()
    assert "<** 451 4.7.1 Content filter unavailable" in out.stdout, out.stdout
    assert site.relay.messages() == []


def test_quarantine_and_header_changes_go_to_badmail(make_site, broken):
    milter = broken("quarantine")
    site = make_site(milter.port)
    out = site.swaks("boss@example.com", "quarantine me", "--header", "Subject: hello")
    assert out.returncode == 0, out.stdout                # accepted: 250, then kept
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    [notice] = site.down.wait_for(1)                      # the admin's notice, nothing else
    assert notice.recipients == ["admin@example.com"]
    meta = site.data_dir / "badmail" / f"{qid}.json"
    deadline = time.monotonic() + 10
    while not meta.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    info = json.loads(meta.read_text())
    assert info["recipients"][0]["reason"] == "quarantined by milter filter: suspicious content"
    eml = (site.data_dir / "badmail" / f"{qid}.eml").read_bytes()
    head = eml.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"X-Filtered: yes\r\n\tfolded\r\nReceived: "), head
    assert b"\r\nSubject: [SPAM] milter test\r\n" in head and b"Subject: hello" not in head
    # The whole conversation, in order (macros before their commands).
    cmds = b"".join(milter.seen)
    assert re.fullmatch(rb"ODCHDMDRDTL+DNB+DEQ?", cmds), cmds


def test_each_stage_gets_the_macros_the_common_milters_need(make_site, broken):
    milter = broken("record")
    site = make_site(milter.port)
    out = site.swaks("user@gmail.test")
    assert out.returncode == 0, out.stdout
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    stages = dict(milter.macros)
    # One SMFIC_MACRO before each of connect, mail, rcpt, data, eoh and eom; none before
    # helo: its macros are the TLS ones ({tls_version}, {cipher}, {cipher_bits}) and this
    # session has no TLS.
    assert [stage for stage, _ in milter.macros] == [b"C", b"M", b"R", b"T", b"N", b"E"]
    connect = stages[b"C"]
    assert connect["j"] == "relay.test" and connect["{daemon_name}"] == "main"
    assert connect["{client_addr}"] == "127.0.0.1" and connect["{client_name}"] == "[127.0.0.1]"
    assert connect["_"] == "[127.0.0.1] [127.0.0.1]" and int(connect["{client_port}"]) > 0
    assert stages[b"M"] == {"i": qid, "{mail_addr}": "app@example.com",
                            "{mail_host}": "example.com", "{mail_mailer}": "esmtp"}
    assert stages[b"R"] == {"{rcpt_addr}": "user@gmail.test", "{rcpt_host}": "gmail.test",
                            "{rcpt_mailer}": "esmtp"}
    assert stages[b"T"] == stages[b"N"] == stages[b"E"] == {"i": qid}


def test_envelope_and_body_changes_are_applied_before_the_commit(make_site, broken):
    milter = broken("rewrite")
    site = make_site(milter.port)
    out = site.swaks("user@gmail.test", "the original body")
    assert out.returncode == 0, out.stdout
    [msg] = site.down.wait_for(1)
    assert msg.sender == "bounces@example.com"
    assert msg.recipients == ["other@gmail.test"]
    assert msg.content.endswith(b"\r\n\r\nreplaced body\r\n"), msg.content
    assert b"the original body" not in msg.content


# --- one milter connection per SMTP session -------------------------------------------------

def test_the_messages_of_a_session_share_one_milter_connection(make_site, broken):
    milter = broken("record")
    site = make_site(milter.port)
    qids = []
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("app.test")
        for n in range(3):
            code, text = _message(smtp, f"message {n}")
            assert code == 250, text
            qids.append(re.search(r"queued as (\S+)", text).group(1))
        assert len(milter.conversations) == 1               # still open, before QUIT
    # The session's end is the milter connection's end: SMFIC_QUIT.
    milter.wait(lambda: milter.conversations[0][-1:] == [b"Q"])
    [talk] = milter.conversations
    # Negotiation, connect and helo once; each message from MAIL to end of message, the
    # next one after SMFIC_ABORT (as Postfix sends it after each message); then QUIT.
    cmds = b"".join(talk)
    assert re.fullmatch(rb"ODCH(DMDRDTL+DNB+DE)(A(DMDRDTL+DNB+DE)){2}Q", cmds), cmds
    # Each message with its own queue id (macro i with MAIL).
    assert [m["i"] for stage, m in milter.macros if stage == b"M"] == qids
    assert len(site.down.wait_for(3)) == 3


def test_a_session_that_ends_without_quit_still_quits_the_milter(make_site, broken):
    milter = broken("record")
    site = make_site(milter.port)
    smtp = smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30)
    smtp.ehlo("app.test")
    code, text = _message(smtp, "one message")
    assert code == 250, text
    smtp.close()                                # the client goes away without QUIT
    milter.wait(lambda: milter.conversations[0][-1:] == [b"Q"])
    assert len(milter.conversations) == 1


def test_a_refusal_at_connect_stands_for_every_message_of_the_session(make_site, broken):
    milter = broken("reject_connect")
    site = make_site(milter.port)
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("app.test")
        replies = [_message(smtp, f"message {n}") for n in range(2)]
    assert replies == [(550, "5.7.1 Not from you")] * 2, replies
    milter.wait(lambda: milter.conversations[0][-1:] == [b"Q"])
    # Asked once, at connect; not asked again about either message.
    assert [b"".join(talk) for talk in milter.conversations] == [b"ODCQ"]
    assert site.relay.messages() == []


def test_a_new_ehlo_gets_a_new_milter_connection(make_site, broken):
    """The connection's HELO (and TLS) facts are the session's at its first message: after
    a new EHLO the next message gets a connection that was told the new name."""
    milter = broken("record")
    site = make_site(milter.port)
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("first.test")
        assert _message(smtp, "one")[0] == 250
        smtp.ehlo("second.test")
        assert _message(smtp, "two")[0] == 250
    milter.wait(lambda: len(milter.conversations) == 2
                and all(talk[-1:] == [b"Q"] for talk in milter.conversations))
    for talk in milter.conversations:
        assert re.fullmatch(rb"ODCHDMDRDTL+DNB+DEQ", b"".join(talk)), talk
    assert milter.helos == [b"first.test\0", b"second.test\0"]
    assert len(site.down.wait_for(2)) == 2


@pytest.mark.parametrize("mode", ["close_after_eom", "close_at_next"])
def test_a_milter_that_closes_between_messages_gets_a_new_connection(make_site, broken, mode):
    """The milter ends its connection after a message: right after its verdict, or when
    the next message begins (before it answers any of it). The next message goes over a
    new connection and passes; nothing is refused or passed unfiltered."""
    milter = broken(mode)
    site = make_site(milter.port, "tempfail")
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("app.test")
        for n in range(2):
            code, text = _message(smtp, f"message {n}")
            assert code == 250, text
    assert len(site.down.wait_for(2)) == 2
    assert len(milter.conversations) == 2
    for talk in milter.conversations:                       # each saw a whole message
        assert re.match(rb"ODCHDMDRDTL+DNB+DE", b"".join(talk)), talk
    if mode == "close_after_eom":
        # Its end was seen before the next message: that one never went to it.
        assert milter.conversations[0][-1] == b"E", milter.conversations
    else:
        # The next message began on it (SMFIC_ABORT first), then went again on a new one.
        assert milter.conversations[0][-1] == b"A", milter.conversations
    assert "stage=milter" not in site.maillog() and "event=reject" not in site.maillog()


# --- ClamAV: clamd with a local test signature, clamav-milter in front of it -----------------

# The EICAR test file (eicar.org), built here so that no file in the tree is "infected".
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-" + "STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


# As root, clamd and clamav-milter would switch to the clamav user: they stay root.
AS_ROOT = "User root\n" if os.geteuid() == 0 else ""


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:              # clamav-milter may not heed SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _sbin(name: str, package: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        stderr = apt_install([package])
        path = shutil.which(name, path="/usr/sbin:/usr/bin")
        assert path, f"{name} is not installed and apt-get could not install {package}: {stderr}"
    return path


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} exited: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    """clamd on a unix socket, with one signature: a body signature (.ndb, any file
    type) for the EICAR string. No signature download."""
    binary = _sbin("clamd", "clamav-daemon")
    root = tmp_path_factory.mktemp("clamd")
    (root / "db").mkdir()
    (root / "db" / "local.ndb").write_text(
        "Relaywarden.Test.EICAR:0:*:" + EICAR.encode().hex() + "\n")
    sock = root / "clamd.sock"
    (root / "clamd.conf").write_text(
        f"LocalSocket {sock}\nDatabaseDirectory {root / 'db'}\nForeground yes\n{AS_ROOT}"
        f"TemporaryDirectory {root}\nPidFile {root / 'clamd.pid'}\n")
    proc = subprocess.Popen([binary, "-c", str(root / "clamd.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(proc, sock.exists, "clamd")
        yield sock
    finally:
        _stop(proc)


@pytest.fixture
def clamav_milter(clamd, tmp_path):
    """clamav-milter on a loopback port, in front of clamd; on_infected as asked."""
    binary = _sbin("clamav-milter", "clamav-milter")
    made = []

    def start(on_infected: str, *extra: str, unix: bool = False) -> int | str:
        """The port it listens on, or with unix = True its socket as "unix:/path"."""
        port = free_port()
        path = tmp_path / f"milter-{port}.sock"
        conf = tmp_path / f"clamav-milter-{port}.conf"
        conf.write_text("\n".join([
            f"MilterSocket unix:{path}" if unix else f"MilterSocket inet:{port}@127.0.0.1",
            f"ClamdSocket unix:{clamd}",
            "Foreground yes", AS_ROOT, f"OnInfected {on_infected}", "AddHeader Replace",
            f"TemporaryDirectory {tmp_path}", f"PidFile {tmp_path / f'milter-{port}.pid'}",
            *extra]) + "\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        made.append(proc)

        def listening() -> bool:
            if unix:
                return path.exists()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        _wait_for(proc, listening, "clamav-milter")
        return f"unix:{path}" if unix else port
    yield start
    for proc in made:
        _stop(proc)


@pytest.mark.parametrize("unix", [False, True], ids=["inet", "unix"])
def test_clamav_refuses_eicar_and_passes_clean_mail_with_its_headers(make_site, clamav_milter,
                                                                     unix):
    site = make_site(clamav_milter("Reject", 'RejectMsg "Virus found: %v"', unix=unix))
    out = site.swaks(body=EICAR)
    assert out.returncode != 0
    # clamav-milter's own reply (SMFIR_REPLYCODE) with the signature's name.
    assert "<** 550 5.7.1 Virus found: Relaywarden.Test.EICAR" in out.stdout, out.stdout
    out = site.swaks()
    assert out.returncode == 0, out.stdout
    [msg] = site.down.wait_for(1)
    head = msg.content.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"^X-Virus-Status: Clean\r?$", head, re.M), head
    assert re.search(r"^X-Virus-Scanned: clamav-milter ", head, re.M), head
    assert len(site.relay.messages()) <= 1          # only the clean one was queued


def test_clamav_refuses_eicar_between_clean_messages_of_one_session(make_site, clamav_milter):
    """clamav-milter (libmilter) takes the session's next message on the same connection
    after a refusal at end of message."""
    port = clamav_milter("Reject", 'RejectMsg "Virus found: %v"')
    site = make_site(port)
    with smtplib.SMTP("127.0.0.1", site.ports["main"], timeout=30) as smtp:
        smtp.ehlo("app.test")
        replies = [_message(smtp, body) for body in ("clean one", EICAR, "clean two")]
        links = _milter_links(port)
    assert [code for code, _ in replies] == [250, 550, 250], replies
    assert replies[1][1].startswith("5.7.1 Virus found: Relaywarden.Test.EICAR"), replies
    assert len(links) == 1, links
    msgs = site.down.wait_for(2)
    for msg in msgs:
        assert re.search(rb"^X-Virus-Status: Clean\r?$", msg.content, re.M), msg.content[:400]
    assert sorted(b"clean one" in m.content for m in msgs) == [False, True]


def test_clamav_quarantine_puts_the_message_in_badmail(make_site, clamav_milter):
    site = make_site(clamav_milter("Quarantine"))
    out = site.swaks("boss@example.com", EICAR)
    assert out.returncode == 0, out.stdout           # accepted (250), kept from the recipient
    qid = re.search(r"queued as (\S+)", out.stdout).group(1)
    [notice] = site.down.wait_for(1)
    assert notice.recipients == ["admin@example.com"]
    meta = site.data_dir / "badmail" / f"{qid}.json"
    deadline = time.monotonic() + 10
    while not meta.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    info = json.loads(meta.read_text())
    assert info["recipients"][0]["reason"].startswith("quarantined by milter filter: "), info
    eml = (site.data_dir / "badmail" / f"{qid}.eml").read_bytes()
    # Local signatures are "UNOFFICIAL" to ClamAV.
    assert b"X-Virus-Status: Infected (Relaywarden.Test.EICAR.UNOFFICIAL)" in eml, eml[:600]
