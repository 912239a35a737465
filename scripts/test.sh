#!/usr/bin/env bash
# Set up everything the test suite needs from scratch, then run the same checks as CI:
# ruff (lint and format), mypy, and pytest. Extra arguments go to pytest.
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
echo "== pytest"
"${PY}" -m pytest "$@"
