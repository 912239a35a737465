"""A real Linux desktop for the tray's tests and benchmark, under a directory the caller owns.

It lives in bench/ (like bench/realdocker.py) because `bench.tray` needs it and benchmarks
do not import the tests; tests/desktop.py re-exports it for the tests.

`start_desktop(directory)` starts, and `stop_desktop` ends (by the PIDs it started, nothing
else):

- `Xvfb` on a display number it picks itself (`-displayfd`: no race with other X servers),
  1280x800x24, no TCP;
- a private D-Bus session bus (`dbus-daemon --session`) on a socket under `directory`;
- `trayer`, the XEmbed system tray host (it maps its panel under Xvfb with no window
  manager, where tint2 does not), top right;
- `dunst`, the freedesktop notification daemon, on that bus, with a dunstrc written here.
  A rule runs a script on every notification that appends a JSON line (with the wall-clock
  time dunst handed it over) to `notifications.jsonl`: `notifications()` reads it, so a
  test sees notifications still on screen (dunst's own `dunstctl history` holds closed
  ones only; `history()` reads that). dunst's context menu (`dunstctl context`) goes
  through a dmenu stand-in that picks the action `invoke_action(...)` names, as a user
  picking "Why?" would.

`Desktop.env` is what a client process needs (DISPLAY, DBUS_SESSION_BUS_ADDRESS,
XDG_RUNTIME_DIR, QT_QPA_PLATFORM=xcb, HOME and XDG dirs under `directory`).
`screenshot(path, rect)` grabs the screen with Qt in a helper process (no ImageMagick);
`tray_icons()` lists the windows embedded in trayer's panel (`xwininfo -root -tree`: an
XEmbed client is reparented under the panel), `tray_embedded(name)` checks one is there;
`window(title)` finds a viewable top-level window by title.

No pytest dependency; `missing_requirements()` tells the fixture why it cannot run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Desktop",
    "DesktopError",
    "Window",
    "missing_requirements",
    "start_desktop",
    "start_session_bus",
    "stop_desktop",
]

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
SCREEN = (1280, 800)

TOOLS = (
    ("Xvfb", "xvfb"),
    ("dbus-daemon", "dbus"),
    ("trayer", "trayer"),
    ("dunst", "dunst"),
    ("dunstctl", "dunst"),
    ("xwininfo", "x11-utils"),
    ("xdpyinfo", "x11-utils"),
    ("xprop", "x11-utils"),
    ("xsetroot", "x11-xserver-utils"),
)
BACKGROUND = "#4f6272"
"""The root window's colour (Xvfb's is black): screenshots look like a desktop."""


class DesktopError(RuntimeError):
    """A part of the desktop did not start, or a query of it failed."""


def missing_requirements() -> list[str]:
    """What is missing to run the desktop here; empty when it can run."""
    problems = [
        f"needs `{tool}` (Debian package {package}; run `bash scripts/setup.sh --system-deps`)"
        for tool, package in TOOLS
        if shutil.which(tool) is None
    ]
    try:
        import PySide6.QtGui  # noqa: F401
    except ImportError as e:
        problems.append(f"needs PySide6 ({e})")
    return problems


@dataclass(frozen=True)
class Window:
    """One X window from `xwininfo -tree`: id, title, WM_CLASS and geometry (root coords)."""

    id: str
    title: str
    classes: tuple[str, ...]
    x: int
    y: int
    width: int
    height: int
    depth: int
    """Nesting below the root window (1: top level)."""

    def named(self, name: str) -> bool:
        return name == self.title or name in self.classes


@dataclass
class Desktop:
    """A running Xvfb + session bus + trayer + dunst, and the environment that reaches them."""

    directory: Path
    display: str
    env: dict[str, str]
    bus_pid: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0

    # ---------------------------------------------------------------- notifications

    @property
    def notifications_path(self) -> Path:
        return self.directory / "notifications.jsonl"

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification dunst has shown since it started, oldest first: dicts with
        appname, summary, body, urgency, id, timeout and `received` (epoch seconds)."""
        try:
            text = self.notifications_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found: list[dict[str, Any]] = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def wait_for_notification(
        self, summary: str, *, since: int = 0, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first notification from index `since` on whose summary is `summary`."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.notifications()
            for item in seen[since:]:
                if item.get("summary") == summary:
                    return item
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"dunst showed no notification {summary!r} within {timeout:.0f} s;"
                    f" it showed: {[n.get('summary') for n in seen]}"
                )
            time.sleep(0.01)

    def history(self) -> list[dict[str, Any]]:
        """`dunstctl history`: closed notifications, newest first, as plain dicts."""
        out = self.run("dunstctl", "history").stdout
        data = json.loads(out)["data"][0]
        return [{k: v.get("data") for k, v in item.items()} for item in data]

    def count(self) -> dict[str, int]:
        """`dunstctl count`: waiting, displayed and history."""
        counts: dict[str, int] = {}
        for which in ("waiting", "displayed", "history"):
            counts[which] = int(self.run("dunstctl", "count", which).stdout.strip() or 0)
        return counts

    def invoke_action(self, action: str = "why", notification_id: str | int | None = None) -> str:
        """Open dunst's context menu (`dunstctl context`) and pick `action` of notification
        `notification_id` (else of the last one listed) through the dmenu stand-in, as a
        user would; returns the menu line picked (`#Why? (summary) [id,why]`)."""
        choice = self.directory / "dmenu-choice"
        chosen = self.directory / "dmenu-chosen"
        choice.write_text(
            f",{action}]" if notification_id is None else f"[{notification_id},{action}]"
        )
        chosen.unlink(missing_ok=True)
        self.run("dunstctl", "context")
        deadline = time.monotonic() + 5.0
        while not chosen.exists() or not chosen.read_text().endswith("\n"):
            if time.monotonic() > deadline:
                menu = (self.directory / "dmenu-menu").read_text(errors="replace")
                raise DesktopError(f"dunst's menu offered no action {action!r}: {menu!r}")
            time.sleep(0.01)
        picked = chosen.read_text().strip()
        if not picked:
            menu = (self.directory / "dmenu-menu").read_text(errors="replace")
            raise DesktopError(f"dunst's menu offered no action {action!r}: {menu!r}")
        return picked

    def click_notification(self) -> None:
        """`dunstctl action 0`: the default action of the notification on top."""
        self.run("dunstctl", "action", "0")

    def close_notifications(self) -> None:
        self.run("dunstctl", "close-all")

    # ---------------------------------------------------------------- windows

    def windows(self) -> list[Window]:
        """Every window under the root, in `xwininfo -root -tree` order (mapped or not)."""
        out = self.run("xwininfo", "-root", "-tree").stdout
        return _parse_tree(out)

    def tray_icons(self) -> list[Window]:
        """Windows embedded in trayer's panel (XEmbed clients reparented under it)."""
        found: list[Window] = []
        panel_depth: int | None = None
        for window in self.windows():
            if panel_depth is not None:
                if window.depth <= panel_depth:
                    panel_depth = None
                elif window.title or window.classes:
                    found.append(window)
            if panel_depth is None and window.title == "panel" and "trayer" in window.classes:
                panel_depth = window.depth
        return found

    def tray_embedded(self, name: str) -> Window | None:
        """The icon window embedded in trayer whose title or WM_CLASS is `name`."""
        for window in self.tray_icons():
            if window.named(name):
                return window
        return None

    def window_pid(self, window: Window) -> int | None:
        """The _NET_WM_PID the window's client set (Qt sets it on every window)."""
        out = self.run("xprop", "-id", window.id, "_NET_WM_PID", check=False).stdout
        match = re.search(r"= (\d+)", out)
        return int(match.group(1)) if match else None

    def tray_icon_of(self, pid: int) -> Window | None:
        """The window embedded in trayer that process `pid` owns."""
        for window in self.tray_icons():
            if self.window_pid(window) == pid:
                return window
        return None

    def window(self, title: str) -> Window | None:
        """A viewable top-level window titled `title` (exactly), else None."""
        for window in self.windows():
            if window.depth == 1 and window.title == title and self.viewable(window):
                return window
        return None

    def viewable(self, window: Window) -> bool:
        out = self.run("xwininfo", "-id", window.id, check=False).stdout
        return "Map State: IsViewable" in out

    def wait_for_window(self, title: str, timeout: float = 5.0) -> Window:
        deadline = time.monotonic() + timeout
        while True:
            window = self.window(title)
            if window is not None:
                return window
            if time.monotonic() > deadline:
                titles = sorted({w.title for w in self.windows() if w.depth == 1 and w.title})
                raise AssertionError(
                    f"no viewable window {title!r} within {timeout:.0f} s; top-level: {titles}"
                )
            time.sleep(0.05)

    # ---------------------------------------------------------------- pictures

    def screenshot(self, path: Path, rect: tuple[int, int, int, int] | None = None) -> Path:
        """Save the screen (or `rect` = x, y, width, height of it) as a PNG at `path`."""
        x, y, w, h = rect or (0, 0, *SCREEN)
        script = (
            "import sys\n"
            "from PySide6.QtGui import QGuiApplication\n"
            "app = QGuiApplication(sys.argv[:1])\n"
            "x, y, w, h = map(int, sys.argv[2:6])\n"
            "# The whole root, then the part: with xcb, grabWindow(0, x, y, ...) ignores x, y.\n"
            "image = app.primaryScreen().grabWindow(0).toImage().copy(x, y, w, h)\n"
            "sys.exit(0 if image.save(sys.argv[1], 'PNG', 9) else 1)\n"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run(sys.executable, "-c", script, str(path), str(x), str(y), str(w), str(h))
        return path

    # ---------------------------------------------------------------- processes

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command on this desktop (its env); DesktopError if it fails and `check`."""
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=STARTUP_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise DesktopError(
                f"`{shlex.join(argv)}` exited with {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


_TREE_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<id>0x[0-9a-f]+) (?P<title>\(has no name\)|\".*?\"): "
    r"\((?P<classes>.*?)\)\s+(?P<w>\d+)x(?P<h>\d+)[+-]-?\d+[+-]-?\d+\s+"
    r"\+(?P<x>-?\d+)\+(?P<y>-?\d+)"
)


def _parse_tree(text: str) -> list[Window]:
    windows: list[Window] = []
    for line in text.splitlines():
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        title = match["title"]
        title = "" if title == "(has no name)" else title[1:-1]
        classes = tuple(re.findall(r'"(.*?)"', match["classes"]))
        windows.append(
            Window(
                id=match["id"],
                title=title,
                classes=classes,
                x=int(match["x"]),
                y=int(match["y"]),
                width=int(match["w"]),
                height=int(match["h"]),
                depth=(len(match["indent"]) - 5) // 3 + 1,
            )
        )
    return windows


# ------------------------------------------------------------------------ start / stop

_DMENU = """#!/bin/sh
# dunst's context menu: the actions on stdin, a line each (`#Why? (summary) [id,why]`).
# Picks the one named in dmenu-choice, as a user would, and records it.
dir={directory}
cat >"$dir/dmenu-menu"
picked=$(grep -F "$(cat "$dir/dmenu-choice")" "$dir/dmenu-menu" | tail -n 1)
printf '%s\\n' "$picked" >"$dir/dmenu-chosen"
printf '%s\\n' "$picked"
"""

_RECORD = """#!/bin/sh
# Run by dunst for every notification it shows: one JSON line in notifications.jsonl.
received=$(date +%s.%N)
exec {python} -I -S -c '
import json, os, sys
keys = ("APP_NAME", "SUMMARY", "BODY", "URGENCY", "ID", "TIMEOUT", "TIMESTAMP")
record = {{k.lower(): os.environ.get("DUNST_" + k, "") for k in keys}}
record["appname"] = record.pop("app_name")
record["received"] = float(sys.argv[1])
with open(sys.argv[2], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\\n")
' "$received" {log}
"""

_DUNSTRC = """[global]
    monitor = 0
    follow = none
    width = 360
    height = 200
    origin = top-right
    offset = 8x32
    font = DejaVu Sans 9
    format = "<b>%s</b>\\n%b"
    frame_width = 1
    frame_color = "#8a8a8a"
    separator_color = frame
    padding = 10
    horizontal_padding = 10
    idle_threshold = 0
    show_indicators = no
    history_length = 100
    dmenu = {dmenu}
    mouse_left_click = do_action, close_current

[urgency_low]
    background = "#f4f4f4"
    foreground = "#333333"

[urgency_normal]
    background = "#ffffff"
    foreground = "#1a1a1a"

[urgency_critical]
    background = "#ffffff"
    foreground = "#1a1a1a"
    frame_color = "#c62828"

[record]
    summary = "*"
    script = {record}
"""


def _environment(directory: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DBUS_", "XDG_", "DISPLAY", "WAYLAND_", "QT_", "XAUTHORITY"))
    }
    for name, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = directory / sub
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    env["QT_QPA_PLATFORM"] = "xcb"
    return env


def start_desktop(directory: Path) -> Desktop:
    """Start Xvfb, a session bus, trayer and dunst under `directory`; return once each
    answers (the X socket, dunst on the bus, trayer's panel mapped)."""
    problems = missing_requirements()
    if problems:
        raise DesktopError("; ".join(problems))
    started = time.monotonic()
    deadline = started + STARTUP_TIMEOUT
    directory.mkdir(parents=True, exist_ok=True)
    env = _environment(directory)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    desktop: Desktop | None = None
    bus_pid = 0
    try:
        display = _start_xvfb(directory, env, processes, deadline)
        env["DISPLAY"] = display
        subprocess.run(["xsetroot", "-solid", BACKGROUND], env=env, check=True, timeout=10)
        bus_pid, env["DBUS_SESSION_BUS_ADDRESS"] = _start_bus(directory, env)
        desktop = Desktop(directory, display, env, bus_pid, processes)
        _write_dunst_files(directory)
        _spawn(
            desktop,
            "dunst",
            ["dunst", "-config", str(directory / "dunstrc")],
        )
        _spawn(
            desktop,
            "trayer",
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "request",
                "--height",
                "24",
                "--transparent",
                "false",
                "--tint",
                "0xdddddd",
                "--SetDockType",
                "true",
                "--SetPartialStrut",
                "false",
            ],
        )
        _wait(desktop, "dunst on the session bus", deadline, lambda: _dunst_answers(desktop))
        _wait(desktop, "trayer's panel", deadline, lambda: _panel_mapped(desktop))
    except BaseException:
        if desktop is not None:
            stop_desktop(desktop)
        else:
            for process in processes.values():
                _end(process)
            if bus_pid:
                _kill(bus_pid)
        raise
    desktop.startup_seconds = time.monotonic() - started
    return desktop


def _start_xvfb(
    directory: Path,
    env: dict[str, str],
    processes: dict[str, subprocess.Popen[bytes]],
    deadline: float,
) -> str:
    read_fd, write_fd = os.pipe()
    try:
        with (directory / "xvfb.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    "Xvfb",
                    "-displayfd",
                    str(write_fd),
                    "-screen",
                    "0",
                    f"{SCREEN[0]}x{SCREEN[1]}x24",
                    "-nolisten",
                    "tcp",
                    "-dpi",
                    "96",
                    # Not reset when the last client goes (xsetroot's colour, the first
                    # probe's connection): the desktop lives until stop_desktop.
                    "-noreset",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        processes["xvfb"] = process
        os.close(write_fd)
        write_fd = -1
        number = b""
        while not number.endswith(b"\n"):
            chunk = os.read(read_fd, 16)
            if not chunk:
                log_text = (directory / "xvfb.log").read_text(errors="replace")
                raise DesktopError(f"Xvfb exited before naming its display: {log_text}")
            number += chunk
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    display = f":{int(number)}"
    socket = Path(f"/tmp/.X11-unix/X{int(number)}")
    while not socket.exists() or (
        subprocess.run(
            ["xdpyinfo", "-display", display],
            capture_output=True,
            env=env,
            check=False,
            timeout=STARTUP_TIMEOUT,
        ).returncode
        != 0
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            raise DesktopError(f"Xvfb {display} never answered xdpyinfo")
        time.sleep(0.02)
    return display


_BUS_CONFIG = """<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
"""The session bus, with no <servicedir>: nothing is started on demand (the machine's
gnome-keyring would pop a password prompt over the screen when the tray's sign-in looks
for a keychain; a second dunst would answer if ours died). What runs on it, we start."""


def _start_bus(directory: Path, env: dict[str, str]) -> tuple[int, str]:
    return start_session_bus(directory, Path(env["XDG_RUNTIME_DIR"]) / "bus", env)


def start_session_bus(
    directory: Path, socket: Path, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """A private session bus on ``socket`` that starts no service on demand (its config in
    ``directory``): (pid, address). End it by that pid. Shared by the desktop, the
    keychain of the sign-in tests and the notifier's no-service test."""
    config = directory / "bus.conf"
    config.write_text(_BUS_CONFIG.format(socket=socket))
    bus = subprocess.run(
        [
            "dbus-daemon",
            f"--config-file={config}",
            "--fork",
            "--print-address=1",
            "--print-pid=1",
        ],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    lines = bus.stdout.split()
    if bus.returncode != 0 or len(lines) < 2:
        raise DesktopError(f"dbus-daemon failed ({bus.returncode}): {bus.stderr}")
    return int(lines[1]), lines[0]


def _write_dunst_files(directory: Path) -> None:
    dmenu = directory / "dmenu.sh"
    dmenu.write_text(_DMENU.format(directory=shlex.quote(str(directory))))
    record = directory / "record.sh"
    record.write_text(
        _RECORD.format(
            python=shlex.quote(sys.executable),
            log=shlex.quote(str(directory / "notifications.jsonl")),
        )
    )
    for script in (dmenu, record):
        script.chmod(0o755)
    (directory / "dunstrc").write_text(
        _DUNSTRC.format(dmenu=json.dumps(str(dmenu)), record=json.dumps(str(record)))
    )


def _spawn(desktop: Desktop, name: str, argv: list[str]) -> None:
    with (desktop.directory / f"{name}.log").open("wb") as log:
        desktop.processes[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=desktop.env,
            cwd=desktop.directory,
            start_new_session=True,
        )


def _dunst_answers(desktop: Desktop) -> bool:
    return desktop.run("dunstctl", "is-paused", check=False).returncode == 0


def _panel_mapped(desktop: Desktop) -> bool:
    for window in desktop.windows():
        if window.title == "panel" and "trayer" in window.classes:
            return desktop.viewable(window)
    return False


def _wait(desktop: Desktop, what: str, deadline: float, ready: Any) -> None:
    while not ready():
        for name, process in desktop.processes.items():
            if process.poll() is not None:
                raise DesktopError(
                    f"{name} exited with {process.returncode}: {desktop.log(name)[-2000:]}"
                )
        if time.monotonic() > deadline:
            logs = {name: desktop.log(name)[-1000:] for name in desktop.processes}
            raise DesktopError(f"{what} not ready within {STARTUP_TIMEOUT:.0f} s; logs: {logs}")
        time.sleep(0.05)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def stop_desktop(desktop: Desktop) -> None:
    """End dunst, trayer, the bus and Xvfb: the PIDs this module started, nothing else."""
    for name in ("dunst", "trayer"):
        process = desktop.processes.get(name)
        if process is not None:
            _end(process)
    _kill(desktop.bus_pid)
    xvfb = desktop.processes.get("xvfb")
    if xvfb is not None:
        _end(xvfb)
