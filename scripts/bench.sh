#!/usr/bin/env bash
# Installs what the benchmark needs on a fresh Debian machine (relaywarden in .venv, Postfix
# for smtp-source / smtp-sink and the reference relay), then runs bench/relay_bench.py with
# the arguments given (e.g. `bash scripts/bench.sh --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh fast
command -v smtp-source >/dev/null 2>&1 || apt_install postfix
exec .venv/bin/python bench/relay_bench.py "$@"
