"""The tray application (`ui.app.TrayApp`) under pytest-qt with the offscreen platform,
against a real `pullgate agent` and real denials made by the docker CLI through the shim.

Notifications go to a recording notifier (the desktop path, D-Bus and dunst, is tested by
the desktop harness); everything else is the real tray: its event feed on the real control
socket, its model, its windows. A fake control socket (tests/fake_control.py) stands in
where the agent cannot misbehave on demand: garbage, huge lines, a flood.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Offscreen for these tests only: set before pytest-qt creates the QApplication, and only
# when no other module chose a platform (the desktop harness runs under Xvfb with xcb).
if "QT_QPA_PLATFORM" not in os.environ:
    os.environ["QT_QPA_PLATFORM"] = "offscreen"

from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot

from bench.realdocker import DockerEnv, SeededImage
from tests.agent_process import (
    AgentProcess,
    docker_popen_with,
    docker_via,
    shim_environ,
    shim_policy,
    start_agent,
)
from tests.fake_control import FakeControl, json_answer, sse_head
from ui import texts
from ui.app import TrayApp
from ui.model import DecisionLog, DecisionView, IconState, tray_state
from ui.stream import Backoff, EventFeed
from ui.windows import DecisionsWindow, StatusWindow, WhyWindow, cli_command

NOTIFY_BUDGET = 1.0
MAX_WIDTH = 600
"""Pixels: no window or menu grows wider than this, whatever the agent's text."""


class RecordingNotifier(QObject):
    activated = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    def notify(self, title: str, body: str, key: str, *, quiet: bool = False) -> None:
        self.sent.append(
            {"title": title, "body": body, "key": key, "quiet": quiet, "at": time.monotonic()}
        )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgtr-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def rules_policy() -> dict[str, Any]:
    return shim_policy(
        messages={"help_url": "https://it.acme.test/request?image={image}", "contact": "it@acme"}
    )


@pytest.fixture
def wired(docker_env: DockerEnv, tmp_path: Path, short_dir: Path) -> Iterator[AgentProcess]:
    agent = start_agent(
        tmp_path, docker_env.socket_path, rules_policy(), ["--control", str(short_dir / "c.sock")]
    )
    try:
        yield agent
        agent.stop()
    finally:
        agent.kill()


@pytest.fixture(autouse=True)
def _collect_on_the_gui_thread() -> Iterator[None]:
    """As the tray's main() does: no automatic garbage collection while a test runs (it
    would run in whichever thread allocates, and destroying a test's leftover Qt objects in
    the event feed's thread crashed the suite), and a collection here, on the GUI thread,
    after each test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.enable()


def make_tray(qtbot: QtBot, control: Path, **kwargs: Any) -> tuple[TrayApp, RecordingNotifier]:
    notifier = RecordingNotifier()
    tray = TrayApp(control=control, notifier=notifier, run_doctor=False, **kwargs)
    tray.start()
    qtbot.addWidget(tray.why_window)
    return tray, notifier


def wait_connected(qtbot: QtBot, tray: TrayApp, timeout: float = 10) -> None:
    qtbot.waitUntil(lambda: tray.status is not None, timeout=int(timeout * 1000))


# --------------------------------------------------------------------------- real agent


def test_a_denied_docker_pull_becomes_a_notification_within_a_second(
    qtbot: QtBot, wired: AgentProcess, docker_env: DockerEnv, short_dir: Path
) -> None:
    tray, notifier = make_tray(qtbot, short_dir / "c.sock")
    try:
        wait_connected(qtbot, tray)
        assert tray.state.icon is IconState.OK
        result = docker_via(wired, docker_env, "pull", "someuser/nginx")
        refused = time.monotonic()
        assert result.returncode != 0 and "pullgate:" in result.stderr
        qtbot.waitUntil(lambda: bool(notifier.sent), timeout=3000)
        sent = notifier.sent[0]
        assert sent["at"] - refused <= NOTIFY_BUDGET
        assert sent["title"] == "Pull blocked: someuser/nginx"
        assert "Use the official image 'nginx' instead." in sent["body"]
        assert sent["quiet"] is False

        notifier.activated.emit(sent["key"])  # the user clicks the notification
        fields = tray.why_window.fields()
        assert tray.why_window.isVisible()
        assert fields[texts.WHY_IMAGE] == "docker.io/someuser/nginx:latest"
        # The docker CLI sends the name normalised: "as typed" is shown only when it differs.
        assert fields.get(texts.WHY_AS_TYPED, "someuser/nginx").endswith("someuser/nginx")
        assert fields[texts.WHY_CATEGORY] == texts.CATEGORY["community"]
        # What to do: the event's remediation.alternative, its command beside Copy command.
        assert fields[texts.WHY_WHAT_TO_DO] == "Use the official image 'nginx' instead."
        window = tray.why_window
        assert window.command.text() == "docker pull nginx" and window.command_box.isVisible()
        assert fields[texts.WHY_CONTACT] == "it@acme"
        assert "acme" in fields[texts.WHY_POLICY] and "\n" not in fields[texts.WHY_POLICY]
        assert "docker" in fields[texts.WHY_COMMAND] and "pull" in fields[texts.WHY_COMMAND]
        # The denial message is folded away (its help URL and contact have rows of their own).
        assert texts.WHY_MESSAGE not in fields and not window.message.isVisible()
        assert window.copy.isEnabled() and window.request.isEnabled()
        assert window.focusWidget() is window.copy  # the primary button, no caret in a value
        window.copy.click()
        from PySide6.QtGui import QGuiApplication

        assert QGuiApplication.clipboard().text() == "docker pull nginx"
        window.copy_message.click()
        assert QGuiApplication.clipboard().text().startswith("pullgate: pulling docker.io/")
    finally:
        tray.stop()


def test_a_burst_of_denied_pulls_is_one_notification(
    qtbot: QtBot, wired: AgentProcess, docker_env: DockerEnv, short_dir: Path
) -> None:
    tray, notifier = make_tray(qtbot, short_dir / "c.sock")
    try:
        wait_connected(qtbot, tray)
        env = shim_environ(wired, docker_env)
        names = [f"someuser/tool{i}" for i in range(6)]
        procs = [docker_popen_with(env, "pull", name, cli=docker_env.docker_cli) for name in names]
        for proc in procs:
            proc.communicate(timeout=60)
        qtbot.waitUntil(lambda: bool(notifier.sent), timeout=3000)
        qtbot.wait(int((tray.batcher.timing.burst_gap + 0.5) * 1000))
        assert len({n["key"] for n in notifier.sent}) == 1, notifier.sent
        last = notifier.sent[-1]
        assert last["title"] == "6 pulls blocked"
        for name in names:
            assert f"• {name}" in last["body"]
        tray.show_why(last["key"])
        assert tray.why_window.batch.count() == 6
    finally:
        tray.stop()


def test_the_decisions_list_filters(
    qtbot: QtBot,
    wired: AgentProcess,
    docker_env: DockerEnv,
    seeded: dict[str, SeededImage],
    short_dir: Path,
) -> None:
    tray, _ = make_tray(qtbot, short_dir / "c.sock")
    try:
        wait_connected(qtbot, tray)
        assert docker_via(wired, docker_env, "pull", "alpine").returncode == 0
        assert docker_via(wired, docker_env, "pull", "someuser/tool").returncode != 0
        qtbot.waitUntil(lambda: len(tray.decisions) >= 2, timeout=5000)
        tray.show_decisions()
        window = tray.decisions_window
        qtbot.addWidget(window)
        window.set_filter("deny")
        assert window.rows() and all("docker.io/someuser/tool" in r for r in window.rows())
        window.set_filter("allow")
        assert any("alpine" in r for r in window.rows())
        assert not any("someuser" in r for r in window.rows())
        window.set_filter(None, "ALPINE")
        assert window.rows() and all("alpine" in r for r in window.rows())
    finally:
        tray.stop()


def test_refresh_policy_shows_the_agents_answer(
    qtbot: QtBot, wired: AgentProcess, short_dir: Path
) -> None:
    tray, _ = make_tray(qtbot, short_dir / "c.sock")
    try:
        wait_connected(qtbot, tray)
        with qtbot.waitSignal(
            tray.action_done, timeout=5000, check_params_cb=lambda t: t != texts.REFRESH_RUNNING
        ):
            tray.refresh_policy()
        assert tray.last_action.startswith("Policy refresh failed: this agent enforces a local")
        # In the menu, elided when long (whole in its tooltip).
        assert any(tray.last_action.startswith(line.rstrip("…")) for line in tray.menu_lines())
    finally:
        tray.stop()


def test_agent_stopped_shows_down_then_reconnects_by_itself(
    qtbot: QtBot, docker_env: DockerEnv, tmp_path: Path, short_dir: Path
) -> None:
    control = short_dir / "c.sock"
    agent = start_agent(
        tmp_path, docker_env.socket_path, rules_policy(), ["--control", str(control)]
    )
    tray, _ = make_tray(qtbot, control)
    try:
        wait_connected(qtbot, tray)
        agent.stop()
        qtbot.waitUntil(lambda: tray.state.icon is IconState.DOWN, timeout=5000)
        assert tray.state.tooltip == "Pullgate — " + texts.STATE_DOWN
        assert tray.menu_lines()[0] == texts.STATE_DOWN
        assert set(tray.menu_lines()) & set(texts.MENU_AGENT_DOWN.values())
        agent = start_agent(
            tmp_path, docker_env.socket_path, rules_policy(), ["--control", str(control)]
        )
        qtbot.waitUntil(lambda: tray.state.icon is IconState.OK, timeout=40_000)
        assert tray.stream_state.connected
    finally:
        tray.stop()
        agent.kill()


# --------------------------------------------------------------------------- the windows


def denial_event(**changes: Any) -> DecisionView:
    event: dict[str, Any] = {
        "action": "image-pull",
        "decision": "deny",
        "image": "docker.io/someuser/tool:latest",
        "input": "someuser/tool",
        "category": "community",
        "rule": "no-tool",
        "reason": "someuser/tool is unmaintained; use acme/tool, our maintained fork",
        "policy": 'org "acme" policy serial 1',
        "policy_serial": 1,
        "message": "pullgate: pulling docker.io/someuser/tool:latest is not allowed: ...",
        "remediation": {"help_url": "https://it.acme.test/r?i=x", "contact": "#help"},
        "peer": {"pid": 7, "name": "docker", "command_line": ["docker", "pull", "x"]},
        "time": time.time(),
    }
    event.update(changes)
    d = DecisionView.from_json(event)
    assert d is not None
    return d


def test_the_why_window_says_what_to_do_without_an_alternative(qtbot: QtBot) -> None:
    window = WhyWindow()
    qtbot.addWidget(window)
    window.show_decisions(
        [denial_event()], "acme policy #1 — local file", 'org "acme" policy serial 1'
    )
    window.show()
    fields = window.fields()
    assert window.heading.text() == "Pull blocked: someuser/tool"
    assert fields[texts.WHY_WHAT_TO_DO] == texts.WHY_REMEDY_REQUEST
    assert texts.REMEDY_DEFAULT not in fields.values()  # the notification's words, not here
    assert fields[texts.WHY_POLICY] == "acme policy #1 — local file"  # one line, not two
    assert fields[texts.WHY_REASON].startswith("someuser/tool")  # the admin's case kept
    assert not window.command_box.isVisible()
    assert window.request.isVisible() and window.focusWidget() is window.request
    window.message_toggle.click()
    assert window.message.isVisible() and "pullgate: pulling" in window.message.text()
    # Sized to its content: no band of empty space under the rows.
    layout = window.layout()
    assert layout is not None
    assert window.height() <= layout.totalHeightForWidth(window.width()) + 2

    window.show_decisions([denial_event(remediation=None)], "", None)
    assert window.fields()[texts.WHY_WHAT_TO_DO] == texts.WHY_REMEDY_ASK
    assert not window.request.isVisible()
    assert window.focusWidget() is window.close_button


def test_long_untrusted_text_never_widens_a_window(qtbot: QtBot) -> None:
    name = "someuser/" + "a" * 180
    long = denial_event(
        image=f"docker.io/{name}:latest",
        input=name,
        reason="x" * 300 + " " + "/very/long/path" * 30,
        peer={"pid": 7, "name": "d" * 100, "command_line": ["docker", "pull", name]},
        message="m" * 600,
    )
    why = WhyWindow()
    qtbot.addWidget(why)
    why.show_decisions([long, denial_event()], "p" * 300, None)
    why.message_toggle.click()
    why.show()
    assert why.width() <= MAX_WIDTH and why.sizeHint().width() <= MAX_WIDTH
    log = DecisionLog()
    log.add(long)
    decisions = DecisionsWindow(log)
    qtbot.addWidget(decisions)
    decisions.refill()
    decisions.show()
    assert decisions.width() <= MAX_WIDTH and decisions.sizeHint().width() <= MAX_WIDTH
    status = StatusWindow()
    qtbot.addWidget(status)
    status.set_state(tray_state(None, now=time.time(), error="e" * 200 + "/x" * 100), time.time())
    status.show()
    assert status.width() <= MAX_WIDTH and status.sizeHint().width() <= MAX_WIDTH
    assert status.focusWidget() is status.close_button  # no caret after the heading


def test_the_decisions_list_has_columns_and_roomy_rows(qtbot: QtBot) -> None:
    log = DecisionLog()
    log.add(denial_event(decision="allow", image="docker.io/library/alpine:latest"))
    log.add(denial_event())
    window = DecisionsWindow(log)
    qtbot.addWidget(window)
    window.refill()
    window.show()
    header = window.list.headerItem()
    assert [header.text(c) for c in range(4)] == list(texts.DECISIONS_COLUMNS)
    first = window.list.topLevelItem(0)
    assert first is not None and first.text(1) == texts.DECISIONS_VERDICT["deny"]
    assert first.text(3).startswith("someuser/tool is unmaintained")
    row = window.list.visualItemRect(first)
    assert row.height() >= window.list.fontMetrics().height() + 8


# --------------------------------------------------------------------------- a bad socket


def test_garbage_huge_lines_and_a_flood_never_crash_it(qtbot: QtBot, short_dir: Path) -> None:
    status = {"mode": "enforce", "policy": {"state": "default", "enforcing": "built-in"}}
    denial = {
        "decision": "deny",
        "action": "image-pull",
        "image": "docker.io/someuser/flood:latest",
        "input": "someuser/flood",
        "reason": "community",
        "rule": "category:community",
        "policy": "built-in",
        "policy_serial": 0,
    }
    frame = b"event: decision\ndata: " + json.dumps(denial).encode() + b"\n\n"
    rounds = {"n": 0}

    def events(conn: socket.socket) -> None:
        rounds["n"] += 1
        conn.sendall(sse_head())
        conn.sendall(b"\x00\xff garbage without structure\n\n")
        conn.sendall(b"event: decision\ndata: {not json\n\n")
        conn.sendall(b"event: decision\ndata: " + b"[" * 100_000 + b"\n\n")
        conn.sendall(b"event: decision\ndata: " + b"x" * (2 * 1024 * 1024) + b"\n\n")
        conn.sendall(frame * 2000)  # a flood
        conn.sendall(b"event: policy\ndata: {}\n\n")

    def status_route(conn: socket.socket) -> None:
        conn.sendall(json_answer(200, status))

    fake = FakeControl(
        short_dir / "c.sock",
        {
            ("GET", "/v1/events"): events,
            ("GET", "/v1/status"): status_route,
            ("GET", "/v1/decisions"): lambda c: c.sendall(b"HTTP/1.1 200 OK\r\n\r\n{{{"),
        },
    )
    feed = EventFeed([fake.path], backoff=Backoff(first=0.2, cap=1.0), queue_limit=500)
    tray, notifier = make_tray(qtbot, fake.path, feed=feed)
    try:
        qtbot.waitUntil(lambda: bool(notifier.sent), timeout=5000)
        qtbot.waitUntil(lambda: rounds["n"] >= 2, timeout=5000)  # reconnected after EOF
        s = tray.stream_state
        assert s.malformed >= 2 and s.oversized >= 1
        assert any("skipped" in line for line in tray.menu_lines())
        assert len(notifier.sent) < 20  # thousands of denials, a handful of notifications
        assert "pulls blocked" in notifier.sent[-1]["title"]
    finally:
        tray.stop()
        fake.stop()


def test_no_socket_says_so_and_keeps_trying(qtbot: QtBot, short_dir: Path) -> None:
    feed = EventFeed([short_dir / "none.sock"], backoff=Backoff(first=0.1, cap=0.2))
    tray, _ = make_tray(qtbot, short_dir / "none.sock", feed=feed)
    try:
        qtbot.waitUntil(lambda: tray.stream_state.error is not None, timeout=3000)
        assert tray.state.icon is IconState.DOWN
        # A short cause in the menu, no countdown; the whole error in its tooltip and on
        # the status page.
        down = texts.MENU_AGENT_DOWN["missing"]
        assert down in tray.menu_lines()
        (action,) = [a for a in tray.status_actions if a.text() == down]
        assert "cannot reach the agent" in action.toolTip()
        assert "none.sock" in dict(tray.state.rows)[texts.STATUS_AGENT]
        assert tray.menu.sizeHint().width() <= MAX_WIDTH
    finally:
        tray.stop()


# --------------------------------------------------------------------------- sign-in


def test_sign_in_with_a_device_code_then_sign_out(
    qtbot: QtBot, oidc_provider: Any, tmp_path: Path, short_dir: Path
) -> None:
    from tests.oidc_provider import CLIENT_ID

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "org": "acme",
                "oidc_issuer": oidc_provider.issuer,
                "oidc_client_id": CLIENT_ID,
                "oidc_scopes": ["openid", "email", "profile", "groups", "offline_access"],
                "ca_bundle": str(oidc_provider.ca_bundle),
                "allowed_domains": ["acme.test"],
            }
        )
    )
    control = short_dir / "c.sock"
    agent = start_agent(
        tmp_path / "agent",
        tmp_path / "no-docker.sock",
        None,
        ["--config", str(config), "--control", str(control)],
        expect_ping_ok=False,
    )
    tray, _ = make_tray(qtbot, control, config=config, keychain=lambda _settings: None)
    try:
        wait_connected(qtbot, tray)
        assert tray.state.signed_in is None and tray.state.sign_in_configured
        with oidc_provider.settings(device_interval=1):
            dialog = tray.show_sign_in()
            qtbot.addWidget(dialog)
            qtbot.waitUntil(dialog.device.isVisible, timeout=10_000)
            dialog.device.click()
            qtbot.waitUntil(lambda: bool(dialog.code.text()), timeout=10_000)
            assert dialog.copy_code.isVisible() and dialog.open_browser.isVisible()
            code = dialog.code.text()
            approver = threading.Thread(target=oidc_provider.approve_device, args=(code, "bob"))
            approver.start()
            qtbot.waitUntil(lambda: dialog.outcome is not None, timeout=30_000)
            approver.join(10)
        assert dialog.outcome is not None and dialog.outcome.ok, dialog.outcome
        assert dialog.outcome.email == "bob@acme.test"
        qtbot.waitUntil(lambda: tray.state.signed_in == "bob@acme.test", timeout=5000)
        tray.show_status()
        assert tray.status_window.fields()[texts.STATUS_IDENTITY].startswith("bob@acme.test")

        tray.sign_out()
        qtbot.waitUntil(lambda: tray.state.signed_in is None, timeout=10_000)
        assert "Agent: forgot your identity" in tray.last_action
        agent.stop()
    finally:
        tray.stop()
        agent.kill()


def test_the_tray_restores_and_renews_the_sign_in_silently(
    qtbot: QtBot,
    *,
    oidc_provider: Any,
    keychain: Any,
    tmp_path: Path,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a refresh token in the keychain (an earlier sign-in), the tray signs the user
    in at the agent with no window when the agent holds no sign-in (after a restart), and
    renews it before identity_max_age ends: the per-user side keeps the sign-in alive."""
    from keyring.backends import SecretService

    from agent.identity.keychain import Keychain
    from agent.identity.session import SignInSession, SignInSettings
    from tests.oidc_provider import CLIENT_ID

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", keychain.env["DBUS_SESSION_BUS_ADDRESS"])
    scopes = ("openid", "email", "profile", "groups", "offline_access")
    settings = SignInSettings(
        oidc_provider.issuer, CLIENT_ID, scopes, ca_bundle=oidc_provider.ca_bundle
    )

    def store() -> Keychain:
        return Keychain(oidc_provider.issuer, CLIENT_ID, backend=SecretService.Keyring())  # type: ignore[no-untyped-call]

    store().delete()
    with oidc_provider.settings(device_interval=1), SignInSession(settings, store()) as session:
        first = session.device(
            lambda code: threading.Thread(
                target=oidc_provider.approve_device, args=(code.user_code, "bob")
            ).start(),
            cancel=threading.Event(),
        )
    assert first.stored

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "oidc_issuer": oidc_provider.issuer,
                "oidc_client_id": CLIENT_ID,
                "oidc_scopes": list(scopes),
                "ca_bundle": str(oidc_provider.ca_bundle),
                "identity_max_age": "5m",
            }
        )
    )
    control = short_dir / "c.sock"
    agent = start_agent(
        tmp_path / "agent",
        tmp_path / "no-docker.sock",
        None,
        ["--config", str(config), "--control", str(control)],
        expect_ping_ok=False,
    )
    skew = [0.0]  # the tray's clock, moved forward to reach the renewal time
    tray, _ = make_tray(
        qtbot,
        control,
        config=config,
        keychain=lambda _settings: store(),
        wall=lambda: time.time() + skew[0],
    )
    try:
        # Restored: the agent held nobody; the tray renewed from the keychain, no window.
        qtbot.waitUntil(lambda: tray.state.signed_in == "bob@acme.test", timeout=20_000)
        assert tray.sign_in_window is None
        identity = tray.status["identity"]["you"] if tray.status else {}
        accepted, expires = identity["accepted_at"], identity["expires_at"]
        assert tray.state.renew_at == pytest.approx(expires - 75, abs=1)  # 5 min / 4

        # Near the end of identity_max_age, the tray renews before the agent forgets it.
        time.sleep(1.1)  # a new token must differ from the last (iat is in seconds)
        skew[0] = expires - 70 - time.time()
        tray._render()  # the clock jumped: plan again (a real clock just gets there)

        def renewed() -> bool:
            you = (tray.status or {}).get("identity", {}).get("you")
            return isinstance(you, dict) and you["accepted_at"] > accepted

        qtbot.waitUntil(renewed, timeout=20_000)
        assert store().load() not in (None, first.tokens.refresh_token)  # rotated, stored
        agent.stop()
    finally:
        tray.stop()
        agent.kill()
        store().delete()


def test_the_diagnostics_run_pullgate_beside_a_frozen_tray() -> None:
    """A frozen tray's sys.executable is the tray, which knows no ``-m``: its doctor is
    the bundle's own ``pullgate`` beside it (tests/test_packaging_linux.py runs that
    command from the real bundle)."""
    tray = "/opt/pullgate/pullgate-tray"
    assert cli_command(tray, frozen=True, platform="linux") == ["/opt/pullgate/pullgate"]
    app = "/Applications/Pullgate.app/Contents/MacOS/pullgate-tray"
    assert cli_command(app, frozen=True, platform="darwin") == [
        "/Applications/Pullgate.app/Contents/MacOS/pullgate"
    ]
    exe = "C:/Program Files/Pullgate/pullgate-tray.exe"
    assert cli_command(exe, frozen=True, platform="win32") == [
        "C:/Program Files/Pullgate/pullgate.exe"
    ]
    assert cli_command("/usr/bin/python3", frozen=False) == ["/usr/bin/python3", "-m", "agent"]
    assert cli_command() == [sys.executable, "-m", "agent"]  # this test runs from source
