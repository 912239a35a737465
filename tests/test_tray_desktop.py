"""The tray on a real desktop (issue 14): Xvfb, a private session bus, trayer as the XEmbed
tray and dunst as the notification daemon (tests/desktop.py), a real agent in front of the
private dockerd, real denials through the docker CLI.

The notifier is driven first on its own, by a small Qt process (`DRIVER`) that reads
commands on stdin and writes what happens on stdout; then the tray application itself
(`python -m ui --control <the agent's control.sock>`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bench.desktop import start_session_bus
from bench.realdocker import DockerEnv
from tests.agent_process import (
    AgentProcess,
    LineStream,
    Reporter,
    describe,
    docker_via,
    shim_policy,
    start_agent,
)
from tests.desktop import Desktop
from ui import texts

DENIED = "someuser/tool"
TRAY_MAIN = "import sys; from ui.app import main; sys.exit(main(sys.argv[1:]))"

DRIVER = """
import json, sys
from PySide6.QtCore import QSocketNotifier
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import QApplication, QSystemTrayIcon
from ui.notify import Notifier

app = QApplication(sys.argv[:1])
app.setApplicationName("pullgate-notify-driver")
pixmap = QPixmap(22, 22)
pixmap.fill(QColor("#2e7d32"))
tray = QSystemTrayIcon(QIcon(pixmap))
tray.show()
notifier = Notifier(tray)

def say(**event):
    print(json.dumps(event), flush=True)

notifier.changed.connect(lambda: say(available=notifier.available, problem=notifier.problem))
notifier.activated.connect(lambda key: say(activated=key))

def command():
    line = sys.stdin.readline()
    if not line:
        notifier.close()
        app.quit()
        return
    title, body, key, quiet = json.loads(line)
    notifier.notify(title, body, key, quiet=quiet)

reader = QSocketNotifier(sys.stdin.fileno(), QSocketNotifier.Type.Read)
reader.activated.connect(command)
say(ready=True)
app.exec()
"""


class Driver:
    """The notifier in its own Qt process on the desktop."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=dict(env),
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None
        self.lines = LineStream(self.proc.stdout)
        self.expect(lambda e: e.get("ready") is True)

    def notify(self, title: str, body: str, key: str, *, quiet: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([title, body, key, quiet]) + "\n")
        self.proc.stdin.flush()

    def expect(self, matches: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.next(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"driver exited: {self.stderr()}")
            event = json.loads(line)
            if matches(event):
                return dict(event)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "<running>"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def driver(desktop: Desktop) -> Iterator[Driver]:
    desktop.close_notifications()
    running = Driver(desktop.env)
    try:
        yield running
    finally:
        running.close()


# --------------------------------------------------------------------------- the notifier


def test_notification_reaches_dunst_and_why_comes_back(desktop: Desktop, driver: Driver) -> None:
    since = len(desktop.notifications())
    driver.expect(lambda e: e.get("available") is True)
    driver.notify("Pull blocked: someuser/tool", "Community images are not allowed", "d-1")
    shown = desktop.wait_for_notification("Pull blocked: someuser/tool", since=since)
    assert shown["appname"] == "Pullgate"
    assert shown["body"] == "Community images are not allowed"
    assert shown["urgency"] == "NORMAL"
    assert int(shown["timeout"]) > 0
    picked = desktop.invoke_action("why", shown["id"])
    assert picked.endswith(f"[{shown['id']},why]"), picked
    assert driver.expect(lambda e: "activated" in e)["activated"] == "d-1"
    icon = desktop.tray_embedded("pullgate-notify-driver")
    assert icon is not None, desktop.tray_icons()


def test_a_burst_replaces_its_notification_and_quiet_is_low(
    desktop: Desktop, driver: Driver
) -> None:
    """Same key (one burst): replaced in place. Another key: a notification of its own."""
    since = len(desktop.notifications())
    driver.expect(lambda e: e.get("available") is True)
    driver.notify("Pull blocked: someuser/tool", "first", "b-1")
    first = desktop.wait_for_notification("Pull blocked: someuser/tool", since=since)
    driver.notify("Pull blocked: 2 images", "someuser/tool\nsomeuser/nginx", "b-1")
    second = desktop.wait_for_notification("Pull blocked: 2 images", since=since)
    assert second["id"] == first["id"], "the burst's second notification did not replace"
    assert desktop.count()["displayed"] == 1
    desktop.click_notification()  # the default action: clicking the body
    assert driver.expect(lambda e: "activated" in e)["activated"] == "b-1"
    driver.notify("Would be blocked: someuser/tool", "monitor mode", "q-1", quiet=True)
    quiet = desktop.wait_for_notification("Would be blocked: someuser/tool", since=since)
    assert quiet["urgency"] == "LOW"
    assert quiet["id"] != first["id"], "another burst replaced this one"


def test_no_notification_service_falls_back_to_the_balloon(
    desktop: Desktop, tmp_path: Path
) -> None:
    """A session bus with no notification service on it: `problem` says so, and the
    notification is Qt's own balloon, a window of the tray's process."""
    bus_pid, address = start_session_bus(tmp_path, tmp_path / "bus")
    running = Driver({**desktop.env, "DBUS_SESSION_BUS_ADDRESS": address})
    try:
        event = running.expect(lambda e: "problem" in e)
        assert event["available"] is False
        assert event["problem"] == "no notification service on the session bus"
        before = {w.id for w in desktop.windows()}
        since = len(desktop.notifications())
        running.notify("Pull blocked: someuser/tool", "balloon", "f-1")
        deadline = time.monotonic() + 5
        while True:
            balloons = [
                w
                for w in desktop.windows()
                if w.depth == 1
                and w.id not in before
                and w.title == "pullgate-notify-driver"
                and w.width > 100
                and desktop.viewable(w)
            ]
            if balloons:
                break
            assert time.monotonic() < deadline, "no balloon window appeared"
            time.sleep(0.05)
        assert len(desktop.notifications()) == since, "dunst got it over the other bus?"
    finally:
        running.close()
        os.kill(bus_pid, signal.SIGTERM)


# --------------------------------------------------------------------------- the tray app


class TrayProcess:
    """The tray app (`ui.app:main`, the pullgate-tray entry point) with `--control
    <control.sock>`, on the desktop."""

    def __init__(self, desktop: Desktop, control: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", TRAY_MAIN, "--control", str(control)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=desktop.env,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def tray_agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    """An agent that denies community images (the shim tests' policy)."""
    agent = start_agent(
        tmp_path_factory.mktemp("tray-agent"), docker_env.socket_path, shim_policy()
    )
    report(f"tray: agent answered /_ping {agent.ready_seconds:.2f} s after start")
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def tray(
    desktop: Desktop,
    tray_agent: AgentProcess,
    tmp_path_factory: pytest.TempPathFactory,
    report: Reporter,
) -> Iterator[TrayProcess]:
    """The tray app, its icon embedded in trayer."""
    control = tray_agent.socket_path.parent / "control.sock"
    started = time.monotonic()
    running = TrayProcess(desktop, control, tmp_path_factory.mktemp("tray") / "tray.log")
    try:
        while desktop.tray_icon_of(running.proc.pid) is None:
            assert running.proc.poll() is None, f"the tray exited: {running.output()}"
            assert time.monotonic() - started < 20, (
                f"the tray's icon was not embedded in trayer within 20 s; embedded:"
                f" {desktop.tray_icons()}; tray output: {running.output()}"
            )
            time.sleep(0.05)
        report(f"tray: icon embedded in trayer {time.monotonic() - started:.2f} s after start")
        yield running
    finally:
        running.stop()


def _pull_until_notified(
    desktop: Desktop, agent: AgentProcess, env: DockerEnv, image: str, tray: TrayProcess
) -> tuple[float, dict[str, Any]]:
    """`docker pull image` through the shim until the tray's notification for it reaches
    dunst (the tray subscribes to the agent's events some time after its icon shows; a
    pull before that is not notified, by design). Returns (seconds from the CLI returning
    the refusal to dunst having the notification, the notification)."""
    title = f"Pull blocked: {image}"
    deadline = time.monotonic() + 20
    while True:
        since = len(desktop.notifications())
        result = docker_via(agent, env, "pull", image)
        refused = time.time()
        assert result.returncode != 0, describe(result, agent)
        assert "pullgate" in result.stderr, describe(result, agent)
        try:
            shown = desktop.wait_for_notification(title, since=since, timeout=3.0)
        except AssertionError:
            assert time.monotonic() < deadline, (
                f"no notification {title!r} within 20 s of pulls; tray output:"
                f" {tray.output()[-3000:]}"
            )
            time.sleep(1.6)  # past the tray's burst gap: the next pull is a burst of its own
            continue
        return float(shown["received"]) - refused, shown


def test_tray_icon_is_embedded(desktop: Desktop, tray: TrayProcess) -> None:
    icon = desktop.tray_icon_of(tray.proc.pid)
    assert icon is not None
    assert desktop.viewable(icon)
    assert 16 <= icon.width <= 64 and 16 <= icon.height <= 64, icon


def test_blocked_pull_notifies_and_why_opens_the_window(
    desktop: Desktop,
    tray: TrayProcess,
    tray_agent: AgentProcess,
    docker_env: DockerEnv,
    report: Reporter,
) -> None:
    latency, shown = _pull_until_notified(desktop, tray_agent, docker_env, DENIED, tray)
    report(f"tray: CLI refused -> dunst had the notification in {latency * 1000:.0f} ms")
    assert shown["appname"] == "Pullgate"
    assert "community" in shown["body"].lower(), shown
    assert latency <= 1.0, f"the notification came {latency:.2f} s after the refusal"
    # A second, independent burst: measured again, now that the tray is surely subscribed.
    time.sleep(1.6)
    since = len(desktop.notifications())
    result = docker_via(tray_agent, docker_env, "pull", f"{DENIED}:1.0")
    refused = time.time()
    assert result.returncode != 0, describe(result, tray_agent)
    second = desktop.wait_for_notification(f"Pull blocked: {DENIED}:1.0", since=since)
    report(f"tray: second denial reached dunst in {(second['received'] - refused) * 1000:.0f} ms")
    assert second["received"] - refused <= 1.0
    picked = desktop.invoke_action("why", second["id"])
    assert picked.endswith(f"[{second['id']},why]"), picked
    window = desktop.wait_for_window(texts.WHY_TITLE, timeout=5.0)
    assert desktop.window_pid(window) == tray.proc.pid
    assert window.width >= 300 and window.height >= 200, window
