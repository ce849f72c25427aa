"""Reading the credential files of an `[oauth.NAME]` provider: no network.

The config loads these (so `relaywarden config check` and every reload find a missing file,
a key that does not parse, or a key that does not belong to its certificate), and the token
provider uses what was read. Every problem is a `CredentialFileError` naming the key whose
file is wrong, for the `file: oauth.NAME.key: problem` config error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class CredentialFileError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialFileError(key, f"cannot read: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class CertificateCredential:
    """A client certificate for Microsoft's client assertion (a JWT signed with the key,
    naming the certificate by its thumbprint): what msal's client_credential takes."""

    private_key: str = field(repr=False)
    thumbprint: str              # SHA-1, hex: the "x5t" Entra ID matches the upload against
    public_certificate: str      # PEM: sent as "x5c" (subject name / issuer auth)

    def msal_credential(self) -> dict:
        return {"private_key": self.private_key, "thumbprint": self.thumbprint,
                "public_certificate": self.public_certificate}


def load_certificate(certificate_file: Path, key_file: Path) -> CertificateCredential:
    """The certificate and its private key (PEM, unencrypted); the key must match."""
    cert_pem = _read(certificate_file, "certificate_file")
    key_pem = _read(key_file, "key_file")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CredentialFileError("certificate_file", "not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CredentialFileError("key_file", "the key is encrypted; an unencrypted PEM key is needed") from None
    except ValueError:
        raise CredentialFileError("key_file", "not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        # Entra ID's client assertions are RS256/PS256: RSA keys only.
        raise CredentialFileError("key_file", "not an RSA key (Microsoft accepts RSA certificates only)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CredentialFileError("key_file", f"does not match the certificate in {certificate_file.name}")
    return CertificateCredential(
        private_key=key_pem.decode("ascii"),
        thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper(),   # noqa: S303 - the x5t
        public_certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def load_service_account(path: Path) -> dict:
    """A Google service account key file (JSON, "type": "service_account")."""
    raw = _read(path, "service_account_file")
    try:
        info = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CredentialFileError("service_account_file", f"not JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise CredentialFileError("service_account_file",
                                  'not a service account key file ("type": "service_account")')
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise CredentialFileError("service_account_file", f"lacks {', '.join(missing)}")
    try:
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise CredentialFileError("service_account_file", "private_key is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialFileError("service_account_file", "private_key is not an RSA key")
    return info
