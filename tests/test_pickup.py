"""The Pickup directory ([pickup]) end to end: files written as .NET and CDO write them,
picked up by a real relay and delivered to a real downstream server; a malformed file in
badmail; a looping message in badmail; kill -9 while thousands of files are being picked up
loses and duplicates nothing; inotify and polling; the directory fsyncs, once a batch, and
a failing one that holds the batch back without losing it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from support.relay import delivery_pid, free_port, inflow_counts, start_relay, until, write_config
from downstream import Downstream

from relaywarden.server.pickup import PickupError, parse

CONFIG = """
[dns]
nameservers = ["127.0.0.1"]
port = 1
timeout = 1

[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com", "held.example"]
max_hops = 5

[delivery]
retry_schedule = [1]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."held.example"]
hold = true

[groups.apps]
networks = ["127.0.0.50/32"]
senders = ["example.com", "corp.example"]
recipient_domains = ["example.com", "example.org"]
on_violation = "badmail"

[pickup]
dir = "Pickup"
group = "apps"
poll_interval = {poll}
settle = 0.3
watch = "{watch}"

[listeners.main]
address = "127.0.0.1"
port = {main}
"""

# What System.Net.Mail writes for SmtpDeliveryMethod.SpecifiedPickupDirectory: the
# envelope first (X-Sender, one X-Receiver a recipient, Bcc recipients only there).
DOTNET = (b"X-Sender: app@example.com\r\n"
          b"X-Receiver: alice@example.com\r\n"
          b"X-Receiver: hidden@example.org\r\n"
          b"MIME-Version: 1.0\r\n"
          b"From: app@example.com\r\n"
          b"To: alice@example.com\r\n"
          b"Date: 5 Dec 2026 09:00:00 +0000\r\n"
          b"Subject: from .NET\r\n"
          b"Content-Type: text/plain; charset=us-ascii\r\n"
          b"Content-Transfer-Encoding: quoted-printable\r\n"
          b"\r\n"
          b"Hello from the pickup directory.\r\n"
          b".a line with a leading dot\r\n")

# A CDO / hand-written file: no envelope lines; LF line ends; Bcc in the header.
PLAIN = (b"From: Reports <reports@example.com>\n"
         b"To: bob@example.com, Carol <carol@example.org>\n"
         b"Cc: dave@example.com\n"
         b"Bcc: boss@example.com\n"
         b"Subject: nightly report\n"
         b"\n"
         b"All green.\n")


def config_for(tmp_path: Path, watch: str = "poll", poll: float = 0.2, **ports: int) -> Path:
    return write_config(tmp_path, CONFIG.replace("{watch}", watch).replace("{poll}", str(poll)),
                        **ports)


# Each end-to-end test both ways: woken by inotify (polling every 30 s, so a file taken
# sooner was seen through inotify) and polling every 0.2 s (as on a network share).
@pytest.fixture(params=[("inotify", 30), ("poll", 0.2)], ids=["inotify", "poll"])
def env(tmp_path, request):
    watch, poll = request.param
    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    (tmp_path / "Pickup").mkdir()
    config = config_for(tmp_path, watch, poll, down=down_port, main=main)
    relay = start_relay(config, tmp_path / "var", {"main": main})
    yield relay, down, tmp_path / "Pickup"
    relay.stop()
    down.stop()


def drop(folder: Path, name: str, data: bytes) -> Path:
    """As an application does it: write the file (the relay waits until it settles)."""
    path = folder / name
    path.write_bytes(data)
    return path


def wait_gone(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} was not picked up"
        time.sleep(0.05)


def test_a_dotnet_file_goes_to_its_x_receivers_without_the_envelope_lines(env):
    relay, down, folder = env
    path = drop(folder, "6f1c2a9e-1d2b-4c6e-9f3a-0a1b2c3d4e5f.eml", DOTNET)
    (m,) = down.wait_for(1)
    wait_gone(path)
    assert m.sender == "app@example.com"
    assert sorted(m.recipients) == ["alice@example.com", "hidden@example.org"]
    assert b"X-Sender" not in m.content and b"X-Receiver" not in m.content
    assert b"hidden@example.org" not in m.content.split(b"\r\n\r\n", 1)[1]
    head = m.content.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Received: by relay.test (relaywarden, from pickup directory ")
    assert str(folder).encode() in head
    assert m.content.endswith(b"Hello from the pickup directory.\r\n.a line with a leading dot\r\n")
    assert not list(folder.glob("*.eml")) and not list((folder / ".inflight").iterdir())


def test_a_file_without_envelope_lines_uses_the_header_and_strips_bcc(env):
    relay, down, folder = env
    drop(folder, "report.eml", PLAIN)
    (m,) = down.wait_for(1)
    assert m.sender == "reports@example.com"
    assert sorted(m.recipients) == ["bob@example.com", "boss@example.com", "carol@example.org",
                                    "dave@example.com"]
    assert b"Bcc" not in m.content and b"boss@example.com" not in m.content
    assert b"\r\nSubject: nightly report\r\n" in m.content       # LF made CRLF
    assert m.content.endswith(b"\r\n\r\nAll green.\r\n")


def test_a_malformed_file_goes_to_badmail_with_the_reason(env):
    relay, down, folder = env
    path = drop(folder, "broken.eml", b"this is not a message\r\nat all\r\n")
    wait_gone(path)
    # Gone from the folder means claimed (renamed into .inflight); it is filed after that.
    badmail = relay.data_dir / "badmail"
    deadline = time.monotonic() + 20
    while not (metas := list(badmail.glob("*.json"))):
        assert time.monotonic() < deadline, "the malformed file never reached badmail"
        time.sleep(0.05)
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    reason = meta["recipients"][0]["reason"]
    assert "pickup file 'broken.eml'" in reason and "neither a header field" in reason
    assert metas[0].with_suffix(".eml").read_bytes() == b"this is not a message\r\nat all\r\n"
    assert down.messages == []


def test_the_groups_rules_apply_a_foreign_recipient_goes_to_badmail(env):
    relay, down, folder = env
    drop(folder, "x.eml", b"X-Sender: app@example.com\r\nX-Receiver: ok@example.com\r\n"
                          b"X-Receiver: someone@gmail.test\r\nSubject: s\r\n\r\nbody\r\n")
    (m,) = down.wait_for(1)
    assert m.recipients == ["ok@example.com"]
    deadline = time.monotonic() + 20
    while not list((relay.data_dir / "badmail").glob("*.json")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (meta,) = (json.loads(p.read_text()) for p in (relay.data_dir / "badmail").glob("*.json"))
    assert meta["recipients"][0]["address"] == "someone@gmail.test"
    assert meta["recipients"][0]["rule"] == "groups.apps.recipient_domains"


def test_a_file_still_being_written_is_not_taken(env):
    relay, down, folder = env
    path = folder / "slow.eml"
    with open(path, "wb") as fh:
        fh.write(DOTNET[:60])              # half of it, then keep writing for a while
        fh.flush()
        for _ in range(8):
            time.sleep(0.15)
            os.utime(path)                 # the writer is still at it
            assert path.exists()
        fh.write(DOTNET[60:])
    (m,) = down.wait_for(1)
    assert m.content.endswith(b".a line with a leading dot\r\n")


@pytest.mark.slow
def test_kill_9_during_pickup_of_many_files_loses_and_duplicates_nothing(tmp_path):
    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    folder = tmp_path / "Pickup"
    folder.mkdir()
    config = config_for(tmp_path, down=down_port, main=main)
    total = 4000
    for n in range(total):
        (folder / f"m{n:05}.eml").write_bytes(
            b"X-Sender: app@example.com\r\nX-Receiver: r%d@example.com\r\n"
            b"Message-ID: <n%d@test>\r\nSubject: %d\r\n\r\nbody\r\n" % (n, n, n))
    old = time.time() - 10
    for p in folder.iterdir():
        os.utime(p, (old, old))
    relay = start_relay(config, tmp_path / "var", {"main": main})
    try:
        # Killed three times while files are being claimed and committed: once the folder
        # is down to a share of the files, at a moment when a batch is claimed (in
        # .inflight). Not also waiting for a delivery since the restart: on an idle
        # machine the relay claimed the rest of the files before one arrived, and the
        # round found nothing left to interrupt.
        inflight = folder / ".inflight"
        kills = 0
        for share in (0.8, 0.55, 0.3):
            deadline = time.monotonic() + 60
            while (len(os.listdir(folder)) > total * share
                   or not inflight.exists() or not os.listdir(inflight)):
                if len(os.listdir(folder)) <= 1 and not os.listdir(inflight):
                    break                  # all taken before this round could catch it
                assert time.monotonic() < deadline
                time.sleep(0.005)
            else:
                relay.stop(signal.SIGKILL)
                kills += 1
                left = len(list(folder.glob("*.eml")))
                claimed = len(os.listdir(inflight))
                print(f"killed with {left} files waiting and {claimed} claimed")
                relay = start_relay(config, tmp_path / "var", {"main": main})
        assert kills >= 2
        down.wait_for(total, timeout=90)
        # A duplicate would be a message in the queue still (a row leaves it only once its
        # delivery got its 250): once the queue is empty, nothing more can arrive.
        until(relay.messages, lambda rows: rows == [], timeout=60,
              what="messages left in the queue")
        ids = [m.content.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in down.messages]
        assert len(ids) - len(set(ids)) == 0, f"{len(ids) - len(set(ids))} duplicates"
        assert len(set(ids)) == total
        assert not list(folder.glob("*.eml")) and not list((folder / ".inflight").iterdir())
    finally:
        relay.stop()
        down.stop()


def test_claimed_files_left_by_a_crash_are_committed_once(tmp_path):
    """The two cases a kill -9 leaves in .inflight, made on purpose: a claimed file whose
    message the queue has (committed, not yet removed: removed now, not sent again) and one
    it has not (committed now, under the queue ID in its name)."""
    import smtplib

    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    folder = tmp_path / "Pickup"
    folder.mkdir()
    config = config_for(tmp_path, down=down_port, main=main)
    relay = start_relay(config, tmp_path / "var", {"main": main})
    try:
        with smtplib.SMTP("127.0.0.1", main, timeout=15) as c:
            c.sendmail("app@example.com", ["x@held.example"], b"Subject: held\r\n\r\nheld\r\n")
        (queued,) = relay.messages()
        relay.stop(signal.SIGKILL)
        inflight = folder / ".inflight"
        inflight.mkdir(exist_ok=True)
        (inflight / f"{queued['id']}~app1.eml").write_bytes(
            b"X-Sender: app@example.com\r\nX-Receiver: x@held.example\r\nSubject: held\r\n\r\nheld\r\n")
        (inflight / "0FRESHID0000~app2.eml").write_bytes(
            b"X-Sender: app@example.com\r\nX-Receiver: y@example.com\r\nSubject: new\r\n\r\nnew\r\n")
        relay = start_relay(config, tmp_path / "var", {"main": main})
        (m,) = down.wait_for(1)
        assert m.recipients == ["y@example.com"]
        deadline = time.monotonic() + 10
        while list(inflight.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while len(relay.messages()) > 1:       # the delivered one leaves the queue
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ids = [q["id"] for q in relay.messages()]
        assert ids == [queued["id"]]             # the held one, once; nothing added for app1
        # app2's message went out once: a witness sent now arrives after it, alone.
        with smtplib.SMTP("127.0.0.1", main, timeout=15) as c:
            c.sendmail("app@example.com", ["w@example.com"], b"Subject: witness\r\n\r\nw\r\n")
        got = down.wait_for(2)
        assert [m.recipients for m in got] == [["y@example.com"], ["w@example.com"]]
    finally:
        relay.stop()
        down.stop()


def test_while_delivery_is_behind_the_next_batch_waits_up_to_in_flow_delay(tmp_path):
    """Back-pressure reaches the Pickup directory too: with the delivery process stopped
    (SIGSTOP), once a picked-up message has waited half a second, the next batch waits
    in_flow_delay after its commit (counted under listener "pickup"); when delivery runs
    again, every message is delivered."""
    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    folder = tmp_path / "Pickup"
    folder.mkdir()
    config = config_for(tmp_path, "poll", 0.1, down=down_port, main=main)
    config.write_text(config.read_text().replace(
        "retry_schedule = [1]\n", 'retry_schedule = [1]\nprocess = "separate"\n'
        "in_flow_delay = 0.8\n"))
    relay = start_relay(config, tmp_path / "var", {"main": main})

    try:
        pid = delivery_pid(relay.proc.pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_gone(drop(folder, "first.eml", DOTNET))
            time.sleep(0.7)                    # the first message now waits for delivery
            later = [drop(folder, f"later{n}.eml", DOTNET) for n in range(3)]
            for path in later:
                wait_gone(path)
            delayed, seconds = until(lambda: inflow_counts(tmp_path / "var", "pickup"),
                                     lambda c: c[0] >= 1,
                                     what="no relaywarden_inflow_delayed_total for pickup")
            assert 0.6 <= seconds <= 2 * delayed, (delayed, seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        got = down.wait_for(4, timeout=30)
        assert sorted(r for m in got for r in m.recipients) == sorted(
            ["alice@example.com", "hidden@example.org"] * 4)
    finally:
        relay.stop()
        down.stop()


def test_a_message_that_loops_goes_to_badmail_with_the_reason(env):
    """relay.max_hops = 5: five Received fields pass, six are a loop (RFC 5321 6.3)."""
    relay, down, folder = env
    hop = b"Received: from a.test by b.test; 5 Dec 2026 09:00:00 +0000\r\n"
    drop(folder, "loop.eml", b"X-Sender: app@example.com\r\nX-Receiver: l@example.com\r\n"
                             + hop * 6 + b"Subject: loop\r\n\r\nround and round\r\n")
    drop(folder, "fine.eml", b"X-Sender: app@example.com\r\nX-Receiver: f@example.com\r\n"
                             + hop * 5 + b"Subject: fine\r\n\r\nonce\r\n")
    (m,) = down.wait_for(1)
    assert m.recipients == ["f@example.com"]
    deadline = time.monotonic() + 20
    while not list((relay.data_dir / "badmail").glob("*.json")):
        assert time.monotonic() < deadline, "the looping message is not in badmail"
        time.sleep(0.1)
    (path,) = (relay.data_dir / "badmail").glob("*.json")
    (rcpt,) = json.loads(path.read_text())["recipients"]
    assert rcpt["address"] == "l@example.com" and rcpt["rule"] == "relay.max_hops"
    assert rcpt["reason"] == "loop detected (5.4.6): 6 Received headers"
    assert b"round and round" in path.with_suffix(".eml").read_bytes()
    # Not delivered as well: a witness dropped now, through the same folder, arrives
    # alone (the looping file was taken and filed before it).
    drop(folder, "witness.eml", b"X-Sender: app@example.com\r\nX-Receiver: w@example.com\r\n"
                                b"Subject: witness\r\n\r\nwitness\r\n")
    got = down.wait_for(2)
    assert [m.recipients for m in got] == [["f@example.com"], ["w@example.com"]]
    assert not list(folder.glob("*.eml"))


def test_auto_watches_a_local_folder_with_inotify(tmp_path):
    """watch = "auto" on a local disk: inotify. Polled every 30 s, a file written after the
    start is taken within its settle time all the same (polling alone would wait 30 s)."""
    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    folder = tmp_path / "Pickup"
    folder.mkdir()
    relay = start_relay(config_for(tmp_path, "auto", 30, down=down_port, main=main),
                        tmp_path / "var", {"main": main})
    try:
        time.sleep(0.5)                    # the first look at the folder is over
        start = time.monotonic()
        drop(folder, "now.eml", DOTNET)
        down.wait_for(1, timeout=10)
        took = time.monotonic() - start
        assert took < 5, f"taken after {took:.1f} s"
    finally:
        relay.stop()
        down.stop()
    err = relay.proc.stderr.read()
    assert f"pickup: {folder}, inotify ({folder} is on a local file system (" in err


def test_the_relay_says_when_it_polls(tmp_path):
    down_port, main = free_port(), free_port()
    (tmp_path / "Pickup").mkdir()
    relay = start_relay(config_for(tmp_path, "poll", 1, down=down_port, main=main),
                        tmp_path / "var", {"main": main})
    relay.stop()
    assert f'pickup: {tmp_path / "Pickup"}, poll (pickup.watch = "poll")' in relay.proc.stderr.read()


# ------------------------------------------------- directory fsyncs, in one process

def _in_process(tmp_path):
    from faultfs import FaultyFiles
    from test_disk_faults import InProcessRelay

    main = free_port()
    (tmp_path / "Pickup").mkdir(exist_ok=True)
    config = config_for(tmp_path, "poll", 0.1, down=free_port(), main=main)
    config.write_text(config.read_text().replace("[delivery]\n", '[delivery]\nprocess = "inline"\n'))
    files = FaultyFiles()
    return InProcessRelay(config, files), files, tmp_path / "Pickup"


def _wait(what, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_directories_are_fsynced_once_a_batch_not_once_a_file(tmp_path):
    from relaywarden.server.pickup import BATCH

    relay, files, folder = _in_process(tmp_path)
    total = 2 * BATCH + 100                # three batches
    old = time.time() - 10
    for n in range(total):
        path = folder / f"m{n:05}.eml"
        path.write_bytes(b"X-Sender: app@example.com\r\nX-Receiver: r%d@held.example\r\n"
                         b"Subject: %d\r\n\r\nheld\r\n" % (n, n))
        os.utime(path, (old, old))
    # Three batches only if every file has settled when the relay first looks: utime sets
    # the ctime to now, and writing 1,100 files on a loaded machine takes longer than the
    # settle time (CI once saw four rounds: the last files were claimed a round later).
    time.sleep(0.3 + 0.2)
    relay.start()
    try:
        _wait(lambda: relay.queued() == total)
        _wait(lambda: not os.listdir(folder / ".inflight"))
        # The last batch's fsync after its unlinks may still be under way: a witness file
        # dropped now is a batch of its own, in a later round (its settle time lets idle
        # rounds go by first), so its three fsyncs come after all of the others.
        witness = drop(folder, "witness.eml", b"X-Sender: app@example.com\r\n"
                                              b"X-Receiver: w@held.example\r\n"
                                              b"Subject: witness\r\n\r\nheld\r\n")
        _wait(lambda: relay.queued() == total + 1 and not witness.exists())
        _wait(lambda: not os.listdir(folder / ".inflight"))
        _wait(lambda: files.calls.get("fsync_dir", 0) >= (3 + 1) * 3)
        # Each batch: the claims (Pickup and .inflight) before the commit, .inflight after
        # the unlinks. Nothing else in this run fsyncs a directory (small bodies, idle rounds).
        assert files.calls.get("fsync_dir") == (3 + 1) * 3
        assert relay.queued() == total + 1 and not list(folder.glob("*.eml"))
    finally:
        relay.stop()


@pytest.mark.parametrize("code", ["EIO", "EINVAL"])
def test_a_failing_directory_fsync_holds_the_batch_back_and_loses_nothing(tmp_path, code):
    """EIO: the claims may not be durable, nothing is committed until a fsync works (the
    files wait in .inflight). EINVAL (a file system that cannot fsync a directory, as some
    network shares): pickup goes on."""
    import errno

    relay, files, folder = _in_process(tmp_path)
    relay.start()
    try:
        files.fail_fsync_dir = OSError(getattr(errno, code), f"injected {code}")
        for n in range(3):
            drop(folder, f"f{n}.eml", b"X-Sender: app@example.com\r\n"
                                      b"X-Receiver: r%d@held.example\r\n"
                                      b"Subject: s\r\n\r\nbody\r\n" % n)
        if code == "EIO":
            _wait(lambda: len(os.listdir(folder / ".inflight")) == 3)
            # Rounds go by (each one tries the fsync again, and counts): still nothing
            # committed.
            tried = files.calls["fsync_dir"]
            _wait(lambda: files.calls["fsync_dir"] >= tried + 3)
            assert relay.queued() == 0 and len(os.listdir(folder / ".inflight")) == 3
            files.fail_fsync_dir = None
        _wait(lambda: relay.queued() == 3)
        _wait(lambda: not os.listdir(folder / ".inflight"))
        # No file is left to commit again: a second commit of one would have come before
        # its unlink, so the count is final now.
        assert relay.queued() == 3 and not list(folder.glob("*.eml"))
    finally:
        relay.stop()


# ------------------------------------------------------------------ pure parsing


@pytest.mark.parametrize("data, says", [
    (b"", "empty"),
    (b"Subject: x\r\n\r\nbody\r\n", "no X-Sender line and no From"),
    (b"From: a@example.com\r\nSubject: x\r\n\r\n", "no recipients"),
    (b"X-Sender: a@example.com\r\nX-Receiver: not an address\r\nSubject: x\r\n\r\n",
     "X-Receiver: 'not an address' is not an address"),
    (b"From: a@example.com\r\nTo: b@example.com\r\nno colon here\r\n\r\n", "line 3"),
])
def test_unparsable_files_say_why(data, says):
    with pytest.raises(PickupError, match=says):
        parse(data)


def test_too_large_is_refused_by_relay_max_message_size():
    with pytest.raises(PickupError, match="relay.max_message_size"):
        parse(DOTNET, max_size=100)


def test_a_null_x_sender_is_the_null_reverse_path():
    m = parse(b"X-Sender: <>\r\nX-Receiver: a@example.com\r\nSubject: x\r\n\r\nb\r\n")
    assert m.sender is None and [str(r) for r in m.recipients] == ["a@example.com"]


# ------------------------------------------------------------------ choosing the watch

MOUNTINFO = r"""27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /srv/share rw,relatime - cifs //fileserver/apps rw,vers=3.1.1
41 40 0:41 / /srv/share/local rw,relatime - xfs /dev/vdb rw
42 27 0:42 / /mnt/nfs\040home rw,relatime - nfs4 server:/home rw
43 27 0:43 / /mnt/remote rw,relatime - fuse.sshfs user@host: rw
"""


@pytest.mark.parametrize("folder, kind", [
    ("/var/spool/Pickup", "ext4"),
    ("/srv/share/Pickup", "cifs"),
    ("/srv/share/local/Pickup", "xfs"),           # a local disk mounted inside the share
    ("/srv/shared/Pickup", "ext4"),               # a name that only starts like the share
    ("/mnt/nfs home/Pickup", "nfs4"),             # mountinfo writes the space as \040
    ("/mnt/remote/Pickup", "fuse.sshfs"),
])
def test_the_file_system_of_a_folder_is_read_from_mountinfo(folder, kind):
    from relaywarden.server.dirwatch import fs_type

    assert fs_type(MOUNTINFO, Path(folder)) == kind


def test_auto_polls_a_network_share_and_watches_a_local_disk():
    from relaywarden.server.dirwatch import choose

    assert choose("auto", Path("/srv/share/Pickup"), MOUNTINFO) == (
        "poll", "/srv/share/Pickup is on a network file system (cifs)")
    assert choose("auto", Path("/mnt/remote/Pickup"), MOUNTINFO)[0] == "poll"
    assert choose("auto", Path("/srv/share/local/P"), MOUNTINFO)[0] == "inotify"
    assert choose("auto", Path("/var/spool/Pickup"), MOUNTINFO)[0] == "inotify"
    assert choose("poll", Path("/var/spool/Pickup"), MOUNTINFO)[0] == "poll"
    # "inotify" on a share is the admin's choice (a share this machine alone writes to).
    assert choose("inotify", Path("/srv/share/Pickup"), MOUNTINFO)[0] == "inotify"


def test_config_check_names_pickup_watch(tmp_path):
    from relaywarden.config.load import ConfigError, load_config

    (tmp_path / "Pickup").mkdir()
    config = tmp_path / "relay.toml"
    config.write_text('[pickup]\ndir = "Pickup"\nwatch = "sometimes"\n'
                      '[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n')
    with pytest.raises(ConfigError, match=r"pickup\.watch"):
        load_config(config)
