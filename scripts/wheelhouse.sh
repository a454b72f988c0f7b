#!/usr/bin/env bash
# Build what a controller hands its fleet (the Ansible role's default install path): nativellm and
# every dependency as wheels at the locked versions (constraints.txt), plus pystemd's sdist and its
# build requirements, so a host whose Python has no matching pystemd wheel compiles it offline
# (against libsystemd-dev, which the role installs). Hosts then need no package index at all.
# Usage: scripts/wheelhouse.sh [DIR]     (default: ansible/wheelhouse, the role's default source)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-ansible/wheelhouse}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"
rm -f "$OUT"/nativellm-*.whl  # exactly one nativellm wheel: the role refuses a wheelhouse with two
"$PY" -m pip wheel -q -c constraints.txt -w "$OUT" .
"$PY" -m pip download -q --no-deps --no-binary pystemd -c constraints.txt pystemd -d "$OUT"
# pystemd's build-system requires, as pure-Python wheels that any host Python can use.
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PY" -m pip download -q --no-deps --only-binary :all: --platform any --implementation py \
  --python-version "$PYVER" -d "$OUT" "setuptools>=46.4.0" wheel cython
echo "wheelhouse: $(ls "$OUT" | wc -l) files in $OUT ($(ls "$OUT"/nativellm-*.whl | xargs -n1 basename))"
