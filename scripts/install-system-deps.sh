#!/usr/bin/env bash
# Install the Debian packages that Pullgate's real-Docker integration tests need.
#
# Idempotent: installs only what is missing, runs `apt-get update` at most once, and never
# leaves the system docker/containerd/registry services running (the tests start their own
# private daemons under a temporary directory; see bench/realdocker.py).
#
# Usage (as root): bash scripts/install-system-deps.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

if [[ ${EUID} -ne 0 ]]; then
    echo "install-system-deps: must run as root (apt-get install)" >&2
    exit 1
fi

# Packages and a file each one provides (to detect already-installed ones cheaply).
#   docker.io       dockerd, containerd, runc (the daemon the tests run privately)
#   docker-registry the local registry used as the docker.io mirror
#   busybox-static  /bin/busybox, the only binary in the seeded test images
#   docker-compose  a real client for shim tests
#   curl            `curl --unix-socket` checks
#   iproute2        `ip` for network namespace tests
#   tini            docker-init, so `docker run --init` works against the private daemon
#   gnome-keyring   the Secret Service the sign-in tests store a refresh token in (tests/keychain.py)
#   dbus            dbus-daemon, the private session bus that gnome-keyring-daemon serves on
# The tray's real desktop (tests/desktop.py, scripts/tray_screenshots.py, bench/tray.py):
#   xvfb            Xvfb, the X server the tray runs on in tests
#   trayer          the XEmbed system tray host (maps its panel under Xvfb with no window manager)
#   dunst           the freedesktop notification daemon the tray's notifications must reach
#   x11-utils       xwininfo (is the icon embedded, is a window shown) and xdpyinfo (X is up)
#   x11-xserver-utils  xsetroot: a desktop colour behind the screenshots
#   xdotool         bench/tray.py: a synthetic key press round trip through the tray's UI
#   libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1  PySide6's xcb platform plugin refuses to
#                   load without them (the wheel bundles Qt, not these)
#   libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libx11-xcb1
#   libxkbcommon-x11-0  the rest of what libqxcb.so links to (ldd), present on a desktop
#   libegl1 libgl1  libQt6Gui links libEGL and libGL even when nothing is drawn with OpenGL
#   libfontconfig1 fonts-dejavu-core  fonts for the tray's windows and dunst
# The Linux packages (packaging/build.sh, tests/test_packaging_linux.py):
#   dpkg-dev        Debian's package build tools (dpkg-deb, which builds the .deb, is in
#                   dpkg itself)
#   rpm             rpmbuild builds the .rpm; `rpm -qlp` lists it
#   lintian         Debian's package checker: no errors on the .deb
#   patchelf        drops the build machine's RUNPATH from the bundle's libraries
#   debootstrap     a Debian root of its own for booting a real systemd in the tests
# The macOS package's scripts (tests/test_packaging_macos.py):
#   shellcheck      lints preinstall, postinstall and uninstall.sh (they run on macOS,
#                   where nothing here can run them under Installer)
PACKAGES=(docker.io docker-registry busybox-static docker-compose curl iproute2 tini gnome-keyring dbus
    xvfb trayer dunst x11-utils x11-xserver-utils xdotool
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
    libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libx11-xcb1
    libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 fonts-dejavu-core
    dpkg-dev rpm lintian patchelf debootstrap
    shellcheck)

# The Windows MSI's structure (tests/test_packaging_windows.py; no Windows machine here):
#   wixl            Debian's WiX-compatible MSI builder (msitools' wixl): builds a real MSI
#                   from packaging/windows/Pullgate.wxs around a stand-in payload
#   msitools        msiinfo: reads the MSI's tables back (File, ServiceInstall, Registry...)
PACKAGES+=(wixl msitools)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "${pkg}" 2>/dev/null || true)
    if [[ ${status} != ii* ]]; then
        missing+=("${pkg}")
    fi
done

# Node.js and npm run the OpenID provider of the sign-in tests (tests/oidc). Checked by
# command, not by package: a machine may have them from elsewhere (NodeSource's nodejs
# bundles npm and conflicts with Debian's npm package). oidc-provider 9 needs Node.js >= 20.19
# (Debian 13 has 20.19; Debian 12's 18.x is too old: tests/oidc_provider.py says so).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all present (${PACKAGES[*]}, node, npm)"
    exit 0
fi

echo "install-system-deps: installing ${missing[*]}"

# Keep maintainer scripts from starting services (docker, containerd, docker-registry):
# invoke-rc.d consults policy-rc.d, and exit code 101 means "action forbidden".
policy=/usr/sbin/policy-rc.d
saved_policy=""
if [[ -e ${policy} ]]; then
    saved_policy=$(mktemp)
    cp -p "${policy}" "${saved_policy}"
fi
printf '#!/bin/sh\nexit 101\n' >"${policy}"
chmod 755 "${policy}"
cleanup() {
    if [[ -n ${saved_policy} ]]; then
        cp -p "${saved_policy}" "${policy}"
        rm -f "${saved_policy}"
    else
        rm -f "${policy}"
    fi
}
trap cleanup EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"

# Where systemd is the init, policy-rc.d is bypassed by deb-systemd-invoke on some
# paths: stop and disable anything that got started anyway. Harmless where there is no systemd.
if [[ -d /run/systemd/system ]]; then
    for unit in docker.socket docker.service containerd.service docker-registry.service; do
        systemctl disable --now "${unit}" >/dev/null 2>&1 || true
    done
fi

echo "install-system-deps: done"
