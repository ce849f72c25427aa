"""schemathesis against the live API, from the OpenAPI document the server serves: every
operation, generated and negative inputs, with an admin's API token. No answer may be a
server error (500), and every answer must be one the document allows."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import start_console

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


@pytest.mark.slow   # the API fuzzed for half a minute; test_api.py covers every endpoint
def test_schemathesis(tmp_path):
    c = start_console(tmp_path, users={"ada": "admin"}, extra="""
[auth.throttle]
delays = [0]
""")
    try:
        for i in range(3):
            c.send(f"fuzz{i}@example.net")
        c.send("x@gmail.com", sender="scan@example.com", source="127.0.0.3")
        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        started = time.monotonic()
        proc = subprocess.run(
            [st, "run", f"{c.base}/api/v1/openapi.json",
             "--checks", CHECKS,
             "--max-examples", "10",
             "--exclude-path", "/api/v1/log/stream",     # an endless event stream
             "--header", f"Authorization: Bearer {c.tokens['ada']}",
             "--request-timeout", "10",
             "--seed", "1",
             "--phases", "coverage,fuzzing",    # stateful runs too long for the budget
             "--max-time", "30",
             "--no-color"],
            capture_output=True, text=True, timeout=90,
            cwd=tmp_path)                # its example database stays out of the checkout
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert took < 60, took
        # The run reached the API (not just a schema that failed to load).
        assert "openapi.json" in proc.stdout or "Schemathesis" in proc.stdout
    finally:
        c.relay.stop()
