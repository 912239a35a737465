#!/usr/bin/env bash
# Type-check the platform code for the systems it runs on but CI does not (issue 16):
# mypy --platform win32 and --platform darwin (strict, as configured in pyproject.toml),
# each with its own cache so the Linux run's stays warm.
#
# Usage: bash scripts/mypy-platforms.sh [win32|darwin]...   (default: both)
#
# darwin: the whole agent and tray.
# win32: the modules whose code is Windows' or runs there first; their imports are
# followed but only these are reported (--follow-imports=silent): the rest of the agent
# does not run on Windows yet (os.geteuid, AF_UNIX sockets, SO_PEERCRED;
# docs/deploy/windows.md). Windows-only modules start with
# `assert sys.platform == "win32"`, so the Linux run skips them and this one checks
# them with types-pywin32.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${PULLGATE_VENV:-.venv}

WIN32=(
    agent/platform/windows.py
    agent/platform/service_status.py
    agent/platform/service_output.py
    agent/platform/named_pipe_server.py
    agent/platform/windows_eventlog.py
    agent/platform/windows_sessions.py
    agent/platform/paths.py
    agent/daemon/winservice.py
    agent/daemon/handle.py
    agent/cli/service_cmd.py
    agent/config/sources.py
)
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
