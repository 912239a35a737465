"""A real systemd, booted as PID 1 on a Debian root of its own, for the package tests.

`make_debian_root(dest)` runs debootstrap (Debian bookworm from the Debian registry, with
systemd, docker.io and docker-registry) and prepares the root: a user `dev` in group
`docker`, the registry as dockerd's Docker Hub mirror. `BootedSystem.boot(root)` starts

    unshare --pid --fork --mount --uts --ipc --net  (private mounts: proc, sys, a small
        /dev, tmpfs on /run and /tmp)  chroot ROOT /lib/systemd/systemd --system

and `run(...)` enters its namespaces with nsenter. systemd is never booted against this
machine's own root: its boot-time tmpfiles would clean the machine's /tmp. The network
namespace is its own too (loopback only), so its dockerd's bridge and iptables rules stay
inside. `stop()` kills the namespace's PID 1 (which ends every process in it) and the
mounts go with the namespace.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEBOOTSTRAP_PACKAGES",
    "USER",
    "BootedSystem",
    "busybox_image_tar",
    "missing_requirements",
    "prepare_root",
    "start_debootstrap",
]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "docker.io",
    "docker-registry",
    "busybox-static",
    "iproute2",
    "socat",
    "ca-certificates",
)
USER = "dev"
REGISTRY = "127.0.0.1:5000"

_BOOT = r"""
set -e
R="$1"
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --make-rslave "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=666 devpts "$R/dev/pts"
ln -sf pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
hostname pullgate-test
export container=pullgate-test
exec chroot "$R" /lib/systemd/systemd --system
"""

_REGISTRY_CONFIG = f"""\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
http:
  addr: {REGISTRY}
"""


def missing_requirements() -> list[str]:
    problems = [
        f"{tool} not found"
        for tool in ("debootstrap", "unshare", "nsenter", "chroot")
        if shutil.which(tool) is None
    ]
    if os.geteuid() != 0:
        problems.append("must run as root (debootstrap, namespaces)")
    return problems


def start_debootstrap(dest: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start debootstrap into ``dest`` (about a minute and a half); wait on the result."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
                SUITE,
                str(dest),
                MIRROR,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def prepare_root(root: Path) -> None:
    """The finished root, ready to boot: no consoles or udev (there is no hardware), a
    user in group docker, the registry as dockerd's Docker Hub mirror."""
    (root / "etc" / "hostname").write_text("pullgate-test\n")
    chroot = ["chroot", str(root)]
    subprocess.run(
        [
            *chroot,
            "systemctl",
            "mask",
            "getty@tty1.service",
            "console-getty.service",
            "systemd-udevd.service",
            "systemd-udev-trigger.service",
            "systemd-networkd.service",
            "systemd-timesyncd.service",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([*chroot, "systemctl", "set-default", "multi-user.target"], check=True)
    subprocess.run([*chroot, "useradd", "-m", "-G", "docker", USER], check=True)
    (root / "etc" / "docker" / "registry" / "config.yml").write_text(_REGISTRY_CONFIG)
    (root / "etc" / "docker" / "daemon.json").write_text(
        f'{{"registry-mirrors": ["http://{REGISTRY}"]}}\n'
    )


def busybox_image_tar(busybox: Path) -> bytes:
    """A root file system of one static busybox, for `docker import`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    return out.getvalue()


@dataclass
class BootedSystem:
    root: Path
    launcher: subprocess.Popen[bytes]
    pid: int  # systemd, PID 1 inside

    @classmethod
    def boot(cls, root: Path, timeout: float = 60.0) -> BootedSystem:
        launcher = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "--uts",
                "--ipc",
                "--net",
                "bash",
                "-c",
                _BOOT,
                "boot",
                str(root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        pid = None
        while pid is None and time.monotonic() < deadline:
            children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        pid = int(child)
            if launcher.poll() is not None:
                raise RuntimeError(f"the namespace's launcher exited {launcher.returncode}")
            time.sleep(0.05)
        if pid is None:
            launcher.kill()
            raise RuntimeError("systemd did not start in its namespace")
        system = cls(root, launcher, pid)
        state = ""
        while time.monotonic() < deadline:
            state = system.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return system
            time.sleep(0.2)
        failed = system.run("systemctl", "--failed", "--no-pager", check=False).stdout
        system.stop()
        raise RuntimeError(f"systemd did not finish booting ({state!r}): {failed}")

    def run(
        self,
        *cmd: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside (as ``user`` through runuser, else root)."""
        if user is not None:
            cmd = ("runuser", "-u", user, "--", *cmd)
        enter = ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-p", "-n", "-r", "-w"]
        result = subprocess.run(
            [*enter, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def popen(self, *cmd: str, user: str | None = None) -> subprocess.Popen[str]:
        if user is not None:
            cmd = ("runuser", "-u", user, "--", *cmd)
        enter = ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-p", "-n", "-r", "-w"]
        return subprocess.Popen(
            [*enter, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def main_pid(self, unit: str) -> int:
        out = self.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
        return int(out.strip() or 0)

    def wait_for(self, what: str, probe: object, timeout: float = 30.0) -> None:
        """Poll ``probe()`` (a callable returning truthy) until it holds."""
        assert callable(probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def stop(self) -> None:
        """Kill the namespace's PID 1: the kernel ends every process in the namespace."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait(timeout=10)
        remove_unit_cgroups()


_UNIT_SUFFIXES = (".slice", ".scope", ".service", ".socket", ".mount", ".swap", ".device")


def remove_unit_cgroups(base: Path = Path("/sys/fs/cgroup")) -> None:
    """The booted systemd shares this machine's cgroup hierarchies (v1 here) and leaves
    its units' cgroups behind, empty, once its namespace is gone; this machine's init is
    not systemd, so cgroups named like units are that systemd's. Only empty ones go
    (rmdir of a cgroup fails while it has processes or children)."""
    with contextlib.suppress(OSError):
        if Path("/proc/1/comm").read_text().strip() == "systemd":
            return  # this machine's own units: never touched
    for top, dirs, _ in os.walk(base, topdown=False):
        for name in dirs:
            if name.endswith(_UNIT_SUFFIXES):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(top, name))
