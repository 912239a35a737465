# shellcheck shell=bash
# shellcheck disable=SC2034 # PG_APP, PG_RUN and PG_PKG_ID are for the scripts that source this
# Pullgate's install functions on macOS, shared by the pkg's preinstall and postinstall
# (beside them in the pkg's Scripts) and by uninstall.sh (beside it in
# Pullgate.app/Contents/Resources). Every function is idempotent (safe to run twice, or
# after a failed run), and none ever removes or truncates the audit log in
# /Library/Logs/Pullgate.
#
# pg_init ROOT sets the paths under ROOT: the volume installed on ($3 of a pkg script,
# "/" normally). launchctl runs only when ROOT is "/" on a Mac; elsewhere (another
# volume, or the tests' temporary root on Linux) only the file system is changed.

PG_DAEMON_LABEL=com.pullgate.agent
PG_TRAY_LABEL=com.pullgate.tray
PG_PKG_ID=com.pullgate.pkg

pg_init() {
    local root=${1:-/}
    root=${root%/}
    PG_APP="${root}/Applications/Pullgate.app"
    PG_DAEMON_PLIST="${root}/Library/LaunchDaemons/${PG_DAEMON_LABEL}.plist"
    PG_TRAY_PLIST="${root}/Library/LaunchAgents/${PG_TRAY_LABEL}.plist"
    PG_STATE="${root}/Library/Application Support/Pullgate"
    PG_LOGS="${root}/Library/Logs/Pullgate"
    PG_RUN="${root}/var/run/pullgate"
    PG_CLI_LINK="${root}/usr/local/bin/pullgate"
    PG_LIVE=no
    if [ -z "$root" ] && [ "$(uname -s)" = Darwin ] && command -v launchctl >/dev/null 2>&1; then
        PG_LIVE=yes
    fi
}

pg_log() {
    echo "pullgate: $*"
}

pg_console_uid() {
    # The user at the login window's console, if one is logged in (not root, not loginwindow).
    local uid
    uid=$(stat -f %u /dev/console 2>/dev/null) || return 1
    [ -n "$uid" ] && [ "$uid" != 0 ] && echo "$uid"
}

pg_bootout() {
    # bootout DOMAIN/LABEL and wait until launchd has let go of it (bootstrap right after
    # an unfinished bootout fails with "Input/output error").
    local target=$1
    launchctl bootout "$target" >/dev/null 2>&1 || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        launchctl print "$target" >/dev/null 2>&1 || return 0
        sleep 1
    done
    pg_log "warning: $target still loaded after 10 s"
}

pg_stop() {
    # The agent and the console user's tray stop; the files stay.
    [ "$PG_LIVE" = yes ] || return 0
    pg_bootout "system/${PG_DAEMON_LABEL}"
    local uid
    if uid=$(pg_console_uid); then
        pg_bootout "gui/${uid}/${PG_TRAY_LABEL}"
    fi
}

pg_refuse_symlink() {
    if [ -L "$1" ]; then
        pg_log "error: $1 is a symbolic link; move it away and install again"
        return 1
    fi
}

pg_make_dirs() {
    # Root-owned and not writable by users: the state dir (0755) and the audit log (0750:
    # it holds every user's decisions). An existing directory keeps its files (the audit
    # chain continues across upgrades); only the directory's owner and mode are put right.
    pg_refuse_symlink "$PG_STATE" || return 1
    pg_refuse_symlink "$PG_LOGS" || return 1
    mkdir -p "$PG_STATE" "$PG_LOGS"
    chown 0:0 "$PG_STATE" "$PG_LOGS"
    chmod 0755 "$PG_STATE"
    chmod 0750 "$PG_LOGS"
}

pg_fix_plists() {
    # launchd refuses a job whose plist is writable by others than root.
    local plist
    for plist in "$PG_DAEMON_PLIST" "$PG_TRAY_PLIST"; do
        if [ -f "$plist" ]; then
            chown 0:0 "$plist"
            chmod 0644 "$plist"
        fi
    done
}

pg_link_cli() {
    # `pullgate` on every user's PATH (/usr/local/bin is in the default /etc/paths).
    mkdir -p "$(dirname "$PG_CLI_LINK")"
    ln -sfn "/Applications/Pullgate.app/Contents/MacOS/pullgate" "$PG_CLI_LINK"
}

pg_start() {
    [ "$PG_LIVE" = yes ] || return 0
    # enable: undo a `launchctl disable` left from an earlier install or by hand.
    launchctl enable "system/${PG_DAEMON_LABEL}" || true
    if ! launchctl bootstrap system "$PG_DAEMON_PLIST"; then
        sleep 1
        launchctl bootstrap system "$PG_DAEMON_PLIST"
    fi
    # The tray for the user logged in now; other users get it at their next login.
    local uid
    if uid=$(pg_console_uid); then
        launchctl enable "gui/${uid}/${PG_TRAY_LABEL}" || true
        launchctl bootstrap "gui/${uid}" "$PG_TRAY_PLIST" || pg_log "warning: the tray starts at the next login"
    fi
}

pg_remove_contexts() {
    # The docker context "pullgate" the agent gave each user (Docker Desktop mode) leads
    # to an endpoint that is gone once the agent is: as each user, their docker goes back
    # to Docker Desktop's context if ours was selected, and ours is removed.
    [ "$PG_LIVE" = yes ] || return 0
    local docker="" candidate home uid name current
    for candidate in /usr/local/bin/docker /opt/homebrew/bin/docker \
        /Applications/Docker.app/Contents/Resources/bin/docker; do
        if [ -x "$candidate" ]; then
            docker=$candidate
            break
        fi
    done
    [ -n "$docker" ] || return 0
    for home in /Users/*; do
        [ -d "${home}/.docker/contexts" ] || continue
        uid=$(stat -f %u "$home") || continue
        [ "$uid" != 0 ] || continue
        name=$(id -un "$uid" 2>/dev/null) || continue
        current=$(sudo -u "$name" -H "$docker" context show 2>/dev/null || true)
        if [ "$current" = pullgate ]; then
            sudo -u "$name" -H "$docker" context use desktop-linux >/dev/null 2>&1 ||
                sudo -u "$name" -H "$docker" context use default >/dev/null 2>&1 || true
        fi
        sudo -u "$name" -H "$docker" context rm -f pullgate >/dev/null 2>&1 || true
    done
}
