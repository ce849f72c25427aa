#!/usr/bin/env bash
# Installs relaywarden into .venv and runs it: with no arguments, the embedded default config
# (127.0.0.1:2525, relays for localhost only, holds all mail in the queue, data under ./var).
# Arguments go to `serve`, e.g. `bash scripts/serve.sh --config relay.toml`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh fast
exec .venv/bin/relaywarden serve "$@"
