"""Screenshots of the tray in each state, taken on a real desktop, into docs/images/.

Run as root on Linux from the repository: ``.venv/bin/python scripts/tray_screenshots.py``
(``--out DIR`` to write elsewhere). It starts what the tests start, all private and under
a temporary directory: a dockerd with its registry mirror (bench/realdocker.py), the OpenID
provider of the sign-in tests (tests/oidc_provider.py), a desktop (bench/desktop.py: Xvfb,
trayer, dunst), an agent with a managed config naming the provider, and the tray
(``ui.app.TrayApp``) in a small driver that opens its windows on command. Then it makes
real decisions with the docker CLI through the shim and saves, cropped to what matters:

- ``tray-notification.png``: dunst's notification for a refused pull, under the tray icon;
- ``tray-why-rule.png``: the "Why was this blocked?" window of ``someuser/tool``, opened
  by dunst's "Why?" action: refused by the admin's own rule, their words, *Request access…*;
- ``tray-why.png``: the same for ``someuser/nginx``, opened from the recent decisions: the
  official image instead, with *Copy command*;
- ``tray-decisions.png``: the recent decisions (allowed and denied);
- ``tray-status.png``: the status page;
- ``tray-sign-in.png``: the sign-in dialog (device code) against the real provider;
- ``tray-agent-down.png``: the tray menu and status page once the agent has stopped.

Everything it starts is ended by PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.desktop import Desktop, Window, start_desktop, stop_desktop  # noqa: E402
from bench.realdocker import seed_image, start_docker_env, stop_docker_env  # noqa: E402
from tests.agent_process import (  # noqa: E402
    AgentProcess,
    LineStream,
    docker_via,
    shim_policy,
    start_agent,
)
from tests.oidc_provider import CLIENT_ID, start_oidc_provider, stop_oidc_provider  # noqa: E402
from ui import texts  # noqa: E402

DRIVER = """
import json, sys
from pathlib import Path
from PySide6.QtCore import QSocketNotifier
from PySide6.QtWidgets import QAbstractButton, QApplication
from ui import texts
from ui.app import TrayApp

app = QApplication(sys.argv[:1])
app.setApplicationName(texts.APP_NAME)
app.setQuitOnLastWindowClosed(False)
tray = TrayApp(control=Path(sys.argv[1]), config=Path(sys.argv[2]))
tray.start()

def say(**event):
    print(json.dumps(event), flush=True)

tray.state_changed.connect(lambda state: say(state=str(getattr(state, "tooltip", state))))

def command():
    line = sys.stdin.readline().strip()
    if not line:
        reader.setEnabled(False)
        tray.stop()
        app.quit()
        return
    if line == "close":
        for widget in app.topLevelWidgets():
            # Not the XEmbed tray icon: with no StatusNotifier host, Qt's icon is a widget.
            if widget.isVisible() and widget.metaObject().className() != "QSystemTrayIconSys":
                widget.close()
    elif line.startswith("click "):
        wanted = line[6:]
        for widget in app.topLevelWidgets():
            for button in widget.findChildren(QAbstractButton):
                if button.isVisible() and wanted in button.text().replace("&", ""):
                    button.click()
    elif line.startswith("why_of "):  # the recent decisions' Why? on the image's row
        window = tray.decisions_window
        window.refill()
        for row, d in enumerate(window.shown):
            if d.input == line[7:] or d.shown_name == line[7:]:
                window.list.setCurrentItem(window.list.topLevelItem(row))
                window.why.click()
                break
    elif line == "menu":
        menu = tray.tray.contextMenu()
        geometry = tray.tray.geometry()
        menu.popup(geometry.bottomLeft())
    else:
        getattr(tray, line)()
    say(done=line)

reader = QSocketNotifier(sys.stdin.fileno(), QSocketNotifier.Type.Read)
reader.activated.connect(command)
say(ready=True)
app.exec()
"""

POLICY_EXTRA: dict[str, Any] = {
    "rules": [
        {
            "id": "no-tool",
            "match": "someuser/tool",
            "action": "deny",
            "message": "someuser/tool is unmaintained; use acme/tool, our maintained fork",
        }
    ],
    "messages": {
        "help_url": "https://it.acme.example/images/request?image={image}&rule={rule}",
        "contact": "#platform-help on chat",
    },
}

MARGIN = 12


def log(message: str) -> None:
    print(f"[tray_screenshots {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)


class Driver:
    def __init__(self, desktop: Desktop, control: Path, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(control), str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                env=desktop.env,
                cwd=REPO,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        self.lines = LineStream(self.proc.stdout)
        self.expect(lambda e: e.get("ready") is True)

    def expect(self, matches: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.next(max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"the tray exited: {self.log_path.read_text()[-3000:]}")
            if matches(json.loads(line)):
                return

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self.expect(lambda e: e.get("done") == command)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def crop(desktop: Desktop, window: Window, path: Path, *, extra: int = MARGIN) -> Path:
    x = max(0, window.x - extra)
    y = max(0, window.y - extra)
    w = min(1280, window.x + window.width + extra) - x
    h = min(800, window.y + window.height + extra) - y
    return desktop.screenshot(path, (x, y, w, h))


def union(*windows: Window) -> Window:
    x0 = min(w.x for w in windows)
    y0 = min(w.y for w in windows)
    x1 = max(w.x + w.width for w in windows)
    y1 = max(w.y + w.height for w in windows)
    return Window("", "", (), x0, y0, x1 - x0, y1 - y0, 1)


def dunst_window(desktop: Desktop) -> Window:
    for window in desktop.windows():
        if (
            window.depth == 1
            and "Dunst" in window.classes
            and window.height > 10
            and desktop.viewable(window)
        ):
            return window
    raise RuntimeError("dunst shows no notification")


def tray_icon(desktop: Desktop, pid: int) -> Window:
    icon = desktop.tray_icon_of(pid)
    if icon is None:
        raise RuntimeError(f"no tray icon of {pid}: {desktop.tray_icons()}")
    return icon


def popup_of(desktop: Desktop, pid: int, before: set[str]) -> Window:
    """The newest viewable top-level window of `pid` (a menu: override-redirect)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for window in desktop.windows():
            if (
                window.depth == 1
                and window.id not in before
                and window.width > 40
                and desktop.viewable(window)
                and desktop.window_pid(window) == pid
            ):
                return window
        time.sleep(0.1)
    raise RuntimeError("the tray's menu did not open")


def start_keyring(desktop: Desktop) -> subprocess.Popen[bytes]:
    """gnome-keyring-daemon on the desktop's bus with an unlocked login keyring (as on a
    developer's desktop), so that the sign-in stores its refresh token without a prompt."""
    process = subprocess.Popen(
        ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=desktop.env,
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(b"pullgate-screenshots")
    process.stdin.close()
    probe = "import keyring; keyring.set_password('pullgate-probe', 'p', 'ok')"
    deadline = time.monotonic() + 15
    while subprocess.run([sys.executable, "-c", probe], env=desktop.env, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("gnome-keyring did not answer")
        time.sleep(0.2)
    return process


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgshot-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def take(out: Path, work: Path) -> list[Path]:
    saved: list[Path] = []
    env = start_docker_env(work / "docker")
    provider = None
    desktop = None
    keyring: subprocess.Popen[bytes] | None = None
    agent: AgentProcess | None = None
    driver = None
    try:
        for name in ("alpine", "nginx"):
            seed_image(env, name)
        provider = start_oidc_provider(work / "oidc")
        desktop = start_desktop(work / "desktop")
        keyring = start_keyring(desktop)
        config = work / "config.json"
        config.write_text(
            json.dumps(
                {
                    "org": "acme",
                    "oidc_issuer": provider.issuer,
                    "oidc_client_id": CLIENT_ID,
                    "ca_bundle": str(provider.ca_bundle),
                    "sign_in_methods": ["device"],
                }
            )
        )
        agent = start_agent(
            work / "agent", env.socket_path, shim_policy(**POLICY_EXTRA), ["--config", str(config)]
        )
        control = agent.socket_path.parent / "control.sock"
        driver = Driver(desktop, control, config, work / "tray.log")
        pid = driver.proc.pid
        deadline = time.monotonic() + 20
        while desktop.tray_icon_of(pid) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the tray icon was not embedded")
            time.sleep(0.1)
        time.sleep(2)  # the tray has subscribed to the agent's events

        log("decisions: alpine (allowed), someuser/nginx and someuser/tool (denied)")
        docker_via(agent, env, "pull", "alpine")
        docker_via(agent, env, "pull", "someuser/nginx")
        time.sleep(2)  # its own burst
        since = len(desktop.notifications())
        docker_via(agent, env, "pull", "someuser/tool")
        shown = desktop.wait_for_notification("Pull blocked: someuser/tool", since=since)
        time.sleep(0.3)
        icon = tray_icon(desktop, pid)
        bubble = dunst_window(desktop)
        saved.append(crop(desktop, union(icon, bubble), out / "tray-notification.png"))

        log("why window through dunst's Why? action")
        desktop.invoke_action("why", shown["id"])
        desktop.wait_for_window(texts.WHY_TITLE)
        desktop.close_notifications()  # not in the picture
        time.sleep(0.5)
        why = desktop.wait_for_window(texts.WHY_TITLE)  # its size once laid out
        saved.append(crop(desktop, why, out / "tray-why-rule.png"))
        driver.send("close")

        log("why window from the recent decisions")
        driver.send("why_of someuser/nginx")
        time.sleep(0.5)
        why = desktop.wait_for_window(texts.WHY_TITLE)
        saved.append(crop(desktop, why, out / "tray-why.png"))
        driver.send("close")

        log("recent decisions")
        driver.send("show_decisions")
        desktop.wait_for_window(texts.DECISIONS_TITLE)
        time.sleep(0.5)
        window = desktop.wait_for_window(texts.DECISIONS_TITLE)  # where it was put again
        saved.append(crop(desktop, window, out / "tray-decisions.png"))
        driver.send("close")

        log("status")
        driver.send("show_status")
        desktop.wait_for_window(texts.STATUS_TITLE)
        time.sleep(1.0)  # the status the window asked for
        window = desktop.wait_for_window(texts.STATUS_TITLE)  # its size with that status
        saved.append(crop(desktop, window, out / "tray-status.png"))
        driver.send("close")

        log("sign-in (device code from the real provider)")
        driver.send("show_sign_in")
        desktop.wait_for_window(texts.SIGN_IN_TITLE)
        time.sleep(1.0)
        driver.send("click Sign in with a code")
        time.sleep(2.5)  # the device code from the provider
        window = desktop.wait_for_window(texts.SIGN_IN_TITLE)
        saved.append(crop(desktop, window, out / "tray-sign-in.png"))
        driver.send("close")

        log("agent down")
        agent.stop()
        agent = None
        time.sleep(2.0)
        icon = tray_icon(desktop, pid)
        before = {w.id for w in desktop.windows()}
        driver.send("menu")
        menu = popup_of(desktop, pid, before)
        time.sleep(0.3)
        saved.append(crop(desktop, union(icon, menu), out / "tray-agent-down.png"))
    finally:
        if driver is not None:
            driver.stop()
        if agent is not None:
            agent.stop()
        if keyring is not None:
            keyring.terminate()
            keyring.wait(10)
        if desktop is not None:
            stop_desktop(desktop)
        if provider is not None:
            stop_oidc_provider(provider)
        stop_docker_env(env)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with scratch() as work:
        for path in take(args.out, work):
            log(f"saved {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
