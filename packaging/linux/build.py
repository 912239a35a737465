"""Build Pullgate's Linux packages: the frozen bundle, then a .deb and an .rpm of it.

    python packaging/linux/build.py [--out DIR] [--version V] [--release N] [--bundle DIR]

One command from a clean checkout (``bash packaging/build.sh`` runs it with the project's
venv): PyInstaller freezes ``pullgate`` (and ``pullgate-tray`` once ``ui/app.py`` exists)
into one onedir bundle (packaging/linux/pullgate.spec), which is staged as the installed
file tree and packed with ``dpkg-deb`` and ``rpmbuild``. Everything is written under
``--out`` (default ``build/linux``, gitignored): ``bundle/``, ``stage/``, the packages.
``--bundle DIR`` packs an existing bundle again (a new version of the same build).

What goes where, and why, is docs/deploy/linux.md; the files installed on the system are in
installers/linux/.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLERS = ROOT / "installers" / "linux"
SPEC = ROOT / "packaging" / "linux" / "pullgate.spec"
NAME = "pullgate"
PREFIX = Path("/opt/pullgate")
MAINTAINER = "Pullgate maintainers <maintainers@pullgate.example.org>"
SUMMARY = "Organisation image policy in front of the Docker daemon"
DESCRIPTION = """\
Pullgate checks every image pull, run, build and load on this machine
against the organisation's signed policy before the Docker daemon sees
it, explains each refusal in the terminal and in a tray notification,
and keeps a tamper-evident audit log. The package runs the agent as a
systemd service in front of dockerd's socket."""

# (source under installers/linux, installed path, mode): the same for both packages, but
# the unit directory (Debian bookworm keeps units in /lib; RPM distributions in /usr/lib).
CONFFILES = [
    ("config.json", "/etc/pullgate/config.json", 0o644),
]
TRAY_FILES = [
    ("pullgate-tray.desktop", "/etc/xdg/autostart/pullgate-tray.desktop", 0o644),
]


def unit_files(unit_dir: str) -> list[tuple[str, str, int]]:
    return [
        ("pullgate-agent.service", f"{unit_dir}/pullgate-agent.service", 0o644),
        ("pullgate-takeover.conf", f"{unit_dir}/docker.socket.d/pullgate-takeover.conf", 0o644),
        ("pullgate.tmpfiles", "/usr/lib/tmpfiles.d/00-pullgate.conf", 0o644),
    ]


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def has_tray() -> bool:
    return (ROOT / "ui" / "app.py").is_file()


def run(cmd: list[str], **kwargs: object) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def freeze(out: Path) -> Path:
    """The onedir bundle, built by PyInstaller from the checkout into ``out/bundle``."""
    env = dict(os.environ, PULLGATE_WITH_TRAY="1" if has_tray() else "0")
    # Reproducible archives: PyInstaller stamps the PYZ's entries with this date.
    env.setdefault("SOURCE_DATE_EPOCH", _source_date_epoch())
    run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(out / "bundle"),
            "--workpath",
            str(out / "work"),
            str(SPEC),
        ],
        env=env,
        cwd=ROOT,
    )
    return out / "bundle" / NAME


def _source_date_epoch() -> str:
    try:
        stamp = subprocess.run(
            ["git", "log", "-1", "--format=%ct"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        stamp = ""
    return stamp or str(int(time.time()))


def _install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _drop_runpath(library: Path) -> None:
    """Remove the RUNPATH the build machine's Python compiled in (its install prefix):
    the bundle's libraries find each other in the bundle, and an installed library must
    not search a directory of the machine that built it."""
    found = subprocess.run(
        ["patchelf", "--print-rpath", str(library)], capture_output=True, text=True, check=False
    )
    if found.returncode == 0 and found.stdout.strip():
        run(["patchelf", "--remove-rpath", str(library)], stdout=subprocess.DEVNULL)


def stage(bundle: Path, stage_dir: Path, *, unit_dir: str, version: str) -> list[str]:
    """The installed file tree under ``stage_dir``; returns the conffiles (absolute)."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    opt = stage_dir / PREFIX.relative_to("/")
    shutil.copytree(bundle, opt, symlinks=True)
    for path in [opt, *opt.rglob("*")]:  # no group/other write bits, whatever the umask
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o755
        if path.is_file() and ".so" in path.name:  # libraries are loaded, not run
            mode &= 0o644
            _drop_runpath(path)
        path.chmod(mode)
    bin_dir = stage_dir / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "pullgate").symlink_to(PREFIX / "pullgate")
    files = [*CONFFILES, *unit_files(unit_dir)]
    if (opt / "pullgate-tray").exists():
        (bin_dir / "pullgate-tray").symlink_to(PREFIX / "pullgate-tray")
        files += TRAY_FILES
    for src, dest, mode in files:
        _install(INSTALLERS / src, stage_dir / dest.lstrip("/"), mode)
    doc = stage_dir / "usr" / "share" / "doc" / NAME
    doc.mkdir(parents=True)
    _install(INSTALLERS / "copyright", doc / "copyright", 0o644)
    _install(INSTALLERS / "README.Debian", doc / "README.Debian", 0o644)
    changelog = (
        f"{NAME} ({version}) stable; urgency=medium\n\n"
        "  * Built from the Pullgate repository (see its git history).\n\n"
        f" -- {MAINTAINER}  {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(0))}\n"
    )
    with gzip.GzipFile(doc / "changelog.Debian.gz", "wb", mtime=0, compresslevel=9) as f:
        f.write(changelog.encode())
    (doc / "changelog.Debian.gz").chmod(0o644)
    overrides = stage_dir / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    _install(INSTALLERS / "lintian-overrides", overrides / NAME, 0o644)
    conffiles = [dest for _, dest, _ in files if dest.startswith("/etc/")]
    return conffiles


def maintainer_script(body: str) -> str:
    library = (INSTALLERS / "maintainer.sh").read_text()
    return f"#!/bin/sh\nset -e\n\n{library}\n{body}"


DEB_SCRIPTS = {
    "postinst": """\
case "$1" in
    configure) pullgate_takeover ;;
esac
exit 0
""",
    "prerm": """\
case "$1" in
    remove|deconfigure) pullgate_stop_agent ;;
esac
exit 0
""",
    "postrm": """\
case "$1" in
    remove) pullgate_restore_docker ;;
    purge) pullgate_restore_docker; pullgate_purge ;;
esac
exit 0
""",
}


def build_deb(bundle: Path, out: Path, version: str, release: str) -> Path:
    stage_dir = out / "stage-deb"
    conffiles = stage(bundle, stage_dir, unit_dir="/lib/systemd/system", version=version)
    debian = stage_dir / "DEBIAN"
    debian.mkdir()
    size_kib = sum(p.lstat().st_size for p in stage_dir.rglob("*") if p.is_file()) // 1024
    control = (
        f"Package: {NAME}\n"
        f"Version: {version}-{release}\n"
        "Architecture: amd64\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {size_kib}\n"
        "Depends: libc6 (>= 2.31), systemd\n"
        "Recommends: docker.io | docker-ce\n"
        "Section: admin\n"
        "Priority: optional\n"
        f"Description: {SUMMARY.lower()}\n"
        + "".join(f" {line}\n" for line in DESCRIPTION.splitlines())
    )
    (debian / "control").write_text(control)
    (debian / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    for name, body in DEB_SCRIPTS.items():
        path = debian / name
        path.write_text(maintainer_script(body))
        path.chmod(0o755)
    deb = out / f"{NAME}_{version}-{release}_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(stage_dir), str(deb)])
    return deb


RPM_SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: {summary}
License: Apache-2.0
BuildArch: x86_64
# A frozen bundle: its libraries are its own, and must not become RPM dependencies.
AutoReqProv: no
Requires: systemd
Recommends: docker
%global debug_package %{{nil}}
%global _build_id_links none
%global __os_install_post %{{nil}}

%description
{description}

%install
cp -a {stage}/. %{{buildroot}}/

%post
{library}
pullgate_takeover
exit 0

%preun
{library}
# $1 is 0 on removal, 1 on upgrade (the new package's %post restarts the agent).
if [ "$1" -eq 0 ]; then pullgate_stop_agent; fi
exit 0

%postun
{library}
if [ "$1" -eq 0 ]; then pullgate_restore_docker; fi
exit 0

%files
{files}
"""


def build_rpm(bundle: Path, out: Path, version: str, release: str) -> Path:
    stage_dir = out / "stage-rpm"
    conffiles = stage(bundle, stage_dir, unit_dir="/usr/lib/systemd/system", version=version)
    shutil.rmtree(stage_dir / "usr" / "share" / "lintian")
    (stage_dir / "usr" / "share" / "doc" / NAME / "README.Debian").rename(
        stage_dir / "usr" / "share" / "doc" / NAME / "README"
    )
    files = [
        f"%dir {PREFIX}",
        f"{PREFIX}/*",
        "/usr/bin/*",
        "%dir /etc/pullgate",
        *(f"%config(noreplace) {c}" for c in conffiles),
        "/usr/lib/systemd/system/pullgate-agent.service",
        "%dir /usr/lib/systemd/system/docker.socket.d",
        "/usr/lib/systemd/system/docker.socket.d/pullgate-takeover.conf",
        "/usr/lib/tmpfiles.d/00-pullgate.conf",
        f"%doc /usr/share/doc/{NAME}",
    ]
    library = (INSTALLERS / "maintainer.sh").read_text()
    spec = RPM_SPEC.format(
        name=NAME,
        version=version.replace("-", "_"),
        release=release,
        summary=SUMMARY,
        description=DESCRIPTION,
        stage=stage_dir,
        library=library,
        files="\n".join(files),
    )
    top = out / "rpmbuild"
    if top.exists():
        shutil.rmtree(top)
    (top / "SPECS").mkdir(parents=True)
    spec_path = top / "SPECS" / f"{NAME}.spec"
    spec_path.write_text(spec)
    run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            "_binary_payload w6.gzdio",
            "--nodeps",
            str(spec_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    built = next((top / "RPMS").rglob("*.rpm"))
    rpm = out / built.name
    shutil.move(built, rpm)
    return rpm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "linux")
    parser.add_argument("--version", default=project_version())
    parser.add_argument("--release", default="1", help="the package revision")
    parser.add_argument("--bundle", type=Path, help="pack this frozen bundle, do not freeze")
    parser.add_argument("--no-rpm", action="store_true")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle.resolve() if args.bundle else freeze(out)
    deb = build_deb(bundle, out, args.version, args.release)
    print(deb)
    if not args.no_rpm:
        print(build_rpm(bundle, out, args.version, args.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
