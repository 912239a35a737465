#!/usr/bin/env bash
# Quick start: set up Pullgate and run the agent in the foreground, in front of this
# machine's Docker daemon, with the built-in default policy (no organisation policy is
# configured yet). Installs and starts Docker first if there is none. Ctrl-C stops it.
#
# Usage: bash scripts/agent.sh [pullgate agent options...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PULLGATE=${PULLGATE_VENV:-.venv}/bin/pullgate

as_root() {
    if [[ ${EUID} -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

daemon_socket() {
    host=${DOCKER_HOST:-}
    for sock in "${host#unix://}" /var/run/docker.sock; do
        [[ -n ${sock} && -S ${sock} ]] && { echo "${sock}"; return 0; }
    done
    return 1
}

if ! daemon_socket >/dev/null; then
    echo "agent: no Docker daemon found; installing and starting Docker (docker.io)"
    if ! command -v dockerd >/dev/null; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
    fi
    if ! daemon_socket >/dev/null; then
        if [[ -d /run/systemd/system ]]; then
            as_root systemctl start docker
        else
            # No init system (a container or a minimal VM): run dockerd in the background.
            as_root sh -c 'nohup dockerd >/var/log/pullgate-dockerd.log 2>&1 &'
        fi
        for _ in $(seq 50); do daemon_socket >/dev/null && break; sleep 0.2; done
    fi
    daemon_socket >/dev/null || {
        echo "agent: Docker did not start; see /var/log/pullgate-dockerd.log" >&2
        exit 1
    }
fi

echo "agent: in another terminal, try:"
if [[ ${EUID} -eq 0 ]]; then listen=/run/pullgate/docker.sock
else listen=${XDG_RUNTIME_DIR:-/run/user/${UID}}/pullgate/docker.sock; fi
echo "  export DOCKER_HOST=unix://${listen}"
echo "  docker pull alpine            # allowed: a Docker Official Image"
echo "  docker pull someuser/tool     # refused: a community image"
echo "  ${PULLGATE} check nginx someuser/nginx"
exec "${PULLGATE}" agent --upstream "unix://$(daemon_socket)" "$@"
