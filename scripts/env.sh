# Sourced by scripts/serve.sh and scripts/test.sh: a virtual environment in .venv with the
# project installed (Debian's own Python refuses system-wide pip installs, PEP 668).
# Usage: . scripts/env.sh EXTRAS   (e.g. "fast" or "dev,fast")
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export PATH="$PATH:/usr/sbin:/sbin"

apt_install() {
  echo "installing Debian packages: $*" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
  # The tests run their own unbound and Postfix instances: keep the packages' system services
  # from starting (policy-rc.d 101), unless the machine already has a policy of its own.
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
  [ -z "$guard" ] || $sudo rm -f /usr/sbin/policy-rc.d
}

# The interpreter .venv is made from: RELAYWARDEN_PYTHON if set; else the distribution's
# /usr/bin/python3 if it is 3.11 or newer (Debian builds it with PGO and LTO and links
# libpython into the executable: the same code used 10-15% less CPU on it than on a CPython
# built from source with the defaults, --enable-shared and no --enable-optimizations, as
# pyenv builds it; docs/benchmarks.md, 2026-12-07); else python3 on PATH. An existing .venv
# is kept whatever it was made from: `rm -rf .venv` to make it again.
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
python="${RELAYWARDEN_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ] && new_enough /usr/bin/python3; then python=/usr/bin/python3
  else python=python3; fi
fi
new_enough "$python" || { echo "relaywarden needs Python 3.11 or newer ($python)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv 2>/dev/null \
    || { rm -rf .venv; apt_install python3-venv; "$python" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[${1}]"
