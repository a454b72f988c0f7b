#!/usr/bin/env bash
# The newest releases pyproject.toml allows, in their own venv (.venv-latest): the CLI's usage and
# in-process tests must pass there too, so the next breaking release of typer, click or rich is
# caught the day it lands, not by a user; so must the bounded GGUF reader (gguf), signing
# (cryptography) and the fuzz tier (hypothesis). CI runs this after the locked suite.
set -euo pipefail
cd "$(dirname "$0")/.."
NATIVELLM_UNLOCKED=1 NATIVELLM_VENV=.venv-latest scripts/bootstrap.sh --test
echo "== newest releases: $(.venv-latest/bin/python -m pip freeze | grep -iE '^(typer|click|rich|httpx)==' | tr '\n' ' ')"
NATIVELLM_UNLOCKED=1 .venv-latest/bin/python -m pytest -q -p no:cacheprovider \
  tests/unit/test_cli_inprocess.py tests/unit/test_cli_options.py tests/unit/test_architecture.py \
  tests/unit/test_gguf_bounds.py tests/unit/test_models_gguf.py tests/unit/test_signing.py tests/fuzz "$@"
