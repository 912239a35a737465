#!/usr/bin/env bash
# Build Pullgate's Linux packages from this checkout with one command: the frozen onedir
# bundle (PyInstaller), then a .deb (dpkg-deb) and an .rpm (rpmbuild) of it, under
# build/linux/ (gitignored). Needs the dev venv (scripts/setup.sh) and Debian's dpkg-dev,
# rpm and lintian (scripts/install-system-deps.sh). Arguments go to
# packaging/linux/build.py (--out DIR, --version V, --release N, --bundle DIR).
#
# Usage: bash packaging/build.sh [ARGS...]
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${PULLGATE_VENV:-.venv}
[[ -x ${VENV}/bin/python ]] || bash scripts/setup.sh
exec "${VENV}/bin/python" packaging/linux/build.py "$@"
