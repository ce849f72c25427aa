"""The local users file: format, argon2id, atomic writes, reload, timing-safe misses."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import argon2
import pytest
from argon2 import PasswordHasher

from relaywarden.auth import AUTH_INVALID, AUTH_OK, AuthResult, Backend
from relaywarden.auth.users import (
    LocalBackend, UserEntry, UserExists, UserFile, UserFileError, UserNotFound,
)

# Cheap parameters: the tests check behaviour, not cost.
FAST = dict(time_cost=1, memory_cost=1024, parallelism=1)


class CountingHasher(PasswordHasher):
    """A real hasher that counts its verify calls (a fake with a window, not a mock)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.verified: list[str] = []

    def verify(self, hash, password):  # noqa: A002 - argon2's own parameter name
        self.verified.append(hash)
        return super().verify(hash, password)


@pytest.fixture
def users(tmp_path):
    return UserFile(tmp_path / "users", hasher=PasswordHasher(**FAST))


def test_add_verify_list_remove(users):
    users.add("Alice", "alice-pw", groups=["scanners", "apps"])
    users.add("bob", "bob-pw")
    assert users.list() == [UserEntry("Alice", ("scanners", "apps")), UserEntry("bob", ())]

    ok = users.verify("alice", "alice-pw")          # lookup is case-insensitive
    assert ok == AuthResult(ok=True, user="Alice", groups=frozenset({"scanners", "apps"}),
                            backend="file")
    assert ok.reply == AUTH_OK
    bad = users.verify("Alice", "nope")
    assert (bad.ok, bad.temporary, bad.detail, bad.reply) == (False, False, "wrong password", AUTH_INVALID)

    assert users.remove("ALICE") == UserEntry("Alice", ("scanners", "apps"))
    assert users.list() == [UserEntry("bob", ())]
    assert not users.verify("alice", "alice-pw").ok
    with pytest.raises(UserNotFound):
        users.remove("alice")


def test_set_password_and_groups(users):
    users.add("erp", "old-pw")
    users.set_password("ERP", "new-pw")
    assert not users.verify("erp", "old-pw").ok
    assert users.verify("erp", "new-pw").ok
    users.set_groups("erp", ["billing"])
    assert users.verify("erp", "new-pw").groups == frozenset({"billing"})
    with pytest.raises(UserNotFound):
        users.set_password("nobody", "x")


def test_duplicate_names_case_insensitive(users):
    users.add("Scanner", "pw")
    with pytest.raises(UserExists):
        users.add("scanner", "pw2")


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a,b", "#x", "tab\there", "nul\x00", "x" * 257])
def test_bad_names_refused(users, name):
    with pytest.raises(UserFileError):
        users.add(name, "pw")


def test_empty_password_refused(users):
    with pytest.raises(UserFileError):
        users.add("a", "")
    users.add("b", "pw")
    r = users.verify("b", "")
    assert not r.ok and not r.temporary and r.detail == "empty password"


def test_hash_format_is_argon2id_and_file_is_private(users):
    users.add("alice", "alice-pw", groups=["scanners"])
    text = users.path.read_text()
    line = [l for l in text.splitlines() if not l.startswith("#")][0]
    name, hash_, groups = line.split(":")
    assert (name, groups) == ("alice", "scanners")
    assert hash_.startswith("$argon2id$v=19$")
    assert argon2.extract_parameters(hash_).type is argon2.Type.ID
    assert "alice-pw" not in text
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600


def test_default_hasher_is_argon2id_with_sane_cost(tmp_path):
    uf = UserFile(tmp_path / "u")
    assert uf.hasher.type is argon2.Type.ID
    assert uf.hasher.memory_cost >= 19 * 1024 and uf.hasher.time_cost >= 2   # OWASP floor


def test_comments_and_order_survive_writes(users):
    users.path.write_text("# our scanners\n\n# second comment\n")
    users.add("a", "pw")
    users.add("b", "pw")
    users.remove("a")
    lines = users.path.read_text().splitlines()
    assert lines[:3] == ["# our scanners", "", "# second comment"]
    assert [l.split(":")[0] for l in lines[3:]] == ["b"]


def test_reload_when_file_changes(tmp_path):
    path = tmp_path / "users"
    writer = UserFile(path, hasher=PasswordHasher(**FAST))
    reader = UserFile(path, hasher=PasswordHasher(**FAST))
    assert not reader.verify("alice", "pw").ok           # no file yet: nobody
    writer.add("alice", "pw")
    assert reader.verify("alice", "pw").ok
    # An edit by hand (another inode, maybe the same mtime second) is seen too.
    line = path.read_text().splitlines()[-1].replace("alice:", "carol:")
    tmp = tmp_path / "new"
    tmp.write_text(line + "\n")
    os.replace(tmp, path)
    assert not reader.verify("alice", "pw").ok
    assert reader.verify("carol", "pw").ok


def test_malformed_lines_are_skipped_and_reported(users):
    users.add("good", "pw")
    with users.path.open("a") as f:
        f.write("no-hash-here\n")
        f.write("md5user:$1$abc$def\n")
        f.write("bad name:$argon2id$v=19$m=1024,t=1,p=1$x$y\n")
    assert [e.name for e in users.list()] == ["good"]
    assert len(users.problems) == 3
    assert all(str(users.path) in p for p in users.problems)
    assert users.verify("good", "pw").ok


def test_unknown_user_costs_a_real_verify(tmp_path):
    """No user enumeration by timing: a miss still runs argon2 against a dummy hash."""
    hasher = CountingHasher(**FAST)
    uf = UserFile(tmp_path / "users", hasher=hasher)
    uf.add("alice", "alice-pw")
    real = argon2.extract_parameters(uf.path.read_text().splitlines()[-1].split(":")[1])
    hasher.verified.clear()

    r = uf.verify("mallory", "guess")
    assert (r.ok, r.temporary, r.detail) == (False, False, "no such user")
    assert len(hasher.verified) == 1
    dummy = hasher.verified[0]
    assert argon2.extract_parameters(dummy) == real        # same cost as a real user's hash

    uf.verify("alice", "wrong")
    uf.verify("alice", "")                                 # empty password: same work too
    assert len(hasher.verified) == 3


def test_unknown_user_timing_is_close_to_wrong_password(tmp_path):
    # Real default-ish cost so the argon2 work dominates the measurement.
    uf = UserFile(tmp_path / "users", hasher=PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1))
    uf.add("alice", "alice-pw")
    uf.verify("nobody", "x")                               # makes the dummy hash once

    # Each round times both, one after the other, so that both sample the same moments of a
    # busy machine: timed as two separate series, a burst of the other xdist worker's load
    # over one series alone made its best of five 2.3x the other's (a CI run, 2026-12-07).
    times: dict[str, list[float]] = {"alice": [], "nobody": []}
    for _ in range(7):
        for name in ("alice", "nobody"):
            t = time.perf_counter()
            uf.verify(name, "wrong")
            times[name].append(time.perf_counter() - t)
    known, unknown = min(times["alice"]), min(times["nobody"])
    assert 0.5 < unknown / known < 2.0


def test_password_never_in_repr_or_exceptions(users):
    secret = "s3cret-Passw0rd"
    users.add("alice", secret)
    assert secret not in repr(users) and secret not in repr(users.list())
    assert secret not in repr(users.verify("alice", "nope"))
    assert secret not in repr(users.verify("alice", secret))
    try:
        users.add("alice", secret)
    except UserExists as exc:
        assert secret not in str(exc) and secret not in repr(exc)


def test_local_backend_is_async_and_a_backend(users):
    users.add("alice", "alice-pw", groups=["scanners"])
    backend = LocalBackend(users)
    assert isinstance(backend, Backend)

    async def run():
        return await asyncio.gather(backend.verify("alice", "alice-pw"), backend.verify("alice", "x"))

    good, bad = asyncio.run(run())
    assert good.ok and good.groups == frozenset({"scanners"}) and not bad.ok


def test_unreadable_file_is_temporary(tmp_path):
    path = tmp_path / "users"
    path.write_bytes(b"alice:\xff\xfe\n")                  # not UTF-8
    r = asyncio.run(LocalBackend(UserFile(path, hasher=PasswordHasher(**FAST))).verify("alice", "x"))
    assert not r.ok and r.temporary
