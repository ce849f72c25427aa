"""The README's first steps ("## Trying it"), run as a new admin runs them: the commands are
read from README.md (so this test breaks when the README drifts), run literally against
the embedded default config, and what the README says of each is checked (issue 14 item
13: the message it said would wait in the queue was bounced at once).

Only the two ports differ from the embedded default (2525 and 8025 may be taken on a test
machine): the config is default.toml's own text with the ports replaced, named by
RELAYWARDEN_CONFIG as the README's "Commands" section describes, so data lands in the
test's directory."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx

from support.relay import free_port, wait_admin, wait_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "first steps password"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(text: str) -> list[tuple[str, str]]:
    """Fenced code blocks as (language, body), in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)


def first_steps() -> tuple[list[tuple[str, str]], list[str]]:
    """The commands of "Trying it" with their comments, and the printed `queue list`."""
    trying = section((ROOT / "README.md").read_text(), "Trying it")
    found = blocks(trying)
    commands = [(line.split("  #", 1)[0].strip(),
                 line.split("  #", 1)[1].strip() if "  #" in line else "")
                for line in next(body for lang, body in found if lang == "sh").splitlines()
                if line.strip()]
    listing = next(body for lang, body in found if lang == "" and "SENDER -> RECIPIENT" in body)
    return commands, listing.splitlines()


def test_readme_first_steps(tmp_path):
    commands, listing = first_steps()
    # The README's claims about the embedded default, from the file itself.
    default = resources.files("relaywarden.config").joinpath("default.toml").read_text()
    assert "port = 2525" in default and "[admin]\nenabled = true" in default
    smtp, http = free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(default.replace("port = 2525", f"port = {smtp}")
                      .replace("[admin]\nenabled = true", f"[admin]\nenabled = true\nport = {http}"))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, RELAYWARDEN_CONFIG=str(config), PYTHONUNBUFFERED="1",
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    assert [c.split()[:3] for c, _ in commands] == [
        ["relaywarden", "serve", "&"], ["swaks", "--server", "127.0.0.1:2525"],
        ["relaywarden", "queue", "list"], ["relaywarden", "queue", "show"],
        ["relaywarden", "track", "--to"], ["relaywarden", "admin-user", "add"],
        ["relaywarden", "queue", "delete"]], "the README's first steps changed: update this test"

    def argv(command: str, queue_id: str = "") -> list[str]:
        command = command.replace("127.0.0.1:2525", f"127.0.0.1:{smtp}")
        return [queue_id if word == "ID" else word for word in shlex.split(command)]

    def run(command: str, queue_id: str = "", **kw) -> str:
        out = subprocess.run(argv(command, queue_id), capture_output=True, text=True,
                             timeout=60, cwd=tmp_path, env=env, **kw)
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        return out.stdout

    (serve, _), (swaks, _), (qlist, _), (show, _), (track, _), (add_user, url), (delete, _) = commands
    assert serve.endswith("&")
    proc = subprocess.Popen(argv(serve.removesuffix("&")), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", smtp, proc)
        sent = run(swaks)
        assert re.search(r"<-  250 2\.0\.0 Ok: queued as (\S+)", sent), sent
        queue_id = re.search(r"queued as (\S+)", sent).group(1)

        # "the message, held in the queue": as the README prints it, but for ID, time, size.
        deadline = time.monotonic() + 20
        while "[held]" not in (listed := run(qlist)):
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        lines = listed.splitlines()
        assert lines[0] == listing[0]
        assert len(lines) == len(listing) == 2
        shown_id, *_, shown_rest = listing[1].split(None, 4)
        got_id, day, clock, size, got_rest = lines[1].split(None, 4)
        assert got_id == queue_id and got_rest == shown_rest, (lines, listing)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and re.fullmatch(r"\d\d:\d\d:\d\d", clock)
        assert int(size) > 0 and len(got_id) == len(shown_id)

        # "its envelope, recipient [held by route], content"
        out = run(show, queue_id)
        assert re.search(r"sender:\s+app@example\.com", out)
        assert "recipient:    someone@example.net [held by route]" in out
        assert "To: someone@example.net" in out and "This is a test mailing" in out

        # "its timeline: received, then held" (the admin process writes the history; on a
        # busy machine it may not have made the file yet, which `track` says, exit 1).
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(argv(track), capture_output=True, text=True, timeout=60,
                                 cwd=tmp_path, env=env)
            timeline = out.stdout
            if out.returncode == 0 and "held <someone@example.net>" in timeline:
                break
            assert out.returncode == 0 or "no history at" in out.stderr, (track, out)
            assert time.monotonic() < deadline, (track, out)
            time.sleep(0.3)
        assert timeline.index("received from 127.0.0.1") < timeline.index("held <someone@")

        # "then open http://127.0.0.1:8025/": the password asked twice, without a terminal
        # (a new session has none, so the prompt reads standard input).
        run(add_user, input=f"{PASSWORD}\n{PASSWORD}\n", start_new_session=True)
        assert url == "then open http://127.0.0.1:8025/"
        base = f"http://127.0.0.1:{http}"
        wait_admin(base, proc)
        with httpx.Client(base_url=base, timeout=15) as c:
            page = c.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            login = c.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
            assert login.status_code == 200 and login.json()["role"] == "admin", login.text

        # "Messages held by the default config stay held under it": released, it is held
        # again by its route (the timeline shows the release, then a new "held").
        run(f"relaywarden queue release {queue_id}")
        deadline = time.monotonic() + 30
        while not re.search(r"release by .*\n.*held <someone@example\.net>",
                            timeline := run(f"relaywarden track --id {queue_id}")):
            assert time.monotonic() < deadline, timeline
            time.sleep(0.3)
        assert "[held]" in run(qlist)

        # "gone, without a bounce"
        run(delete, queue_id)
        assert run(qlist).strip() == "queue is empty"
        assert "badmail is empty" in run("relaywarden badmail list")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()


def test_readme_policy_explain_example():
    """The "Commands" section's explain example prints what the command prints."""
    commands = section((ROOT / "README.md").read_text(), "Commands")
    [(_, body)] = [b for b in blocks(commands) if "$ relaywarden policy explain" in b[1]]
    command, _, shown = body.partition("\n      ")
    args, _, shown = ("      " + shown).partition("\n")
    argv = shlex.split(command.removeprefix("$ ").removesuffix("\\") + args)
    out = subprocess.run([sys.executable, "-m", "relaywarden", *argv[1:]], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == shown.strip().splitlines()
