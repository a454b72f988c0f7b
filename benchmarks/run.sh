#!/usr/bin/env bash
# Build the four variants through nativellm and measure them side by side; writes benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" benchmarks/run.py "$@"
