"""The server side TLS context of a listener (STARTTLS, RFC 3207; implicit TLS, RFC 8314).

One function, used by the config check (does the certificate load?) and by the relay
(a fresh context on start and on every SIGHUP, so new handshakes use new certificates
while established sessions keep theirs).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from collections.abc import Callable
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


class ImplicitTls(asyncio.sslproto.SSLProtocol):
    """The TLS layer of an implicit-TLS listener (RFC 8314 3.3), in front of its session.

    The event loop's own TLS server (``create_server(ssl=...)``) drops a failed handshake
    without a word to the application: a client that speaks plaintext, an old TLS version,
    a scanner. This layer is the same standard protocol with one addition: when the
    handshake fails, ``on_failure(peer, reason)`` is called, so the mail log says who failed
    and why (the STARTTLS path logs the same way)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: asyncio.Protocol,
                 context: ssl.SSLContext, *, handshake_timeout: float,
                 on_failure: Callable[[str, str], None]) -> None:
        waiter = loop.create_future()
        super().__init__(loop, session, context, waiter, server_side=True,
                         ssl_handshake_timeout=handshake_timeout)  # type: ignore[arg-type]  # typeshed says int; asyncio takes seconds as a float
        self._peer = ""
        self._on_failure = on_failure
        waiter.add_done_callback(self._handshake_done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else ""
        super().connection_made(transport)

    def _handshake_done(self, waiter: asyncio.Future) -> None:
        if waiter.cancelled():
            return
        exc = waiter.exception()
        if exc is None:
            return
        if isinstance(exc, ConnectionResetError) and not exc.args:
            self._on_failure(self._peer, "the client closed the connection")   # a probe, a scanner
            return
        reason = _reason(exc) if isinstance(exc, OSError) else str(exc)
        self._on_failure(self._peer, f"{type(exc).__name__}: {reason}".rstrip(": "))
