#!/usr/bin/env bash
# Newer Vulkan and SPIR-V headers in a private prefix, for a llama.cpp tree that needs more than the
# distribution ships (Debian 12's 1.3.239 lacks vk::LayerSettingEXT, which trees from late 2026 use).
# Fetches Debian 13's libvulkan-dev and spirv-headers with apt-get's own client (a private source
# list and state: the system's apt configuration is untouched) and unpacks them; nothing is installed.
# The loader stays the system's. Prints the defines to build with:
#   nativellm build --backend vulkan $(scripts/vulkan-headers.sh ~/.cache/vulkan-headers)
# Usage: scripts/vulkan-headers.sh DEST [SUITE]      (SUITE: a Debian suite, default trixie)
set -euo pipefail
dest=${1:?usage: vulkan-headers.sh DEST [SUITE]}
suite=${2:-trixie}
prefix="$dest/$suite"
if [ ! -f "$prefix/usr/include/vulkan/vulkan_core.h" ]; then
  state=$(mktemp -d)
  trap 'rm -rf "$state"' EXIT
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$state/sources.list"
  opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o Dir::State::status=/dev/null
        -o APT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update >&2
  (cd "$state/debs" && apt-get "${opts[@]}" download libvulkan-dev spirv-headers >&2)
  mkdir -p "$prefix.tmp"
  for deb in "$state"/debs/*.deb; do dpkg-deb -x "$deb" "$prefix.tmp"; done
  rm -rf "$prefix" && mv "$prefix.tmp" "$prefix"
fi
# The system's loader (the prefix's libvulkan.so is a dangling link; other packages, chromium, ship their own).
loader=$(/sbin/ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 / && !/chromium/ {print $NF; exit}' || true)
echo "--define Vulkan_INCLUDE_DIR=$prefix/usr/include --define CMAKE_PREFIX_PATH=$prefix/usr" \
     "${loader:+--define Vulkan_LIBRARY=$loader}"
