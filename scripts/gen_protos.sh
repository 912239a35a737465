#!/usr/bin/env bash
# Regenerate the Python modules and typed stubs of Pullgate's BuildKit message subsets
# (agent/core/inspection/buildkit/protos/*.proto) with the pinned grpcio-tools' protoc
# and mypy-protobuf. tests/test_buildkit_protos.py fails when they are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PULLGATE_VENV:-.venv}/bin/python
OUT=${1:-.}
"${PY}" -m grpc_tools.protoc -I . \
    --python_out="${OUT}" \
    --plugin=protoc-gen-mypy="$(dirname "${PY}")/protoc-gen-mypy" --mypy_out="${OUT}" \
    agent/core/inspection/buildkit/protos/*.proto
