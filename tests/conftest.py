"""Fixtures that run the real relay as a process on loopback, as an admin would."""

from __future__ import annotations

import pytest

# The shared helpers live in tests/support/ (the fixtures below use them).
from support.relay import (  # noqa: F401,E402
    RelayProcess,
    free_port,
    start_relay,
    wait_admin,
    wait_port,
    write_config,
)
from support.relay import _HANDED_OUT  # noqa: F401,E402


from support.configs import BASIC, HERMETIC  # noqa: F401,E402


@pytest.fixture
def relay(tmp_path):
    """The relay with the BASIC config: hosted example.com, relay for 127.0.0.1."""
    port = free_port()
    config = write_config(tmp_path, BASIC, main=port)
    r = start_relay(config, tmp_path / "var", {"main": port})
    yield r
    r.stop()
