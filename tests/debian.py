"""Installing a Debian package from a test fixture, without starting its system service."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def apt_install(packages: list[str] | tuple[str, ...], *, debconf: str = "") -> str:
    """apt-get install the packages (as root); returns apt's stderr for error messages.

    A policy-rc.d that denies service starts is put in place while apt runs (unless the
    machine has one): the tests run their own instances on their own ports.
    """
    if os.geteuid() != 0:
        raise RuntimeError("not installed; run: sudo apt-get install -y " + " ".join(packages))
    if debconf:
        subprocess.run(["debconf-set-selections"], input=debconf, text=True, check=False,
                       capture_output=True)
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary: written by relaywarden tests/debian.py\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env, capture_output=True, text=True, timeout=600)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    return done.stderr
