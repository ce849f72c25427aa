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


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory):
    """One relay with the BASIC config for the tests of a module that only talk to it and
    leave nothing behind that another could see (no mail queued): one start instead of one
    a test (each start is three Python processes)."""
    tmp_path = tmp_path_factory.mktemp("shared-relay")
    port = free_port()
    config = write_config(tmp_path, BASIC, main=port)
    r = start_relay(config, tmp_path / "var", {"main": port})
    yield r
    r.stop()
