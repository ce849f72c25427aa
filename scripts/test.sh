#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs all of it.
# Real peers come from Debian: swaks, Postfix's smtp-source / smtp-sink, fetchmail (ODMR).
# The web console's browser tests drive Debian's chromium.
# Runs `ruff check src tests` and `mypy src` before pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k smuggling`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh dev,fast
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
# swaks --tls / --tlsc (the inbound TLS tests) need Perl's OpenSSL binding.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v smtp-source >/dev/null 2>&1 || need+=(postfix)
command -v unbound >/dev/null 2>&1 || need+=(unbound)
command -v slapd >/dev/null 2>&1 || need+=(slapd)
command -v fetchmail >/dev/null 2>&1 || need+=(fetchmail)
# bench/profile_relay.py --callgrind (tests/test_bench.py): instructions per message.
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# Milters (tests/test_milters.py): a real rspamd (its proxy worker in milter mode), and
# clamav-milter in front of clamd (a local test signature: no freshclam download).
command -v rspamd >/dev/null 2>&1 || need+=(rspamd)
[[ -x /usr/sbin/clamd ]] || need+=(clamav-daemon)
[[ -x /usr/sbin/clamav-milter ]] || need+=(clamav-milter)
# The console's browser tests (tests/browser) drive Debian's chromium through Playwright;
# `playwright install` (a browser download) is never used.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
((${#need[@]} == 0)) || apt_install "${need[@]}"
# Lint and types first ([tool.ruff] and [tool.mypy] in pyproject.toml): either failing stops
# the run before the tests, with its findings on the terminal.
echo "ruff check src tests" >&2
.venv/bin/ruff check src tests || { echo "scripts/test.sh: ruff found problems (above)" >&2; exit 1; }
echo "mypy src" >&2
.venv/bin/mypy src || { echo "scripts/test.sh: mypy found problems (above)" >&2; exit 1; }
# Two worker processes (pytest-xdist): most of a test's time is waiting on the real relay,
# its peers and the disk, so two of them share the two cores well (17.6 -> 10.6 minutes for
# the whole suite on 2026-12-07). `-n 0` among the arguments runs it in one process (for -s).
exec .venv/bin/python -m pytest -n 2 "$@"
