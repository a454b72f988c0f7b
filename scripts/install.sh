#!/usr/bin/env bash
# The main job: install nativellm and build llama.cpp for this machine.
# Extra arguments go to `nativellm build` (for example --source DIR or --ref TAG).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/nativellm build --auto "$@"
