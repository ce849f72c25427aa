"""A real LDAP server (Debian's OpenLDAP slapd) on loopback, for the AUTH tests.

slapd runs as our own process on 127.0.0.1 and free ports, with its own slapd.conf and
its own MDB database in a temp dir; the system's slapd (if any) is neither used nor
started. The memberof overlay keeps ``memberOf`` on user entries, as Active Directory
does, so both ways of finding groups (the user's ``memberOf`` attribute and a search for
``groupOfNames`` with ``member={dn}``) can be tested.

The tree (suffix ``dc=example,dc=test``; the admin is ``cn=admin,dc=example,dc=test`` with
password ``admin-pw``)::

    ou=people:  uid=alice (password "alice-pw", mail alice@example.test, in "scanners")
                uid=bob   (password "bob-pw")
                uid=carol (password "carol-pw", in "scanners" and "apps")
                cn=svc-relay (password "svc-pw": the search-mode service account)
    ou=groups:  cn=scanners (groupOfNames: alice, carol), cn=apps (carol)

Anonymous clients may bind but read nothing (so a search-mode backend must use the
service account); users may read their own entry; the service account reads everything
but passwords.

Usage::

    from ldapserver import LdapServer

    with LdapServer() as ldap:                 # plain LDAP (StartTLS offered too)
        ldap.url                               # "ldap://127.0.0.1:PORT"
        ldap.ldaps_url                         # "ldaps://127.0.0.1:PORT2"
        ldap.ca_file                           # the trustme CA that signed slapd's certificate
        ldap.stop(); ldap.start()              # simulate an outage (same ports)

    LdapServer(tls=False)                      # no certificate, no ldaps listener

Debian packages: ``slapd`` (the server, slapadd). :func:`ensure_installed` installs it
non-interactively (debconf ``slapd/no_configuration=true``, and a policy-rc.d that keeps
the system's slapd from starting while apt runs) when it is missing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from debian import apt_install

__all__ = ["DEBIAN_PACKAGES", "LdapServer", "ensure_installed", "slapd_binary", "ssha"]

DEBIAN_PACKAGES = ("slapd",)
HOST = "127.0.0.1"
SUFFIX = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "admin-pw"
SERVICE_DN = f"cn=svc-relay,ou=people,{SUFFIX}"
SERVICE_PW = "svc-pw"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_MODULE_DIR = "/usr/lib/ldap"
_SCHEMA_DIR = "/etc/ldap/schema"

# name -> (password, groups)
USERS = {
    "alice": ("alice-pw", ("scanners",)),
    "bob": ("bob-pw", ()),
    "carol": ("carol-pw", ("scanners", "apps")),
}
GROUPS = ("scanners", "apps")


def slapd_binary() -> str | None:
    return shutil.which("slapd", path=_SBIN_PATH)


def ensure_installed() -> str:
    """Install Debian's slapd if it is missing; return the path of the binary."""
    path = slapd_binary()
    if path and shutil.which("slapadd", path=_SBIN_PATH):
        return path
    # slapd/no_configuration: otherwise the package's postinst builds a database for the
    # machine's domain and asks for an admin password.
    stderr = apt_install(DEBIAN_PACKAGES, debconf="slapd slapd/no_configuration boolean true\n")
    path = slapd_binary()
    if not path:
        raise RuntimeError(f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed: {stderr[-2000:]}")
    return path


def ssha(password: str) -> str:
    """An OpenLDAP {SSHA} userPassword value."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ldif() -> str:
    people = f"ou=people,{SUFFIX}"
    groups = f"ou=groups,{SUFFIX}"
    out = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {people}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {groups}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: svc-relay\nuserPassword: {ssha(SERVICE_PW)}\n",
    ]
    for name, (password, _) in USERS.items():
        out.append(
            f"dn: uid={name},{people}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name.title()}\n"
            f"sn: {name.title()}\nmail: {name}@example.test\nuserPassword: {ssha(password)}\n")
    return "\n".join(out)


def _group_ldif() -> list[tuple[str, list[str]]]:
    return [(f"cn={g},ou=groups,{SUFFIX}",
             [f"uid={u},ou=people,{SUFFIX}" for u, (_, gs) in USERS.items() if g in gs])
            for g in GROUPS]


class LdapServer:
    """slapd on 127.0.0.1:free port; a context manager. See the module doc."""

    def __init__(self, *, tls: bool = True, startup_timeout: float = 15.0) -> None:
        self.tls = tls
        self.startup_timeout = startup_timeout
        self.port = _free_port()
        self.ldaps_port = _free_port() if tls else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file: str | None = None
        self.suffix = SUFFIX
        self.admin_dn, self.admin_password = ADMIN_DN, ADMIN_PW
        self.service_dn, self.service_password = SERVICE_DN, SERVICE_PW

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if self.ldaps_port is None:
            raise RuntimeError("LdapServer(tls=False) has no ldaps listener")
        return f"ldaps://{HOST}:{self.ldaps_port}"

    # -- setup ----------------------------------------------------------------------------

    def _write_config(self) -> Path:
        assert self.dir is not None
        tls_lines = ""
        if self.tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert(HOST, "localhost")
            ca_path = self.dir / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_path))
            cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
            cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
            self.ca_file = str(ca_path)
            tls_lines = (f"TLSCACertificateFile {ca_path}\n"
                         f"TLSCertificateFile {self.dir / 'cert.pem'}\n"
                         f"TLSCertificateKeyFile {self.dir / 'key.pem'}\n")
        conf = self.dir / "slapd.conf"
        conf.write_text(f"""\
# written by relaywarden tests/ldapserver.py
include {_SCHEMA_DIR}/core.schema
include {_SCHEMA_DIR}/cosine.schema
include {_SCHEMA_DIR}/inetorgperson.schema
pidfile {self.dir / 'slapd.pid'}
argsfile {self.dir / 'slapd.args'}
modulepath {_MODULE_DIR}
moduleload back_mdb
moduleload memberof
loglevel none
{tls_lines}
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PW)}
directory {self.dir / 'db'}
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
""")
        (self.dir / "db").mkdir()
        return conf

    def _populate(self) -> None:
        # The people go in with slapadd (offline, fast); the groups over LDAP, so that
        # the memberof overlay sees them and writes memberOf onto each member.
        import ldap3

        conn = ldap3.Connection(ldap3.Server(HOST, port=self.port), ADMIN_DN, ADMIN_PW,
                                auto_bind=True, receive_timeout=10)
        try:
            for dn, members in _group_ldif():
                ok = conn.add(dn, ["groupOfNames"], {"cn": dn.split(",")[0][3:], "member": members})
                if not ok:
                    raise RuntimeError(f"ldapserver: adding {dn}: {conn.result}")
        finally:
            conn.unbind()

    def __enter__(self) -> LdapServer:
        binary = slapd_binary() or ensure_installed()
        self._binary = binary
        self._tmp = tempfile.TemporaryDirectory(prefix="relaywarden-slapd-")
        self.dir = Path(self._tmp.name)
        try:
            conf = self._write_config()
            ldif = self.dir / "base.ldif"
            ldif.write_text(_ldif())
            slapadd = shutil.which("slapadd", path=_SBIN_PATH) or "slapadd"
            done = subprocess.run([slapadd, "-f", str(conf), "-l", str(ldif)],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"slapadd failed ({done.returncode}): {done.stderr[-2000:]}")
            self.start()
            self._populate()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the process ----------------------------------------------------------------------

    def start(self) -> None:
        assert self.dir is not None
        urls = self.url + "/"
        if self.ldaps_port is not None:
            urls += f" {self.ldaps_url}/"
        # -d 0: stay in the foreground (we own the process) without debug output.
        self.proc = subprocess.Popen(
            [self._binary, "-f", str(self.dir / "slapd.conf"), "-h", urls, "-d", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        ports = [p for p in (self.port, self.ldaps_port) if p is not None]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"slapd exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                for port in ports:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"slapd did not listen on {HOST}:{self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
