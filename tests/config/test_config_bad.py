"""The corpus of bad configs: each tests/config/bad/*.toml names its expected messages in
`# expect: dotted.key: what is wrong` header lines (without the leading "FILE: ")."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaywarden.config import ConfigError, load_config

BAD = Path(__file__).parent / "bad"
CASES = sorted(BAD.glob("*.toml"))


def expected_messages(path: Path) -> list[str]:
    prefix = "# expect: "
    lines = path.read_text("utf-8").splitlines()
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_bad_config(path: Path):
    expected = expected_messages(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [f"{path}: {message}" for message in expected]


def test_file_is_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "relay.toml").write_text('[listeners.internal]\naddress = "127.0.0.1"\nprot = 25\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("relay.toml"))
    assert info.value.messages == [
        "relay.toml: listeners.internal.port: missing (required)",
        "relay.toml: listeners.internal.prot: unknown key",
    ]
    assert str(info.value) == "\n".join(info.value.messages)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [f"{path}: cannot read: No such file or directory"]


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.messages[0].startswith(f"{tmp_path}: cannot read: ")


def test_not_utf8(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_bytes(b'[relay]\nhostname = "r\xe9lay.example.com"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [f"{path}: cannot read: not UTF-8 text (byte 21)"]


LDAP_SEARCH = """
[auth.ldap]
url = "ldap://127.0.0.1:389"
mode = "search"
bind_dn = "cn=relay,dc=example,dc=com"
bind_password_file = "bind.pw"
search_base = "dc=example,dc=com"

[listeners.main]
address = "127.0.0.1"
port = 2525
"""


@pytest.mark.parametrize("content, why", [
    (b"", "the first line (the password) is empty"),
    (b"\n\nsecret\n", "the first line (the password) is empty"),
    (b"\xff\xfe\x00", "cannot read: not UTF-8 text"),
])
def test_ldap_bind_password_file_is_read_as_a_password_file(tmp_path, content, why):
    """The same reader as the next hops' password_file: checked at load (and so at each
    reload), the key named; it was read later, raw OSError, empty accepted."""
    (tmp_path / "bind.pw").write_bytes(content)
    path = tmp_path / "relay.toml"
    path.write_text(LDAP_SEARCH)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [f"{path}: auth.ldap.bind_password_file: {why}"]


def test_ldap_bind_password_is_the_first_line(tmp_path):
    (tmp_path / "bind.pw").write_text("\ufeffs3cret pass \r\nignored\n", encoding="utf-8")
    path = tmp_path / "relay.toml"
    path.write_text(LDAP_SEARCH)
    assert load_config(path).auth.ldap.bind_password() == "s3cret pass "
