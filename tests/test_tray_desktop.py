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

from tests.agent_process import LineStream
from tests.desktop import Desktop

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


BUS_WITHOUT_SERVICES = """<busconfig>
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
"""A session bus that can start no service (no <servicedir>): the desktop's dunst.service
would otherwise be activated on it."""


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
    picked = desktop.invoke_action("why")
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
    config = tmp_path / "bus.conf"
    config.write_text(BUS_WITHOUT_SERVICES.format(socket=tmp_path / "bus"))
    bus = subprocess.run(
        ["dbus-daemon", f"--config-file={config}", "--fork", "--print-address=1", "--print-pid=1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    address, pid = bus.stdout.split()[:2]
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
        os.kill(int(pid), signal.SIGTERM)
