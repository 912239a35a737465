"""Stage the macOS pkg's payload and scripts from a frozen Pullgate.app.

    python packaging/macos/stage.py --app dist/Pullgate.app --out build/macos

Writes ``OUT/root`` (the payload tree ``pkgbuild --root`` takes: the app in
/Applications, the LaunchDaemon and LaunchAgent plists) and ``OUT/scripts`` (preinstall,
postinstall and the functions they share). uninstall.sh and those functions also go into
the app's Contents/Resources, so they are sealed by the app's signature: sign the staged
app (packaging/macos/build.sh does) after this, never before.

The layout below is the one contract between the frozen bundle, the launchd plists in
installers/macos/ and the MDM profile; tests/test_packaging_macos.py checks them against
each other and stages a stand-in app with it on Linux.
"""

from __future__ import annotations

import argparse
import plistlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLERS = ROOT / "installers" / "macos"

BUNDLE_ID = "com.pullgate.app"
APP = "Applications/Pullgate.app"
"""Where the app goes, relative to the volume (the component plist's RootRelativeBundlePath)."""
AGENT_EXECUTABLE = "Contents/MacOS/pullgate"
TRAY_EXECUTABLE = "Contents/MacOS/pullgate-tray"
PKG_IDENTIFIER = "com.pullgate.pkg"

# (source under installers/macos, path under the payload root, mode)
PAYLOAD = [
    ("com.pullgate.agent.plist", "Library/LaunchDaemons/com.pullgate.agent.plist", 0o644),
    ("com.pullgate.tray.plist", "Library/LaunchAgents/com.pullgate.tray.plist", 0o644),
]
# (source under installers/macos, path inside the app, mode): sealed with the app.
APP_RESOURCES = [
    ("uninstall.sh", "Contents/Resources/uninstall.sh", 0o755),
    ("pullgate-common.sh", "Contents/Resources/pullgate-common.sh", 0o644),
]
# (source under installers/macos, name in the pkg's Scripts, mode)
SCRIPTS = [
    ("preinstall", "preinstall", 0o755),
    ("postinstall", "postinstall", 0o755),
    ("pullgate-common.sh", "pullgate-common.sh", 0o644),
]


class StageError(Exception):
    """The app is not the bundle the plists expect."""


def check_app(app: Path) -> None:
    """The frozen app has the bundle identifier and both executables the plists name."""
    info_path = app / "Contents" / "Info.plist"
    try:
        info = plistlib.loads(info_path.read_bytes())
    except (OSError, plistlib.InvalidFileException) as e:
        raise StageError(f"{info_path}: {e}") from None
    if info.get("CFBundleIdentifier") != BUNDLE_ID:
        raise StageError(
            f"{info_path}: CFBundleIdentifier is {info.get('CFBundleIdentifier')!r}, "
            f"expected {BUNDLE_ID!r}"
        )
    for rel in (AGENT_EXECUTABLE, TRAY_EXECUTABLE):
        exe = app / rel
        if not exe.is_file() or not exe.stat().st_mode & 0o111:
            raise StageError(f"{exe}: missing or not executable")


def _install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def stage(app: Path, out: Path) -> tuple[Path, Path]:
    """``(payload root, scripts dir)`` under ``out``, both made afresh."""
    check_app(app)
    root, scripts = out / "root", out / "scripts"
    for d in (root, scripts):
        if d.exists():
            shutil.rmtree(d)
    # symlinks=True: PyInstaller's bundle links Contents/MacOS and Resources into
    # Frameworks; copying the targets instead would break the signature's layout.
    shutil.copytree(app, root / APP, symlinks=True)
    for name, rel, mode in APP_RESOURCES:
        _install(INSTALLERS / name, root / APP / rel, mode)
    for name, rel, mode in PAYLOAD:
        _install(INSTALLERS / name, root / rel, mode)
    for name, rel, mode in SCRIPTS:
        _install(INSTALLERS / name, scripts / rel, mode)
    return root, scripts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, type=Path, help="the frozen Pullgate.app")
    parser.add_argument("--out", required=True, type=Path, help="where root/ and scripts/ go")
    args = parser.parse_args(argv)
    try:
        root, scripts = stage(args.app, args.out)
    except StageError as e:
        print(f"stage.py: {e}", file=sys.stderr)
        return 2
    print(f"{root}\n{scripts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
