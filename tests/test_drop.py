"""The Drop directory (a route ``next_hops = ["drop:/path"]``) end to end: SMTP in, an .eml
with IIS's X-Sender / X-Receiver lines out, never a partial file; a folder that cannot be
written defers and the message is written once it can; a Drop folder that feeds the Pickup
folder is a loop stopped by relay.max_hops; config check names the key."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import smtplib
import threading
import time
from pathlib import Path

import pytest

from support.relay import free_port, start_relay, until, write_config
from downstream import Downstream

CONFIG = """
[dns]
nameservers = ["127.0.0.1"]
port = 1
timeout = 1

[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["local.example"]
max_hops = 4

[delivery]
retry_schedule = [1]

[routes."*"]
next_hops = ["[127.0.0.1]:{down}"]

[routes."local.example"]
next_hops = ["drop:{drop}"]

[listeners.main]
address = "127.0.0.1"
port = {main}
[listeners.main.relay]
networks = ["127.0.0.1/32"]
"""


def _config(tmp_path: Path, drop: Path, extra: str = "", **ports: int) -> Path:
    return write_config(tmp_path, CONFIG.replace("{drop}", str(drop)) + extra, **ports)


@pytest.fixture
def env(tmp_path):
    down_port, main = free_port(), free_port()
    down = Downstream(down_port).start()
    drop = tmp_path / "Drop"
    drop.mkdir()
    relay = start_relay(_config(tmp_path, drop, down=down_port, main=main),
                        tmp_path / "var", {"main": main})
    yield relay, down, drop, main
    relay.stop()
    down.stop()


def _wait(what, timeout: float = 20, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_smtp_in_eml_out_with_x_receiver_lines_and_never_a_partial_file(env):
    relay, down, drop, main = env
    # Large enough to be stored as a file and copied in chunks: a writer takes a while.
    lines = b"".join(b"line %07d of the body, the same length each time.\r\n" % n
                     for n in range(60_000))
    content = (b"From: app@corp.example\r\nTo: a@local.example\r\nSubject: to the drop\r\n"
               b"\r\n" + lines + b"the end\r\n")
    seen: set[str] = set()
    partial: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        # What an application reading the Drop folder sees, as often as it can look.
        while not stop.is_set():
            for name in os.listdir(drop):
                if name.endswith(".eml"):
                    data = (drop / name).read_bytes()
                    seen.add(name)
                    if not data.endswith(b"the end\r\n"):
                        partial.append(name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with smtplib.SMTP("127.0.0.1", main, timeout=30) as c:
            c.sendmail("app@corp.example", ["a@local.example", "B@local.example"], content)
        _wait(lambda: seen, why="nothing in the Drop folder")
        _wait(lambda: not relay.messages(), why="still queued")
    finally:
        stop.set()
        watcher.join()
    assert partial == []
    (eml,) = drop.iterdir()                 # no temporary file left either
    assert eml.suffix == ".eml"
    data = eml.read_bytes()
    assert data.startswith(b"X-Sender: app@corp.example\r\nX-Receiver: a@local.example\r\n"
                           b"X-Receiver: B@local.example\r\nReceived: from ")
    assert data.endswith(b"\r\n\r\n" + lines + b"the end\r\n")
    assert b"\r\nSubject: to the drop\r\n" in data
    assert down.messages == []


def test_an_unwritable_drop_folder_defers_then_delivers_when_fixed(env):
    relay, down, drop, main = env
    away = drop.with_name("Drop.away")
    drop.rename(away)
    drop.write_bytes(b"not a folder")       # the Drop "folder" is now a file (ENOTDIR)
    with smtplib.SMTP("127.0.0.1", main, timeout=30) as c:
        c.sendmail("app@corp.example", ["a@local.example"],
                   b"Subject: wait\r\n\r\nkept until the folder is back\r\n")
    # The first attempt and two more (at 1 s intervals) fail, each a deferral in the log.

    def deferrals() -> int:
        relay.flush_logs()
        return len(re.findall(r"event=deferred .*cannot write to the Drop directory",
                              relay.logs("mail", ".log")))
    until(deferrals, lambda n: n >= 3, step=0.2, what="deferrals logged")
    (queued,) = relay.messages()
    assert queued["recipients"][0]["status"] == "queued"
    assert "event=deferred" in relay.logs("mail", ".log")
    drop.unlink()
    away.rename(drop)
    _wait(lambda: list(drop.glob("*.eml")), why="not delivered once the folder is back")
    _wait(lambda: not relay.messages(), why="still queued")
    (eml,) = drop.iterdir()
    assert eml.read_bytes().endswith(b"\r\n\r\nkept until the folder is back\r\n")
    assert down.messages == []              # no bounce, no delay notice sent anywhere


def test_a_drop_folder_that_feeds_the_pickup_folder_stops_at_max_hops(tmp_path):
    """The Drop folder is also the Pickup folder: each round adds a Received field; past
    relay.max_hops (4) the message is in badmail with the reason, not looping on."""
    down_port, main = free_port(), free_port()
    folder = tmp_path / "Both"
    folder.mkdir()
    extra = f'\n[pickup]\ndir = "{folder}"\npoll_interval = 0.2\nsettle = 0.2\n'
    relay = start_relay(_config(tmp_path, folder, extra, down=down_port, main=main),
                        tmp_path / "var", {"main": main})
    try:
        with smtplib.SMTP("127.0.0.1", main, timeout=30) as c:
            c.sendmail("app@corp.example", ["loop@local.example"],
                       b"Subject: round\r\n\r\nround and round\r\n")
        badmail = relay.data_dir / "badmail"
        _wait(lambda: list(badmail.glob("*.json")), timeout=40, why="no loop in badmail")
        (meta,) = (json.loads(p.read_text()) for p in badmail.glob("*.json"))
        (rcpt,) = meta["recipients"]
        assert rcpt["rule"] == "relay.max_hops"
        assert rcpt["reason"] == "loop detected (5.4.6): 5 Received headers"
        _wait(lambda: not list(folder.glob("*.eml")), why="the last copy was not taken")
    finally:
        relay.stop()


# ------------------------------------------------------------------ config check


def _errors(tmp_path: Path, hop: str) -> list[str]:
    from relaywarden.config.load import ConfigError, load_config

    config = tmp_path / "relay.toml"
    config.write_text(f'[routes."local.example"]\nnext_hops = ["{hop}"]\n'
                      '[listeners.main]\naddress = "127.0.0.1"\nport = 2525\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return [m.split(": ", 1)[1] for m in info.value.messages]


def test_config_check_names_the_key_of_a_bad_drop_path(tmp_path):
    missing = tmp_path / "nope"
    assert _errors(tmp_path, f"drop:{missing}") == [
        f"routes.\"local.example\".next_hops[0]: the Drop directory '{missing}' does not exist"]
    (tmp_path / "file").write_text("x")
    assert _errors(tmp_path, f"drop:{tmp_path / 'file'}") == [
        f"routes.\"local.example\".next_hops[0]: the Drop directory "
        f"'{tmp_path / 'file'}' is not a directory"]
    assert _errors(tmp_path, "drop:Drop") == [
        "routes.\"local.example\".next_hops[0]: 'Drop': the Drop directory must be an "
        "absolute path"]


# ------------------------------------------------------------------ a full disk


def test_a_full_disk_defers_and_leaves_no_file(tmp_path):
    from faultfs import FaultyFiles

    from relaywarden.delivery.drop import DropCourier
    from relaywarden.delivery.engine import Kind
    from relaywarden.queue.store import DueMessage, DueRecipient

    files = FaultyFiles()
    files.fail_write = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    courier = DropCourier(tmp_path, route='routes."x"', files=files)
    rcpt = DueRecipient(idx=0, address="a@local.example", domain="local.example", orcpt=None,
                        notify=None, attempts=0, delay_notified=False)
    message = DueMessage(queue_id="Q1", received_at=0, sender="s@x.example", client_group=None,
                         auth_user=None, ret=None, envid=None, body_type=None, smtputf8=False,
                         size=10, recipients=(rcpt,))

    class _Route:
        name = 'routes."x"'

    (out,) = asyncio.run(courier.deliver(message, b"Subject: s\r\n\r\nb\r\n", [rcpt], _Route(),
                                         None))
    assert out.kind is Kind.DEFERRED and out.reply.code == 451
    assert "No space left on device" in " ".join(out.reply.lines)
    assert list(tmp_path.iterdir()) == []
    files.fail_write = None
    (out,) = asyncio.run(courier.deliver(message, b"Subject: s\r\n\r\nb\r\n", [rcpt], _Route(),
                                         None))
    assert out.kind is Kind.DELIVERED
    assert [p.name for p in tmp_path.iterdir()] == ["Q1-0.eml"]


def test_the_iis_migration_example_passes_config_check(tmp_path):
    """examples/iis-migration.toml, its folders made under tmp_path."""
    from relaywarden.config.load import load_config

    text = (Path(__file__).parent.parent / "examples" / "iis-migration.toml").read_text()
    for name in ("Pickup", "Drop"):
        (tmp_path / name).mkdir()
    text = text.replace("/srv/mail", str(tmp_path)).replace("/var/lib/relaywarden",
                                                            str(tmp_path / "var"))
    (tmp_path / "relay.toml").write_text(text)
    cfg = load_config(tmp_path / "relay.toml")
    assert cfg.routes["intranet.example"].next_hops == [f"drop:{tmp_path / 'Drop'}"]
    assert cfg.pickup.dir == tmp_path / "Pickup" and cfg.pickup.watch == "auto"
