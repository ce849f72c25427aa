"""`relaywarden user ...` as an admin runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from argon2 import PasswordHasher

from relaywarden.auth.users import UserFile


def rw(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "relaywarden", "user", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "users")


def test_add_list_passwd_remove(path):
    r = rw("add", "Scanner1", "--file", path, "--password-stdin", "--groups", "scanners,apps",
           stdin="first-pw\n")
    assert r.returncode == 0, r.stderr
    assert "first-pw" not in r.stdout + r.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = UserFile(path)
    assert users.verify("scanner1", "first-pw").groups == frozenset({"scanners", "apps"})

    r = rw("list", "--file", path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [{"name": "Scanner1", "groups": ["scanners", "apps"]}]
    assert "argon2" not in rw("list", "--file", path).stdout

    r = rw("passwd", "scanner1", "--file", path, "--password-stdin", stdin="second-pw\r\n")
    assert r.returncode == 0, r.stderr
    assert not users.verify("Scanner1", "first-pw").ok      # the same object sees the change
    assert users.verify("Scanner1", "second-pw").ok

    r = rw("groups", "scanner1", "billing", "--file", path)
    assert r.returncode == 0 and users.verify("scanner1", "second-pw").groups == frozenset({"billing"})

    r = rw("remove", "SCANNER1", "--file", path)
    assert r.returncode == 0 and "removed Scanner1" in r.stdout
    assert rw("list", "--file", path).stdout.strip() == "no users"


def test_exit_codes(path):
    assert rw("add", "a", "--file", path, "--password-stdin", stdin="pw\n").returncode == 0
    # 1: runtime trouble (exists, no such user)
    assert rw("add", "A", "--file", path, "--password-stdin", stdin="pw\n").returncode == 1
    for args in (("passwd", "nobody"), ("remove", "nobody"), ("groups", "nobody", "x")):
        r = rw(*args, "--file", path, "--password-stdin", stdin="pw\n") if args[0] == "passwd" \
            else rw(*args, "--file", path)
        assert r.returncode == 1 and "no such user" in r.stderr, (args, r.stderr)
    # 2: bad usage
    assert rw("add", "b", "--password-stdin", stdin="pw\n").returncode == 2      # no --file
    assert rw("add", "bad:name", "--file", path, "--password-stdin", stdin="pw\n").returncode == 2
    assert rw("add", "c", "--file", path, "--password-stdin", stdin="\n").returncode == 2
    assert rw("add", "c", "--file", path, "--password-stdin", "--groups", "a b",
              stdin="pw\n").returncode == 2
    assert rw("frobnicate", "--file", path).returncode == 2
    assert [e.name for e in UserFile(path).list()] == ["a"]


def test_prompt_asks_twice_without_echo(path):
    r = rw("add", "alice", "--file", path, stdin="pw-one\npw-one\n")
    assert r.returncode == 0, r.stderr
    assert "pw-one" not in r.stdout + r.stderr
    assert "Repeat for confirmation" in r.stdout + r.stderr
    assert UserFile(path).verify("alice", "pw-one").ok


def test_prompt_mismatch_asks_again(path):
    r = rw("add", "alice", "--file", path, stdin="one\ntwo\nthree\nthree\n")
    assert r.returncode == 0, r.stderr
    assert UserFile(path).verify("alice", "three").ok


def test_file_written_by_hand_is_listed_with_warnings(path):
    h = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    with open(path, "w") as f:
        f.write(f"# hand-made\nerp:{h}:apps\nbroken-line\n")
    r = rw("list", "--file", path)
    assert r.returncode == 0 and r.stdout.strip() == "erp  groups: apps"
    assert f"{path}:3" in r.stderr
