"""CRAM-MD5 secrets (RFC 2195): the file format and the digest check."""

from __future__ import annotations

import hmac

import pytest

from relaywarden.auth.cram import CramFileError, CramSecrets

CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"   # RFC 2195's own example


def test_rfc2195_example(tmp_path):
    path = tmp_path / "cram"
    path.write_text("# comment\n\ntim:tanstaaftanstaaf\n")
    secrets = CramSecrets.load(path)
    # RFC 2195 2: the client answers "tim b913a602c7eda7a495b4e6e7334d3890".
    ok = secrets.verify("TIM", CHALLENGE, "b913a602c7eda7a495b4e6e7334d3890")
    assert ok.ok and ok.user == "tim" and ok.backend == "cram-md5"
    assert not secrets.verify("tim", CHALLENGE, "0" * 32).ok
    assert not secrets.verify("tim", b"<other@challenge>", "b913a602c7eda7a495b4e6e7334d3890").ok
    unknown = secrets.verify("nobody", CHALLENGE, "b913a602c7eda7a495b4e6e7334d3890")
    assert not unknown.ok and not unknown.temporary
    assert "tanstaaf" not in repr(secrets)


def test_a_secret_may_hold_colons_and_spaces(tmp_path):
    path = tmp_path / "cram"
    path.write_text("shop:a b:c\n")
    digest = hmac.new(b"a b:c", CHALLENGE, "md5").hexdigest()
    assert CramSecrets.load(path).verify("shop", CHALLENGE, digest.upper()).ok


@pytest.mark.parametrize("text, message", [
    ("shop\n", "line 1: expected name:secret"),
    ("shop:\n", "line 1: expected name:secret"),
    (":secret\n", "line 1: expected name:secret"),
    ("a:1\nA:2\n", "line 2: 'A' is listed twice"),
])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "cram"
    path.write_text(text)
    with pytest.raises(CramFileError, match=message):
        CramSecrets.load(path)
