#!/usr/bin/env bash
# Type-check the platform code for the systems it runs on but CI does not (issue 16):
# mypy --platform win32 and --platform darwin (strict, as configured in pyproject.toml),
# each with its own cache so the Linux run's stays warm.
#
# Usage: bash scripts/mypy-platforms.sh [win32|darwin]...   (default: both)
#
# Both: the whole agent and tray, nothing excluded (on Windows the CLI and the tray reach
# the agent through its control pipe, agent.platform.pipe_client).
# Windows-only modules start with `assert sys.platform == "win32"`, so the Linux run
# skips them and this one checks them with types-pywin32; unix-only code elsewhere sits
# behind `sys.platform` checks that mypy reads.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${PULLGATE_VENV:-.venv}

WIN32=(agent ui)
DARWIN=(agent ui)

platforms=("$@")
[[ ${#platforms[@]} -gt 0 ]] || platforms=(win32 darwin)
for platform in "${platforms[@]}"; do
    case ${platform} in
        win32) files=("${WIN32[@]}") ;;
        darwin) files=("${DARWIN[@]}") ;;
        *) echo "mypy-platforms: unknown platform ${platform} (win32, darwin)" >&2; exit 2 ;;
    esac
    echo "== mypy --platform ${platform}"
    "${VENV}/bin/python" -m mypy --platform "${platform}" --follow-imports=silent \
        --cache-dir ".mypy_cache/platform-${platform}" "${files[@]}"
done
