#!/usr/bin/env bash
# Install what nativellm needs on a Debian/Ubuntu host and nativellm itself into .venv.
# Usage: scripts/bootstrap.sh [--test]     (--test also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

# The e2e tier also needs systemd, dbus, iproute2 (ss) and procps (pgrep) in the image.
APT_PACKAGES=(build-essential ccache git pkg-config libsystemd-dev python3-venv python3-dev zstd curl
              systemd dbus iproute2 procps)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "bootstrap: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "bootstrap: not a Debian system; install a C/C++ compiler, ccache, git, pkg-config and libsystemd-dev yourself" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "bootstrap: $(.venv/bin/nativellm --version) installed in .venv"
