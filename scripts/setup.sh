#!/usr/bin/env bash
# Set up a development environment from scratch: Debian packages (when root or sudo is
# available), a virtualenv in .venv with the locked dependencies, and Pullgate itself
# installed in editable mode. Safe to run again; it only does what is missing.
#
# Usage: bash scripts/setup.sh [--system-deps]
#   --system-deps  also install the Debian packages the real-Docker tests need
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${PULLGATE_VENV:-.venv}
LOCK=requirements/dev.lock

as_root() {
    if [[ ${EUID} -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# A fresh Debian has python3 but not always venv/pip.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "setup: installing python3-venv"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip
fi

if [[ ${1:-} == --system-deps ]]; then
    as_root bash scripts/install-system-deps.sh
fi

if [[ ! -x ${VENV}/bin/python ]]; then
    echo "setup: creating ${VENV}"
    python3 -m venv "${VENV}"
fi

stamp=${VENV}/.pullgate-lock.sha256
want=$(sha256sum "${LOCK}" pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f ${stamp} || $(cat "${stamp}") != "${want}" ]]; then
    echo "setup: installing locked dependencies"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
        -r "${LOCK}"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        --no-build-isolation -e .
    echo "${want}" >"${stamp}"
fi
# The OpenID provider of the sign-in tests (tests/oidc): npm packages exactly as locked,
# no install scripts. Re-run only when the lock changed since the last install.
oidc=tests/oidc
if command -v npm >/dev/null 2>&1; then
    stamp=${oidc}/node_modules/.pullgate-lock.sha256
    want=$(sha256sum "${oidc}/package-lock.json" | cut -d' ' -f1)
    if [[ ! -f ${stamp} || $(cat "${stamp}") != "${want}" ]]; then
        echo "setup: installing ${oidc} (npm ci)"
        (cd "${oidc}" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
        echo "${want}" >"${stamp}"
    fi
    if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
                  process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
        echo "setup: WARNING: oidc-provider 9 needs Node.js >= 20.19; found $(node --version 2>&1)"
    fi
else
    echo "setup: npm not found; the OpenID provider tests cannot run (use --system-deps)"
fi
echo "setup: ready (${VENV}/bin/pullgate)"
