"""A real DNS server (Debian's unbound) on loopback, for tests that resolve names.

Tests meet DNS as a user would: over UDP and TCP, from a real recursive resolver with
real NXDOMAIN/NODATA/SERVFAIL answers, CNAME chasing and TTLs. unbound runs as our own
process on 127.0.0.1 and a free port, with a config file in a temp dir; it never talks
to anything but loopback (``outgoing-interface: 127.0.0.1``, and every name it can reach
is in its own root zone, so it never asks the internet's root servers).

Usage::

    from dnsserver import DnsServer

    records = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.10"], "AAAA": "::1", "ttl": 60},
        "mx2.example.test": {"A": "127.0.0.11"},
        "null.test": {"MX": [(0, ".")]},                  # null MX (RFC 7505)
        "www.example.test": {"CNAME": "mx1.example.test"},
        "127.0.0.10": {"PTR": "mx1.example.test"},        # an IP key means its reverse name
        "broken.test": "servfail",                         # this name and all below: SERVFAIL
        "slow.test": "timeout",                            # this name and all below: no answer
    }
    with DnsServer(records) as dns:
        resolver = Resolver(DnsSettings(nameservers=("127.0.0.1",), port=dns.port, timeout=1))
        # or: Resolver(dns.settings(timeout=1.0))

Record format: ``{name: {TYPE: value, ..., "ttl": seconds} | "servfail" | "timeout"}``.
A name is a domain (trailing dot optional) or an IPv4/IPv6 address, which stands for its
in-addr.arpa / ip6.arpa name. Values per type:

- ``MX``: a list of ``(preference, host)`` tuples (or one tuple, or "10 host" strings);
  host ``"."`` is the null MX.
- ``A`` / ``AAAA``: an address or a list of addresses.
- ``PTR``: a name or a list of names. ``CNAME``: one name.
- ``TXT``: a string or list of strings (quoted for you).
- any other type: rdata text or a list of them, written to the zone file as given.

Every name not described answers NXDOMAIN; a name that holds other types, or only has
names below it, answers NODATA (NOERROR, empty). Negative answers carry an SOA whose
minimum is ``negative_ttl``.

How the failures are made: a "servfail" name is delegated to a nameserver that does not
exist (a lame delegation: unbound answers SERVFAIL at once); a "timeout" name is
forwarded to a loopback UDP socket that this object holds open and never reads, so the
query is never answered (unbound keeps retrying for longer than any test waits).

The Debian package is ``unbound``; :func:`ensure_installed` installs it when missing.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.reversename

from debian import apt_install

__all__ = ["DEBIAN_PACKAGE", "DnsServer", "ensure_installed", "reverse_name", "unbound_binary"]

DEBIAN_PACKAGE = "unbound"
HOST = "127.0.0.1"
SERVFAIL = "servfail"
TIMEOUT = "timeout"
# The nameserver of the lame delegations that produce SERVFAIL: .invalid never exists
# (RFC 6761 6.4), so unbound can find no address for it.
_LAME_NS = "ns.relaywarden-lame.invalid."
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def unbound_binary() -> str | None:
    return shutil.which("unbound", path=_SBIN_PATH)


def ensure_installed() -> str:
    """Install Debian's unbound if it is missing; return the path of the binary.

    The package's own service must not start on the system's port 53 (and must not
    take over /etc/resolv.conf): while apt runs, a policy-rc.d that denies service starts
    is put in place unless one is already there.
    """
    path = unbound_binary()
    if path:
        return path
    stderr = apt_install([DEBIAN_PACKAGE])
    path = unbound_binary()
    if not path:
        raise RuntimeError(f"apt-get install {DEBIAN_PACKAGE} failed: {stderr[-2000:]}")
    return path


def reverse_name(ip: str) -> str:
    """The PTR owner name of an address, without the trailing dot."""
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


# -- the records description -> zone file ------------------------------------------------

def _absolute(name: str) -> str:
    name = name.strip()
    try:
        return reverse_name(name) + "."
    except Exception:  # not an address: a domain name
        pass
    if not name or name == ".":
        return "."
    return name.lower().rstrip(".") + "."


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)) and not (
        isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int)
    ):
        return list(value)
    return [value]


def _rdatas(rtype: str, value: Any) -> list[str]:
    out = []
    for item in _as_list(value):
        if rtype == "MX":
            if isinstance(item, str):
                pref, _, host = item.strip().partition(" ")
                item = (int(pref), host.strip())
            pref, host = item
            out.append(f"{int(pref)} {_absolute(host)}")
        elif rtype == "A":
            out.append(str(ipaddress.IPv4Address(item)))
        elif rtype == "AAAA":
            out.append(str(ipaddress.IPv6Address(item)))
        elif rtype in ("PTR", "CNAME", "NS"):
            out.append(_absolute(item))
        elif rtype == "TXT":
            text = str(item).replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'"{text}"')
        else:
            out.append(str(item))
    if rtype == "CNAME" and len(out) != 1:
        raise ValueError("a CNAME holds exactly one name")
    return out


def _zone_lines(records: Mapping[str, Any], *, ttl: int, negative_ttl: int
                ) -> tuple[list[str], list[str], list[str]]:
    """Returns (zone file lines, servfail names, timeout names)."""
    lines = [
        f". 86400 IN SOA ns.root.invalid. hostmaster.root.invalid. 1 3600 600 86400 {negative_ttl}",
        ". 86400 IN NS ns.root.invalid.",
    ]
    servfail: list[str] = []
    timeout: list[str] = []
    for raw_name, spec in records.items():
        name = _absolute(raw_name)
        if isinstance(spec, str):
            kind = spec.lower()
            if kind == SERVFAIL:
                servfail.append(name)
                lines.append(f"{name} {ttl} IN NS {_LAME_NS}")
            elif kind == TIMEOUT:
                timeout.append(name)
            else:
                raise ValueError(f"{raw_name}: unknown behaviour {spec!r} (want 'servfail' or 'timeout')")
            continue
        if not isinstance(spec, Mapping):
            raise TypeError(f"{raw_name}: records must be a dict of TYPE -> value, or a behaviour string")
        rttl = int(spec.get("ttl", ttl))
        types = [t.upper() for t in spec if t != "ttl"]
        if "CNAME" in types and len(types) > 1:
            raise ValueError(f"{raw_name}: a CNAME cannot stand beside other data (RFC 1034 3.6.2)")
        for rtype, value in spec.items():
            if rtype == "ttl":
                continue
            for rdata in _rdatas(rtype.upper(), value):
                lines.append(f"{name} {rttl} IN {rtype.upper()} {rdata}")
    return lines, servfail, timeout


# -- the server ---------------------------------------------------------------------------

def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (unbound listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for the DNS server")


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class DnsServer:
    """unbound on 127.0.0.1:``port`` serving ``records``; see the module docstring.

    ``DnsServer(records, *, ttl=300, negative_ttl=30, startup_timeout=10.0)``; use it as a
    context manager, or call :meth:`start` and :meth:`stop` (it may be started again
    after a stop, on the same port when that is still free).
    """

    host = HOST

    def __init__(self, records: Mapping[str, Any], *, ttl: int = 300, negative_ttl: int = 30,
                 startup_timeout: float = 10.0) -> None:
        # Build the zone now, so a bad description fails at once, before any process.
        self._lines, self._servfail, self._timeout = _zone_lines(
            records, ttl=ttl, negative_ttl=negative_ttl)
        self.records = records
        self.startup_timeout = startup_timeout
        self.port: int = 0
        self._proc: subprocess.Popen | None = None
        self._blackhole: socket.socket | None = None
        self._dir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._log = ""

    # -- what tests use
    @property
    def nameservers(self) -> tuple[str, ...]:
        return (HOST,)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def settings(self, *, timeout: float = 1.0):
        """relaywarden's DnsSettings pointing at this server."""
        from relaywarden.resolver import DnsSettings

        return DnsSettings(nameservers=self.nameservers, port=self.port, timeout=timeout)

    @property
    def zone_text(self) -> str:
        return "\n".join(self._lines) + "\n"

    def log(self) -> str:
        """What unbound wrote to stderr (for failure messages)."""
        if self._dir:
            try:
                return (Path(self._dir) / "unbound.log").read_text(errors="replace")
            except OSError:
                pass
        return self._log

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle
    def start(self) -> "DnsServer":
        if self.running:
            return self
        binary = unbound_binary() or ensure_installed()
        self._dir = tempfile.mkdtemp(prefix="relaywarden-dns-")
        if self._timeout:
            # Bound, never read: queries sent here are never answered, and no ICMP
            # "port unreachable" tells unbound to give up early.
            self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._blackhole.bind((HOST, 0))
        errors = []
        for attempt in range(5):
            port = self.port if (attempt == 0 and self.port) else _free_port()
            try:
                self._launch(binary, port)
                return self
            except _PortBusy as e:
                errors.append(str(e))
        self.stop()
        raise RuntimeError("unbound could not bind a port: " + "; ".join(errors))

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._log = self.log()
            self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- internals
    def _config(self, port: int) -> str:
        d = self._dir
        assert d is not None
        conf = [
            "server:",
            f"  interface: {HOST}@{port}",
            f"  port: {port}",
            "  do-daemonize: no",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d}/unbound.pid"',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  num-threads: 1",
            "  do-ip4: yes",
            "  do-ip6: no",
            "  do-udp: yes",
            "  do-tcp: yes",
            # Only loopback, both ways: it answers 127/8 and sends only from 127.0.0.1.
            f"  outgoing-interface: {HOST}",
            "  do-not-query-localhost: no",
            "  access-control: 127.0.0.0/8 allow",
            "  module-config: \"iterator\"",
            "  minimal-responses: yes",
            "  qname-minimisation: no",
            "  infra-keep-probing: yes",
            "  msg-cache-size: 1m",
            "  rrset-cache-size: 1m",
            "  edns-buffer-size: 1232",
        ]
        # unbound's built-in local zones (test., localhost., 127.in-addr.arpa., the RFC 1918
        # reverse zones, ...) are answered before any zone data: turn them off for every
        # name we serve and all its parents, so our root zone decides.
        names = {_absolute(line.split(" ", 1)[0]) for line in self._lines}
        names.update(self._timeout)
        parents = set()
        for name in names:
            labels = name.rstrip(".").split(".")
            for i in range(len(labels)):
                if labels[i:] != [""]:
                    parents.add(".".join(labels[i:]) + ".")
        for zone in sorted(parents):
            conf.append(f'  local-zone: "{zone}" nodefault')
        # All our data is one root zone that unbound's iterator uses instead of the
        # internet's root servers (for-upstream): it resolves, follows CNAMEs and
        # delegations as a real recursive resolver does.
        conf += [
            "auth-zone:",
            '  name: "."',
            f'  zonefile: "{d}/root.zone"',
            "  for-upstream: yes",
            "  for-downstream: no",
            "  fallback-enabled: no",
        ]
        if self._timeout:
            assert self._blackhole is not None
            hole = self._blackhole.getsockname()[1]
            for name in self._timeout:
                conf += ["forward-zone:", f'  name: "{name}"', f"  forward-addr: {HOST}@{hole}"]
        conf += ["remote-control:", "  control-enable: no"]
        return "\n".join(conf) + "\n"

    def _launch(self, binary: str, port: int) -> None:
        d = Path(self._dir or "")
        (d / "root.zone").write_text(self.zone_text)
        (d / "unbound.conf").write_text(self._config(port))
        argv = [binary, "-d", "-c", str(d / "unbound.conf")]
        setpriv = shutil.which("setpriv", path=_SBIN_PATH)
        if setpriv:
            # If the test process dies hard, unbound goes with it.
            argv = [setpriv, "--pdeathsig", "TERM", *argv]
        log = open(d / "unbound.log", "wb")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self._proc = proc
        self.port = port
        self._finalizer = weakref.finalize(self, _terminate, proc)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = self.log()
                self._proc = None
                self._finalizer.detach()
                self._finalizer = None
                if "in use" in text or "could not open ports" in text or "bind" in text:
                    raise _PortBusy(f"port {port}: {text.strip()[-300:]}")
                raise RuntimeError(f"unbound exited with {proc.returncode}: {text[-2000:]}")
            if self._answers(port):
                return
            time.sleep(0.05)
        text = self.log()
        self.stop()
        raise RuntimeError(f"unbound did not answer on {HOST}:{port}: {text[-2000:]}")

    @staticmethod
    def _answers(port: int) -> bool:
        query = dns.message.make_query(".", "SOA")
        try:
            udp = dns.query.udp(query, HOST, port=port, timeout=0.5)
            tcp = dns.query.tcp(query, HOST, port=port, timeout=0.5)
        except (OSError, dns.exception.DNSException):
            return False
        return udp.rcode() == dns.rcode.NOERROR and tcp.rcode() == dns.rcode.NOERROR


class _PortBusy(Exception):
    pass
