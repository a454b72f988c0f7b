#!/usr/bin/env bash
# Re-lock: install nativellm[test,cuda13] with the newest releases pyproject.toml allows into a scratch venv
# and write their exact versions to constraints.txt (what bootstrap and CI install). Run the tests after.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q ".[test,cuda13]"
{
  echo "# The dependency set CI tests: scripts/bootstrap.sh installs nativellm with -c constraints.txt."
  echo "# Regenerate after a deliberate upgrade: scripts/lock.sh (the newest releases pyproject.toml allows)."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^nativellm'
} > constraints.txt
echo "lock: $(grep -vc '^#' constraints.txt) packages pinned in constraints.txt"
