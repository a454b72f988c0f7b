#!/usr/bin/env bash
# Install what nativellm needs on a Debian/Ubuntu host and nativellm itself into .venv.
# Usage: scripts/bootstrap.sh [--test]     (--test also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

# The e2e tier also needs systemd, dbus, iproute2 (ss) and procps (pgrep) in the image, and python3-apt
# for the Ansible role's package task (ansible's apt module runs under the system python3).
# chromium: the browser test of the web UI. Node.js and npm build the web UI; a host that has them
# from elsewhere (NodeSource bundles npm with nodejs) keeps its own.
# Vulkan (the Vulkan tests build and serve on Mesa's software device, lavapipe): mesa-vulkan-drivers
# (the device), libvulkan-dev (loader + headers), glslc and spirv-headers (the shader build),
# vulkan-tools (vulkaninfo, which `detect` reads).
APT_PACKAGES=(build-essential ccache git pkg-config libsystemd-dev python3-venv python3-dev python3-apt zstd curl
              systemd dbus iproute2 procps chromium
              mesa-vulkan-drivers libvulkan-dev glslc spirv-headers vulkan-tools)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)
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
VENV=${NATIVELLM_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The locked set (constraints.txt) is what CI tests; NATIVELLM_UNLOCKED=1 takes the newest releases
# that pyproject.toml allows instead (scripts/check-latest.sh does that in CI).
LOCK=(-c constraints.txt)
[ -n "${NATIVELLM_UNLOCKED:-}" ] && LOCK=(--upgrade --upgrade-strategy eager)
if [ "${1:-}" = "--test" ] && [ -z "${NATIVELLM_UNLOCKED:-}" ]; then
  # cuda13: cuBLAS from NVIDIA's wheel (the toolkit here has nvcc only); the CUDA configure and
  # compile tests build against it (tests/integration/test_cuda_compile.py).
  "$VENV/bin/python" -m pip install -q "${LOCK[@]}" -e ".[test,cuda13]"
elif [ "${1:-}" = "--test" ]; then
  "$VENV/bin/python" -m pip install -q "${LOCK[@]}" -e ".[test]"
else
  "$VENV/bin/python" -m pip install -q "${LOCK[@]}" -e .
fi
echo "bootstrap: $("$VENV/bin/nativellm" --version) installed in $VENV"
