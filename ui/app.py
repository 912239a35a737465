"""``pullgate-tray``: the system tray application (issue 14).

``TrayApp`` wires the parts: the event feed (``ui.stream``) pushes events and status, the
pure model (``ui.model``) turns them into an icon state, menu lines and notifications,
``ui.notify.Notifier`` shows the notifications, and the windows explain. The tray talks to
the agent only through the control API (``agent.control``); actions that touch the
network run in threads and report back by signal. No timer runs while nothing happens:
the only timers are single-shot ones for a burst of denials.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QObject, Qt, QTimer, QUrl, Signal, SignalInstance, qVersion
from PySide6.QtGui import QAction, QDesktopServices, QFontMetrics
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox, QSystemTrayIcon

from agent import __version__ as agent_version
from agent.control.client import ControlError, control_paths, control_request
from ui import texts
from ui.icons import icon_for
from ui.model import (
    BatchTiming,
    DecisionLog,
    DecisionView,
    DenialBatcher,
    DockerCheck,
    Notification,
    StreamEvent,
    TrayState,
    decisions_from_json,
    format_age,
    short,
    tray_state,
)
from ui.signin import (
    KeychainFactory,
    Outcome,
    SignInDialog,
    default_keychain,
    renew_silently,
    sign_out,
)
from ui.stream import EventFeed, StreamState
from ui.windows import DecisionsWindow, DiagnosticsWindow, StatusWindow, WhyWindow

__all__ = ["NotifierLike", "TrayApp", "main"]

BURSTS_KEPT = 200
MENU_TEXT_WIDTH = 480
"""Pixels of a status line in the menu; longer ones are elided (whole in the tooltip)."""
RENEW_RETRY = 300.0
"""Seconds before a failed silent renewal is tried again."""


class NotifierLike(Protocol):
    """What the tray needs of ``ui.notify.Notifier`` (a recording fake in tests)."""

    @property
    def activated(self) -> SignalInstance: ...

    def notify(self, title: str, body: str, key: str, *, quiet: bool = False) -> None: ...


class _Results(QObject):
    """Results of the tray's own worker threads, back on the Qt thread."""

    done = Signal(object, object)  # (callback, value)


class TrayApp(QObject):
    """The tray. ``start()`` shows the icon and connects; ``stop()`` ends the threads.

    For tests and the screenshot script: ``state`` (the latest ``TrayState``),
    ``stream_state``, ``decisions`` (the ``DecisionLog``), ``notifications`` (sent, in
    order), ``last_action`` (the last action's result in words), the windows
    (``why_window``...) and ``show_why(key)``, ``show_status()``, ``show_sign_in()``,
    ``show_decisions()``, ``show_diagnostics()``, ``refresh_policy()``, ``sign_out()``.
    """

    state_changed = Signal(object)  # TrayState
    action_done = Signal(str)

    def __init__(
        self,
        *,
        control: Path | None = None,
        config: Path | None = None,
        notifier: NotifierLike | None = None,
        keychain: KeychainFactory = default_keychain,
        timing: BatchTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        run_doctor: bool = True,
        feed: EventFeed | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.candidates: list[Path] = control_paths(control)
        self.config = config
        self.keychain = keychain
        self.wall = wall
        self.run_doctor_at_start = run_doctor
        self.tray = QSystemTrayIcon(self)
        self.feed = feed or EventFeed(self.candidates, parent=self)
        if notifier is None:
            from ui.notify import Notifier  # noqa: PLC0415 - D-Bus only for the real tray

            notifier = Notifier(self.tray, self)
        self.notifier = notifier
        self.notifier.activated.connect(self.show_why)
        self.batcher = DenialBatcher(clock, timing or BatchTiming())
        self.decisions = DecisionLog()
        self.bursts: OrderedDict[str, tuple[DecisionView, ...]] = OrderedDict()
        self.notifications: list[Notification] = []
        self.status: dict[str, Any] | None = None
        self.docker = DockerCheck()
        self.stream_state = StreamState()
        self.last_action = ""
        self.state: TrayState = tray_state(None, now=wall(), error=texts.STATE_CONNECTING)
        self._results = _Results(self)
        self._results.done.connect(lambda callback, value: callback(value))
        self._busy: set[str] = set()

        self.flush_timer = QTimer(self)
        self.flush_timer.setSingleShot(True)
        self.flush_timer.timeout.connect(self._flush)
        # Silent renewal of the sign-in: one single-shot timer, set from the status.
        self.renew_timer = QTimer(self)
        self.renew_timer.setSingleShot(True)
        self.renew_timer.timeout.connect(self._renew)
        self._renew_tried: object = None  # what the last silent renewal was for
        self._renew_key: object = None  # what the timer's renewal is for
        self._renew_not_before = 0.0  # wall time: after a failure, wait RENEW_RETRY

        self.why_window = WhyWindow()
        self.decisions_window = DecisionsWindow(self.decisions)
        self.decisions_window.why_requested.connect(lambda d: self._show_why_for([d]))
        self.status_window = StatusWindow()
        self.status_window.diagnostics_requested.connect(self.show_diagnostics)
        self.diagnostics_window = DiagnosticsWindow(lambda: self.feed.path, config)
        self.diagnostics_window.finished.connect(self._doctor_done)
        self.sign_in_window: SignInDialog | None = None
        self._messages: list[QMessageBox] = []

        self.menu = QMenu()
        self.menu.setAccessibleName(texts.APP_NAME)
        self.menu.setToolTipsVisible(True)
        self.status_actions = [self._info_action() for _ in range(4)]
        self.menu.addSeparator()
        self.action_why = self._action(texts.MENU_WHY, self.show_why)
        self.action_decisions = self._action(texts.MENU_DECISIONS, self.show_decisions)
        self.action_status = self._action(texts.MENU_STATUS, self.show_status)
        self.menu.addSeparator()
        self.action_sign_in = self._action(texts.MENU_SIGN_IN, self.show_sign_in)
        self.action_sign_out = self._action(texts.MENU_SIGN_OUT, self.sign_out)
        self.action_refresh = self._action(texts.MENU_REFRESH, self.refresh_policy)
        self.action_diagnostics = self._action(texts.MENU_DIAGNOSTICS, self.show_diagnostics)
        self.action_audit = self._action(texts.MENU_AUDIT_FOLDER, self.open_audit_folder)
        self.menu.addSeparator()
        self.action_about = self._action(texts.MENU_ABOUT, self.show_about)
        self.action_quit = self._action(texts.MENU_QUIT, self._quit)
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._tray_activated)

        self.feed.events_ready.connect(self._drain)
        self.feed.status_changed.connect(self._status)
        self.feed.state_changed.connect(self._stream)
        self.feed.decisions_loaded.connect(self._decisions_loaded)
        self._render()

    # ----------------------------------------------------------------- menu building

    def _info_action(self) -> QAction:
        action = QAction(self.menu)
        action.setEnabled(False)
        self.menu.addAction(action)
        return action

    def _action(self, text: str, slot: Callable[[], object]) -> QAction:
        action = QAction(text, self.menu)
        action.triggered.connect(lambda _checked=False: slot())
        self.menu.addAction(action)
        return action

    # ----------------------------------------------------------------- life

    def start(self) -> None:
        self.tray.show()
        self.feed.start()
        if self.run_doctor_at_start:
            self.diagnostics_window.run()

    def stop(self) -> None:
        self.flush_timer.stop()
        self.renew_timer.stop()
        self.feed.stop()
        if self.sign_in_window is not None:
            self.sign_in_window.cancel()
        self.tray.hide()

    def _quit(self) -> None:
        self.stop()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    # ----------------------------------------------------------------- feed → model

    def _drain(self) -> None:
        for event in self.feed.take_events():
            self._event(event)
        self._schedule_flush()

    def _event(self, event: StreamEvent) -> None:
        d = event.decision
        if d is None:
            return
        self.decisions.add(d)
        if d.denied:
            self.batcher.add(d)
        if self.decisions_window.isVisible():
            self.decisions_window.refill()

    def _schedule_flush(self) -> None:
        due = self.batcher.due_in()
        if due is None:
            return
        msec = max(0, round(due * 1000))
        if not self.flush_timer.isActive() or self.flush_timer.remainingTime() > msec:
            self.flush_timer.start(msec)

    def _flush(self) -> None:
        for n in self.batcher.flush():
            self.bursts[n.key] = n.decisions
            self.bursts.move_to_end(n.key)
            while len(self.bursts) > BURSTS_KEPT:
                self.bursts.popitem(last=False)
            self.notifications.append(n)
            del self.notifications[:-BURSTS_KEPT]
            self.notifier.notify(n.title, n.body, n.key, quiet=n.quiet)
        self._schedule_flush()

    def _status(self, status: object) -> None:
        self.status = status if isinstance(status, dict) else None
        self._render()

    def _stream(self, state: StreamState) -> None:
        if state.connected and not self.stream_state.connected:
            self._renew_tried = None  # a (re)started agent: worth renewing again
        self.stream_state = state
        self._render()

    # ----------------------------------------------------------------- silent renewal

    def _plan_renewal(self) -> None:
        """Renew the sign-in silently (the stored refresh token, no window) before the
        agent forgets it, and once per connection when it holds none (after an agent
        restart). One single-shot timer; nothing runs while nothing is due."""
        state = self.state
        if self.status is None or not state.sign_in_configured:
            self.renew_timer.stop()
            return
        if state.signed_in is None:
            key: object = ("unsigned", self.feed.path)
            delay = 0.0
        elif state.renew_at is not None:
            key = ("renew", state.renew_at)
            delay = max(0.0, state.renew_at - self.wall())
        else:
            return
        if key == self._renew_tried:
            return
        self._renew_key = key
        delay = max(delay, self._renew_not_before - self.wall())
        msec = min(round(delay * 1000), 2**31 - 1)
        if not self.renew_timer.isActive() or self.renew_timer.remainingTime() > msec:
            self.renew_timer.start(msec)

    def _renew(self) -> None:
        key = self._renew_key
        if key == self._renew_tried:
            return
        self._renew_tried = key
        control = self.feed.path
        self._in_thread(
            "renew", lambda: renew_silently(self.config, control, self.keychain), self._renewed
        )

    def _renewed(self, outcome: object) -> None:
        if isinstance(outcome, Exception):
            outcome = Outcome(False, texts.SIGN_IN_FAILED.format(error=short(repr(outcome), 300)))
        if isinstance(outcome, Outcome) and not outcome.ok:
            # The provider or the agent is away: try again later, not in a loop.
            self._renew_tried = None
            self._renew_not_before = self.wall() + RENEW_RETRY
            self._set_action(outcome.text)  # renders, which plans the retry

    def _decisions_loaded(self, body: object) -> None:
        self.decisions.extend_older(decisions_from_json(body))
        if self.decisions_window.isVisible():
            self.decisions_window.refill()

    def _doctor_done(self, check: DockerCheck) -> None:
        if check.ok is not None:
            self.docker = check
            self._render()

    # ----------------------------------------------------------------- rendering

    def _render(self) -> None:
        error = None
        if self.status is None:
            error = self.stream_state.error or texts.STATE_CONNECTING
        self.state = tray_state(self.status, now=self.wall(), error=error, docker=self.docker)
        self.tray.setIcon(icon_for(self.state.icon))
        self.tray.setToolTip(self.state.tooltip)
        lines = list(self.state.menu_lines) if self.status is not None else [self.state.headline]
        tips = ["" for _ in lines]
        s = self.stream_state
        if not s.connected and s.error:
            # The cause in a few words (no countdown to go stale while the menu is open);
            # the whole error in its tooltip and on the status page.
            lines.append(texts.MENU_AGENT_DOWN.get(s.cause or "", texts.MENU_AGENT_DOWN["other"]))
            tips.append(s.error)
        skipped = s.malformed + s.oversized + s.dropped
        if skipped:
            lines.append(
                texts.MENU_STREAM_PROBLEM.format(
                    problem=f"{skipped} event(s) skipped (malformed, too large or a flood)"
                )
            )
        if self.last_action:
            lines.append(self.last_action)
        metrics = QFontMetrics(self.menu.font())
        for action, line, tip in zip(
            self.status_actions, [*lines, "", "", "", ""], [*tips, "", "", "", ""], strict=False
        ):
            # Untrusted text (an error, a path) never widens the menu: elided, whole in
            # the tooltip.
            shown = metrics.elidedText(line, Qt.TextElideMode.ElideRight, MENU_TEXT_WIDTH)
            action.setText(shown.replace("&", "&&"))
            action.setToolTip(tip or (line if shown != line else ""))
            action.setVisible(bool(line))
        up = self.status is not None
        self.action_sign_in.setVisible(self.state.sign_in_configured or not up)
        self.action_sign_in.setEnabled(up)
        self.action_sign_out.setVisible(self.state.signed_in is not None)
        self.action_refresh.setEnabled(up and "refresh" not in self._busy)
        self.action_audit.setEnabled(self._audit_readable())
        self.action_why.setEnabled(self.decisions.latest_denial() is not None)
        if self.status_window.isVisible():
            self.status_window.set_state(self.state, self.wall())
        self._plan_renewal()
        self.state_changed.emit(self.state)

    def menu_lines(self) -> list[str]:
        return [a.text().replace("&&", "&") for a in self.status_actions if a.isVisible()]

    # ----------------------------------------------------------------- windows

    def show_why(self, key: str | None = None) -> None:
        """The "Why?" window for a notification's key, else for the latest denial."""
        decisions: Sequence[DecisionView] = ()
        if key is not None:
            decisions = self.bursts.get(key, ())
        if not decisions:
            latest = self.decisions.latest_denial()
            decisions = (latest,) if latest is not None else ()
        self._show_why_for(decisions)

    def _show_why_for(self, decisions: Sequence[DecisionView]) -> None:
        policy = self.status.get("policy") if self.status is not None else None
        enforcing = policy.get("enforcing") if isinstance(policy, dict) else None
        self.why_window.show_decisions(
            decisions,
            self._current_policy(),
            short(enforcing, 300) if isinstance(enforcing, str) else None,
        )
        self._raise(self.why_window)

    def _current_policy(self) -> str:
        if self.status is None:
            return ""
        line = self.state.policy_line.removeprefix(texts.MENU_POLICY.format(policy=""))
        policy = self.status.get("policy")
        age = policy.get("age_seconds") if isinstance(policy, dict) else None
        if isinstance(age, int | float) and not isinstance(age, bool):
            line += ", " + texts.AGE_AGO.format(age=format_age(age))
        return line

    def show_decisions(self) -> None:
        self.decisions_window.refill()
        self._raise(self.decisions_window)

    def show_status(self) -> None:
        self.status_window.set_state(self.state, self.wall())
        self._raise(self.status_window)
        self.feed.request_status()

    def show_diagnostics(self) -> None:
        self._raise(self.diagnostics_window)
        self.diagnostics_window.run()

    def show_sign_in(self) -> SignInDialog:
        if self.sign_in_window is not None and self.sign_in_window.isVisible():
            self._raise(self.sign_in_window)
            return self.sign_in_window
        dialog = SignInDialog(lambda: self.feed.path, self.config, self.keychain, org=self._org())
        dialog.finished_with.connect(self._signed_in)
        self.sign_in_window = dialog
        self._raise(dialog)
        dialog.start()
        return dialog

    def _org(self) -> str | None:
        """The organisation's name, as the agent's status gives it."""
        status = self.status or {}
        policy = status.get("policy")
        org = status.get("org") or (policy.get("org") if isinstance(policy, dict) else None)
        return short(org, 100) if isinstance(org, str) and org else None

    def _signed_in(self, outcome: Outcome) -> None:
        if outcome.text != texts.SIGN_IN_CANCELLED:  # the user's own doing: no menu line
            self._set_action(outcome.text.splitlines()[0])
        self.feed.request_status()

    def show_about(self) -> None:
        text = texts.ABOUT_TEXT.format(
            tray=agent_version,
            agent=self._agent_version(),
            python=platform.python_version(),
            qt=qVersion(),
            pyside=pyside_version,
        )
        self._message(texts.ABOUT_TITLE, text)

    def _agent_version(self) -> str:
        return self.state.agent_version or texts.UNKNOWN

    @staticmethod
    def _raise(window: Any) -> None:
        window.show()
        window.raise_()
        window.activateWindow()

    def _message(self, title: str, text: str) -> QMessageBox:
        box = QMessageBox(QMessageBox.Icon.Information, title, text)
        box.setAccessibleName(title)
        box.setModal(False)
        box.finished.connect(
            lambda _r: self._messages.remove(box) if box in self._messages else None
        )
        self._messages.append(box)
        box.show()
        return box

    def _tray_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason is QSystemTrayIcon.ActivationReason.Trigger:
            self.show_status()

    # ----------------------------------------------------------------- actions

    def _in_thread(self, name: str, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        if name in self._busy:
            return
        self._busy.add(name)

        def finish(value: Any) -> None:
            self._busy.discard(name)
            done(value)

        def run() -> None:
            try:
                value = work()
            except Exception as e:  # reported in words, never a dead thread
                value = e
            self._results.done.emit(finish, value)

        threading.Thread(target=run, name=f"pullgate-tray-{name}", daemon=True).start()

    def _set_action(self, text: str) -> None:
        self.last_action = short(text, 300)
        self._render()
        self.action_done.emit(self.last_action)

    def refresh_policy(self) -> None:
        """POST /v1/policy/refresh; the answer (or the 429's message) in the menu."""
        self._set_action(texts.REFRESH_RUNNING)
        path = self.feed.path

        def work() -> tuple[int, Any]:
            return control_request(path, "POST", "/v1/policy/refresh", timeout=60.0)

        def done(value: Any) -> None:
            if isinstance(value, ControlError | Exception):
                text = texts.REFRESH_FAILED.format(message=short(value, 300))
            else:
                code, body = value
                body = body if isinstance(body, dict) else {}
                if code == 200:
                    text = texts.REFRESH_DONE.format(result=short(body.get("result"), 300))
                else:
                    text = texts.REFRESH_FAILED.format(
                        message=short(body.get("message") or f"HTTP {code}", 300)
                    )
            self._set_action(text)
            self.feed.request_status()

        self._in_thread("refresh", work, done)

    def sign_out(self) -> None:
        path = self.feed.path

        def done(value: Any) -> None:
            if isinstance(value, Exception):
                value = (False, short(repr(value), 300))
            _ok, text = value
            self._set_action(text.splitlines()[-1] if text else "")
            self._message(texts.SIGN_OUT_TITLE, text)
            self.feed.request_status()

        self._in_thread("sign-out", lambda: sign_out(self.config, path, self.keychain), done)

    def _audit_readable(self) -> bool:
        directory = self.state.audit_dir
        return bool(directory) and os.access(str(directory), os.R_OK | os.X_OK)

    def open_audit_folder(self) -> None:
        directory = self.state.audit_dir
        if not directory:
            self._set_action(texts.AUDIT_UNKNOWN)
        elif not self._audit_readable():
            self._set_action(texts.AUDIT_UNREADABLE.format(dir=directory))
        else:
            QDesktopServices.openUrl(QUrl.fromLocalFile(directory))


# --------------------------------------------------------------------------- main


GC_INTERVAL_MS = 60_000


def collect_on_the_gui_thread(app: QApplication) -> QTimer:
    """Python's cyclic garbage collector runs in whichever thread happens to allocate. If
    that is one of the tray's worker threads (the event feed, a sign-in) and the garbage
    holds Qt objects (a closed dialog in a cycle with its slots), they are destroyed off the
    GUI thread and Qt crashes (seen in the tests). So automatic collection is off and the
    GUI thread collects once a minute; reference counting still frees the rest at once."""
    gc.disable()
    timer = QTimer(app)
    timer.timeout.connect(gc.collect)
    timer.start(GC_INTERVAL_MS)
    return timer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pullgate-tray", description=texts.APP_DESCRIPTION)
    parser.add_argument("--control", metavar="PATH", help="the agent's control socket")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="managed config (default: /etc/pullgate/config.json, macOS managed preferences "
        "or the Windows policy key)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName(texts.APP_NAME)
    app.setQuitOnLastWindowClosed(False)  # closing a window leaves the tray running
    collector = collect_on_the_gui_thread(app)
    tray = TrayApp(
        control=Path(args.control) if args.control else None,
        config=Path(args.config) if args.config else None,
    )
    tray.start()
    try:
        return app.exec()
    finally:
        tray.stop()
        collector.stop()
