"""The server side TLS context of a listener (STARTTLS, RFC 3207; implicit TLS, RFC 8314).

One function, used by the config check (does the certificate load?) and by the relay
(a fresh context on start and on every SIGHUP, so new handshakes use new certificates
while established sessions keep theirs).
"""

from __future__ import annotations

import ssl
from pathlib import Path

MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class CertificateError(ValueError):
    """The certificate or the key cannot be used; ``key`` names which ("cert_file" / "key_file")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal: a daemon would hang.
    raise _Encrypted()


def server_context(*, cert_file: Path, key_file: Path, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """A server context with the stdlib's cipher defaults (forward secret AEAD suites; no RC4,
    3DES, export or anonymous suites), TLS 1.2 or 1.3 at least, no TLS compression (CRIME)
    and the server's cipher order (the client's preference may be weaker).

    Raises ``CertificateError`` naming the file at fault.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)   # client renegotiation: a DoS lever
    # The certificates first, on their own: a broken chain is the cert file's fault, and
    # load_cert_chain() alone cannot say which of the two files it disliked.
    try:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.load_verify_locations(cafile=str(cert_file))
    except ssl.SSLError:
        raise CertificateError("cert_file", "cannot load the certificate: no PEM certificate found") from None
    except (OSError, ValueError) as exc:
        raise CertificateError("cert_file", f"cannot read: {_reason(exc)}") from None
    try:
        with open(key_file, "rb"):
            pass
    except OSError as exc:
        raise CertificateError("key_file", f"cannot read: {_reason(exc)}") from None
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file), password=_no_passphrase)
    except _Encrypted:
        raise CertificateError(
            "key_file", "the key is encrypted with a passphrase; use an unencrypted key "
            "readable only by the relay") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        if "mismatch" in _reason(exc).lower():
            message = "the key does not belong to the certificate in cert_file"
        else:
            message = "cannot load the key: not a PEM private key"
        raise CertificateError("key_file", message) from None
    return ctx


def describe(ssl_object: ssl.SSLObject | None) -> tuple[str, str, int] | None:
    """(version, cipher, secret bits) of an established TLS session, for the Received header."""
    if ssl_object is None:
        return None
    version = ssl_object.version() or "TLS"
    cipher = ssl_object.cipher()
    if cipher is None:
        return (version, "unknown", 0)
    return (version, cipher[0], cipher[2] or 0)
