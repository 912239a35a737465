#!/usr/bin/env bash
# Set up everything the test suite needs from scratch, then run the same checks as CI:
# ruff (lint and format), mypy, the import contracts, and pytest. Extra arguments go to pytest.
#
# Usage: bash scripts/test.sh [PYTEST-ARGS...]
set -euo pipefail

cd "$(dirname "$0")/.."
bash scripts/setup.sh --system-deps
VENV=${PULLGATE_VENV:-.venv}
PY=${VENV}/bin/python

echo "== ruff"
"${PY}" -m ruff check .
"${PY}" -m ruff format --check .
echo "== mypy"
"${PY}" -m mypy
# The Windows and macOS code, type-checked for those systems (issue 16).
bash scripts/mypy-platforms.sh win32 darwin
echo "== import contracts (docs/architecture.md)"
"${VENV}/bin/lint-imports"
echo "== pytest"
"${PY}" -m pytest "$@"
