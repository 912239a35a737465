#!/bin/bash
# Remove Pullgate from this Mac (docs/deploy/macos.md):
#
#   sudo "/Applications/Pullgate.app/Contents/Resources/uninstall.sh"
#
# Stops the agent and the tray, removes the app, the LaunchDaemon, the LaunchAgent, the
# `pullgate` link, the policy cache, the pkg's receipt and each user's docker context
# "pullgate" (Docker Desktop's is selected again where ours was). The audit log is KEPT in
# /Library/Logs/Pullgate: it is IT's record; delete it by hand once it is archived.
# Remove the MDM profile first, or its managed login items keep the items listed.
# PULLGATE_ROOT (default /) removes from another volume or, in tests, a temporary root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=pullgate-common.sh
. "${here}/pullgate-common.sh"
pg_init "${PULLGATE_ROOT:-/}"
if [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run as root (sudo)" >&2
    exit 1
fi
pg_stop
pg_remove_contexts
rm -f "$PG_DAEMON_PLIST" "$PG_TRAY_PLIST"
if [ -L "$PG_CLI_LINK" ]; then
    rm -f "$PG_CLI_LINK"
fi
rm -rf "$PG_STATE" "$PG_RUN"
# The app holds this script: bash keeps it open, so removing it is safe, and last.
rm -rf "$PG_APP"
if [ "$PG_LIVE" = yes ]; then
    pkgutil --forget "$PG_PKG_ID" >/dev/null 2>&1 || true
fi
echo "pullgate: removed. The audit log is kept in ${PG_LOGS}; delete it once archived."
