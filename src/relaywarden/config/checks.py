"""The probes the config's validators make of the files a config names: can the TLS
certificate and key be loaded into a server context, can the CRAM-MD5 secrets file be read.

They run the very code the relay will run with the file (server/tls.py, auth/cram.py), so a
config that passes `relaywarden config check` is one the relay can start with. They live
here, in one place, so that the schema reaches into server/ and auth/ through this module
only (docs/architecture.md). Each returns the problem, or None; the schema turns it into a
`file: dotted.key` error.
"""

from __future__ import annotations

from pathlib import Path

from relaywarden.auth.cram import CramFileError, CramSecrets
from relaywarden.server.tls import CertificateError, server_context


def certificate_problem(*, cert_file: Path, key_file: Path,
                        min_version: str) -> tuple[str, str] | None:
    """("cert_file" or "key_file", what is wrong) when the pair cannot serve TLS."""
    try:
        server_context(cert_file=cert_file, key_file=key_file, min_version=min_version)
    except CertificateError as exc:
        return exc.key, str(exc)
    return None


def cram_file_problem(path: Path) -> str | None:
    """What is wrong with an auth.cram_md5_file, or None when it loads."""
    try:
        CramSecrets.load(path)
    except CramFileError as exc:
        return str(exc)
    return None
