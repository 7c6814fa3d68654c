#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: creates .venv (if missing) and installs deepret with its test extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
if ! python -c "import deepret, pytest" 2>/dev/null || [[ pyproject.toml -nt .venv/.deepret-installed ]]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e '.[test]'
  touch .venv/.deepret-installed
fi
