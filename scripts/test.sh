#!/usr/bin/env bash
# Run every test tier this machine can run: lint, types, unit, integration (real
# compiles of llama.cpp from the llama-cpp-python sdist), e2e (real systemd).
# Extra arguments go to pytest (for example -m unit, or -k smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
export PATH="$PWD/.venv/bin:$PATH"
# ccache makes the session-wide llama.cpp build cheap after the first run.
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
ccache --max-size=5G >/dev/null 2>&1 || true
echo "== ruff"; ruff check src tests benchmarks; ruff format --check src tests benchmarks
echo "== mypy"; mypy; mypy tests
echo "== pytest"
# Every tier by name (a bare `pytest` runs only tests/unit), unless the arguments name tests themselves.
tiers=(tests/unit tests/fuzz tests/badinput tests/integration tests/e2e)
for arg in "$@"; do
  case "$arg" in tests/*|./tests/*) tiers=(); break ;; esac
done
python -m pytest "${tiers[@]}" "$@"
