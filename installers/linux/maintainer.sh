# Pullgate's maintainer-script functions, shared by the .deb (postinst, prerm, postrm) and
# the .rpm (%post, %preun, %postun): packaging/linux/build.py prepends this file to each.
# Every function is idempotent (safe to run twice, or after a failed run) and none ever
# touches /var/log/pullgate, the audit log, except to create it.

PULLGATE_DROPIN_SOCKET=/run/pullgate/dockerd.sock
PULLGATE_SHIM_SOCKET=/run/pullgate/docker.sock

pullgate_systemd() {
    # systemctl only where systemd runs (not in a chroot or a container build).
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

pullgate_make_dirs() {
    # root-owned, not writable by users: the policy cache and state, the audit log (not
    # readable by users either: it holds everyone's decisions) and the runtime dir.
    install -d -m 0755 -o root -g root /etc/pullgate /var/lib/pullgate
    install -d -m 0700 -o root -g root /var/log/pullgate
    chmod 0755 /var/lib/pullgate
    chmod 0700 /var/log/pullgate
}

pullgate_docker_has_socket_unit() {
    pullgate_systemd && systemctl cat docker.socket >/dev/null 2>&1
}

pullgate_restart_docker_socket() {
    # Make docker.socket listen where its (possibly changed) drop-ins say. The socket of a
    # running dockerd cannot move: dockerd is stopped and started again (containers with
    # a restart policy come back; `live-restore` in daemon.json keeps them running).
    was_active=no
    if systemctl is-active --quiet docker.service; then was_active=yes; fi
    systemctl stop docker.service docker.socket || true
    "$@"
    systemctl start docker.socket || true
    if [ "$was_active" = yes ]; then systemctl start docker.service || true; fi
}

pullgate_takeover() {
    # After install or upgrade: dockerd on /run/pullgate/dockerd.sock (root only),
    # /run/docker.sock leading to the agent, the agent enabled and (re)started.
    pullgate_make_dirs
    if ! pullgate_systemd; then
        return 0  # applied at the next boot: tmpfiles, drop-in and unit are in place
    fi
    systemctl daemon-reload
    # The socket file exists once docker.socket listens there (an upgrade): no restart.
    if pullgate_docker_has_socket_unit && [ ! -S "$PULLGATE_DROPIN_SOCKET" ]; then
        pullgate_restart_docker_socket systemd-tmpfiles --create 00-pullgate.conf
    else
        systemd-tmpfiles --create 00-pullgate.conf || true
    fi
    systemctl enable pullgate-agent.service >/dev/null 2>&1 || true
    systemctl restart pullgate-agent.service || true
}

pullgate_stop_agent() {
    # Before removal (not on upgrade: the new package's scripts restart it).
    if pullgate_systemd; then
        systemctl disable --now pullgate-agent.service >/dev/null 2>&1 || true
    fi
}

pullgate_restore_docker() {
    # After removal: the drop-in and tmpfiles entry are gone with the package's files;
    # put dockerd back on /run/docker.sock.
    if [ -L /run/docker.sock ] && [ "$(readlink /run/docker.sock)" = "$PULLGATE_SHIM_SOCKET" ]; then
        rm -f /run/docker.sock
    fi
    if pullgate_systemd; then
        systemctl daemon-reload
        if pullgate_docker_has_socket_unit && [ ! -S /run/docker.sock ]; then
            pullgate_restart_docker_socket true
        fi
    fi
    rm -f "$PULLGATE_DROPIN_SOCKET"
    rmdir /run/pullgate 2>/dev/null || true
}

pullgate_purge() {
    # The policy cache and state go; the audit log stays in /var/log/pullgate (IT's
    # record; delete it by hand once it is archived). /etc/pullgate goes with its conffiles.
    rm -rf /var/lib/pullgate
    rmdir /etc/pullgate 2>/dev/null || true
}
