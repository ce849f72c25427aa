"""CRAM-MD5 (RFC 2195) secrets, for the clients that know no other mechanism.

RFC 2645 (ATRN, On-Demand Mail Relay) makes CRAM-MD5 the mechanism every ODMR server must
offer, and fetchmail's ODMR mode uses nothing else. CRAM-MD5 needs the secret itself on the
server (it checks an HMAC-MD5 of a challenge), which the argon2id hashes of the users file
and an LDAP bind cannot give. So CRAM-MD5 has its own file, ``auth.cram_md5_file``::

    # name:secret   (one per line; # starts a comment line)
    shop:a long random secret, not the account's password

The file holds secrets in clear: keep it readable by the relay only, and give each client
a secret of its own that is good for nothing else. A user in it logs in with CRAM-MD5 only;
PLAIN and LOGIN still go to the users file / LDAP. Names are case-insensitive. Read at
start and at reload (SIGHUP).
"""

from __future__ import annotations

import hmac
from pathlib import Path

from relaywarden.auth import AuthResult

__all__ = ["CramSecrets", "CramFileError"]


class CramFileError(ValueError):
    pass


class CramSecrets:
    def __init__(self, secrets: dict[str, tuple[str, str]]) -> None:
        self._secrets = secrets       # casefolded name -> (name as written, secret)

    @classmethod
    def load(cls, path: Path) -> CramSecrets:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise CramFileError(f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CramFileError("cannot read: not UTF-8 text") from None
        secrets: dict[str, tuple[str, str]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, secret = line.partition(":")
            name = name.strip()
            if not sep or not name or not secret:
                raise CramFileError(f"line {number}: expected name:secret")
            if name.casefold() in secrets:
                raise CramFileError(f"line {number}: {name!r} is listed twice")
            secrets[name.casefold()] = (name, secret)
        return cls(secrets)

    def __repr__(self) -> str:          # the secrets stay out of logs and tracebacks
        return f"CramSecrets({len(self._secrets)} users)"

    def verify(self, user: str, challenge: bytes, digest: str) -> AuthResult:
        """RFC 2195 2: the client answers "name hex(HMAC-MD5(secret, challenge))"."""
        entry = self._secrets.get(user.casefold())
        # The same work for an unknown name: its absence shows in nothing but the answer.
        name, secret = entry if entry is not None else (user, "\0unknown user\0")
        expected = hmac.new(secret.encode("utf-8"), challenge, "md5").hexdigest()
        if entry is not None and hmac.compare_digest(expected, digest.lower()):
            return AuthResult.success(name, backend="cram-md5")
        return AuthResult.failure("no such CRAM-MD5 user" if entry is None else "wrong digest",
                                  backend="cram-md5")
