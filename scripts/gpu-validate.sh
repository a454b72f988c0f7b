#!/usr/bin/env bash
# GPU validation on a lent GPU machine (no network): see scripts/gpu_validate.py for the steps.
#   scripts/gpu-validate.sh ARTIFACT [--trusted-key PUB] [--out DIR] [--dry-run] [--shape 7b|tiny]
# Python packages the machine lacks travel as wheels in .whl/ (pip download here; README
# "GPU validation"); they are installed into /tmp/site, never into the machine's own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c 'import gguf, zstandard, cryptography, tomli_w' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nativellm-site .whl/*.whl
  export PYTHONPATH="/tmp/nativellm-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_validate.py "$@"
