#!/usr/bin/env bash
# Quick start: set up Pullgate, then show `pullgate check` deciding a few images with the
# built-in default policy (no organisation policy configured). The socket shim that
# enforces these decisions on real pulls comes with `pullgate agent`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PULLGATE=${PULLGATE_VENV:-.venv}/bin/pullgate

echo
echo "\$ pullgate check alpine nginx:1.27 ghcr.io/acme/app someuser/nginx docker/Docker"
"${PULLGATE}" check alpine nginx:1.27 ghcr.io/acme/app someuser/nginx docker/Docker || \
    echo "(exit $?: 0 all allowed, 1 something denied, 2 bad input)"
