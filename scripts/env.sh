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

python3 - <<'PY' || { echo "relaywarden needs Python 3.11 or newer" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; python3 -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[${1}]"
