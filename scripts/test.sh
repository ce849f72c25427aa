#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs all of it.
# Real peers come from Debian: swaks, and Postfix's smtp-source / smtp-sink.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k smuggling`).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export PATH="$PATH:/usr/sbin:/sbin"
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v smtp-source >/dev/null 2>&1 || need+=(postfix)
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
python3 -m pip install -q -e '.[dev]'
exec python3 -m pytest "$@"
