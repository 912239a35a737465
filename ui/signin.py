"""Sign-in and sign-out from the tray, driving ``agent.identity.session.SignInSession`` as
``pullgate login``/``logout`` do (agent/cli/login_cmd.py), in a worker thread.

Order, as the CLI: the settings (the managed config, which also names the CA bundle that
pins the provider; else the agent's ``GET /v1/identity`` ``sign_in``), then a silent
renewal from the keychain, and only when that is not possible the device code (shown with
*Copy code* and *Open browser*) or the one-click browser sign-in; then ``PUT
/v1/identity``. The network runs in a thread; *Cancel* sets the session's cancel event.
Every outcome is shown in words, the agent's or the provider's refusal included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QFontDatabase, QPalette
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.control.client import ControlError, control_request
from agent.identity.device import DeviceAuthorization
from agent.identity.errors import KeychainUnavailableError, SignInCancelledError, SignInError
from agent.identity.keychain import Keychain
from agent.identity.session import SignInResult, SignInSession, SignInSettings
from ui import texts
from ui.model import format_when, short, soft_wrap
from ui.windows import WIDTH, copy_text, fit_to_content

__all__ = [
    "KeychainFactory",
    "Outcome",
    "SignInDialog",
    "SignInPlan",
    "default_keychain",
    "hand_to_agent",
    "provider_host",
    "renew_silently",
    "resolve_sign_in",
    "sign_out",
]

CONTROL_TIMEOUT = 10.0

KeychainFactory = Callable[[SignInSettings], "Keychain | None"]


def default_keychain(settings: SignInSettings) -> Keychain | None:
    """The OS keychain, or None (sign in without storing) when there is none."""
    keychain = Keychain(settings.issuer, settings.client_id)
    try:
        keychain.check_available()
    except KeychainUnavailableError:
        return None
    return keychain


@dataclass(frozen=True)
class SignInPlan:
    """How to sign in here: None settings and a ``problem`` when it is not possible."""

    settings: SignInSettings | None
    methods: tuple[str, ...] = ("device", "browser")
    problem: str | None = None
    org: str | None = None  # the managed config's org, for the dialog's heading


def provider_host(issuer: str) -> str:
    """The provider's host name for people (``login.acme.example``), not its raw URL."""
    try:
        host = urlsplit(issuer).hostname
    except ValueError:
        host = None
    return short(host or issuer, 200)


def resolve_sign_in(config: Path | None, control: Path) -> SignInPlan:
    """The managed config's ``oidc_*`` keys (with ``ca_bundle``), else the agent's
    ``sign_in``. Blocking: call from a worker thread."""
    try:
        managed = load_managed_config(json_path=config)
    except ConfigError as e:
        return SignInPlan(None, problem=short(e, 400))
    if managed is not None and managed.oidc_issuer and managed.oidc_client_id:
        return SignInPlan(
            SignInSettings(
                issuer=managed.oidc_issuer,
                client_id=managed.oidc_client_id,
                scopes=tuple(managed.oidc_scopes),
                ca_bundle=managed.ca_bundle,
            ),
            tuple(managed.sign_in_methods),
            org=managed.org,
        )
    try:
        status, body = control_request(control, "GET", "/v1/identity", timeout=CONTROL_TIMEOUT)
    except ControlError as e:
        return SignInPlan(None, problem=short(e, 400))
    sign_in = body.get("sign_in") if isinstance(body, dict) else None
    if status != 200 or not isinstance(sign_in, dict):
        return SignInPlan(None, problem=texts.SIGN_IN_NOT_CONFIGURED)
    issuer, client_id = sign_in.get("issuer"), sign_in.get("client_id")
    if not isinstance(issuer, str) or not isinstance(client_id, str):
        return SignInPlan(None, problem=texts.SIGN_IN_NOT_CONFIGURED)
    scopes = sign_in.get("scopes")
    methods = sign_in.get("methods")
    settings = SignInSettings(issuer, client_id)
    if isinstance(scopes, list) and scopes:
        settings = SignInSettings(issuer, client_id, tuple(str(s) for s in scopes))
    return SignInPlan(
        settings,
        tuple(str(m) for m in methods) if isinstance(methods, list) else ("device", "browser"),
    )


def _refusal(status: int, body: Any) -> str:
    if isinstance(body, dict):
        message = body.get("message") or f"HTTP {status}"
        reason = body.get("reason")
        return short(f"{message} (reason: {reason})" if reason else message, 500)
    return f"HTTP {status}"


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class Outcome:
    ok: bool
    text: str
    email: str | None = None


class _Bridge(QObject):
    """Signals from the worker thread to the dialog (queued across threads by Qt)."""

    progress = Signal(str)
    code = Signal(object)  # DeviceAuthorization
    url = Signal(str)
    choose = Signal(object)  # SignInPlan: the silent renewal did not do; ask the user
    done = Signal(object)  # Outcome


class SignInDialog(QDialog):
    """Sign in: started with ``start()``; the result is in ``outcome`` and ``finished_with``."""

    finished_with = Signal(object)  # Outcome

    def __init__(
        self,
        control: Callable[[], Path],
        config: Path | None = None,
        keychain: KeychainFactory = default_keychain,
        parent: QWidget | None = None,
        *,
        org: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.control = control
        self.config = config
        self.keychain_factory = keychain
        self.setWindowTitle(texts.SIGN_IN_TITLE)
        self.setAccessibleName(texts.SIGN_IN_TITLE)
        self.bridge = _Bridge()
        self.bridge.progress.connect(self._progress)
        self.bridge.code.connect(self._show_code)
        self.bridge.url.connect(self._show_url)
        self.bridge.choose.connect(self._choose)
        self.bridge.done.connect(self._done)

        self.heading = QLabel(texts.SIGN_IN_HEADING_NO_ORG)
        self.heading.setTextFormat(Qt.TextFormat.PlainText)
        self.heading.setWordWrap(True)
        heading_font = QFont(self.heading.font())
        heading_font.setPointSizeF(heading_font.pointSizeF() * 1.3)
        heading_font.setBold(True)
        self.heading.setFont(heading_font)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setAccessibleName(texts.SIGN_IN_STATUS_NAME)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # The device code, in two numbered steps: the page (Open browser), the code (Copy).
        self.step_open = QLabel(texts.SIGN_IN_STEP_OPEN)
        self.uri = QLabel()
        self.uri.setTextFormat(Qt.TextFormat.PlainText)
        self.uri.setWordWrap(True)
        self.uri.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.uri.setAccessibleName(texts.SIGN_IN_OPEN_NAME)
        uri_font = QFont(self.uri.font())
        uri_font.setBold(True)
        self.uri.setFont(uri_font)
        self.step_code = QLabel(texts.SIGN_IN_STEP_CODE)
        self.code = QLabel()
        self.code.setTextFormat(Qt.TextFormat.PlainText)
        self.code.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.code.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.code.setFrameShape(QFrame.Shape.StyledPanel)
        self.code.setFrameShadow(QFrame.Shadow.Sunken)
        self.code.setBackgroundRole(QPalette.ColorRole.Base)
        self.code.setAutoFillBackground(True)
        self.code.setMargin(8)
        code_font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        code_font.setPointSizeF(self.font().pointSizeF() * 2.0)
        code_font.setBold(True)
        code_font.setLetterSpacing(QFont.SpacingType.PercentageSpacing, 110)
        self.code.setFont(code_font)
        self.code.setAccessibleName(texts.SIGN_IN_CODE_NAME)
        self.copy_code = self._button(texts.SIGN_IN_COPY_CODE, texts.SIGN_IN_COPY_CODE_NAME)
        self.copy_code.clicked.connect(lambda: copy_text(self.code.text()))
        self.open_browser = self._button(texts.SIGN_IN_OPEN, texts.SIGN_IN_OPEN_NAME)
        self.open_browser.clicked.connect(self._open)
        self.waiting = QLabel()
        self.waiting.setWordWrap(True)
        self.waiting.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.device = self._button(texts.SIGN_IN_DEVICE, texts.SIGN_IN_DEVICE_NAME)
        self.device.clicked.connect(lambda: self._run("device"))
        self.browser = self._button(texts.SIGN_IN_BROWSER, texts.SIGN_IN_BROWSER_NAME)
        self.browser.clicked.connect(lambda: self._run("browser"))
        self.cancel_button = self._button(texts.SIGN_IN_CANCEL, texts.SIGN_IN_CANCEL)
        self.cancel_button.clicked.connect(self.close)

        steps = QGridLayout()
        steps.setHorizontalSpacing(12)
        steps.setVerticalSpacing(6)
        steps.setColumnStretch(0, 1)
        steps.addWidget(self.step_open, 0, 0, 1, 2)
        steps.addWidget(self.uri, 1, 0)
        steps.addWidget(self.open_browser, 1, 1)
        steps.addWidget(self.step_code, 2, 0, 1, 2)
        steps.addWidget(self.code, 3, 0)
        steps.addWidget(self.copy_code, 3, 1, Qt.AlignmentFlag.AlignVCenter)
        steps.addWidget(self.waiting, 4, 0, 1, 2)
        steps.setRowMinimumHeight(2, self.fontMetrics().height() + 12)  # a gap before step 2
        steps.setAlignment(self.step_code, Qt.AlignmentFlag.AlignBottom)
        choices = QHBoxLayout()
        choices.addWidget(self.device)
        choices.addWidget(self.browser)
        choices.addStretch(1)
        choices.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 18, 20, 14)
        layout.setSpacing(12)
        layout.addWidget(self.heading)
        layout.addWidget(self.status)
        layout.addLayout(steps)
        layout.addStretch(1)
        layout.addLayout(choices)
        self.org = org
        self._set_heading(None)

        self.plan: SignInPlan | None = None
        self.authorization: DeviceAuthorization | None = None
        self.browser_url: str | None = None
        self.outcome: Outcome | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._set_code_visible(False)
        self.device.setVisible(False)
        self.browser.setVisible(False)

    @staticmethod
    def _button(text: str, name: str) -> QPushButton:
        button = QPushButton(text)
        button.setAccessibleName(name)
        return button

    def _set_code_visible(self, visible: bool) -> None:
        for widget in (
            self.step_open,
            self.uri,
            self.open_browser,
            self.step_code,
            self.code,
            self.copy_code,
            self.waiting,
        ):
            widget.setVisible(visible)
        self._fit()

    def _fit(self) -> None:
        """Sized to what it shows now: no text adrift in empty space."""
        fit_to_content(self, max(self.width(), WIDTH) if self.isVisible() else WIDTH)

    def _set_heading(self, plan: SignInPlan | None) -> None:
        org = (plan.org if plan is not None else None) or self.org
        self.heading.setText(
            texts.SIGN_IN_HEADING.format(org=short(org, 100))
            if org
            else texts.SIGN_IN_HEADING_NO_ORG
        )

    # ----------------------------------------------------------------- flow

    def start(self) -> None:
        """Resolve the settings and try a silent renewal; then offer the methods."""
        self._spawn(self._work_silent)

    def _run(self, method: str) -> None:
        self.device.setEnabled(False)
        self.browser.setEnabled(False)
        self._spawn(lambda: self._work_interactive(method))

    def _spawn(self, target: Callable[[], None]) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=target, name="pullgate-tray-sign-in", daemon=True)
        self._thread.start()

    def _work_silent(self) -> None:
        b = self.bridge
        plan = resolve_sign_in(self.config, self.control())
        self.plan = plan
        if plan.settings is None:
            b.done.emit(Outcome(False, plan.problem or texts.SIGN_IN_NOT_CONFIGURED))
            return
        settings = plan.settings
        keychain = self.keychain_factory(settings)
        if keychain is not None:
            b.progress.emit(texts.SIGN_IN_SILENT)
            try:
                with SignInSession(settings, keychain) as session:
                    result = session.silent()
            except SignInError as e:
                b.progress.emit(texts.SIGN_IN_SILENT_FAILED.format(error=short(e, 300)))
                result = None
            if result is not None:
                b.done.emit(self._hand_to_agent(result))
                return
        b.choose.emit(plan)

    def _work_interactive(self, method: str) -> None:
        b = self.bridge
        plan = self.plan
        if plan is None or plan.settings is None:
            b.done.emit(Outcome(False, texts.SIGN_IN_NOT_CONFIGURED))
            return
        settings = plan.settings
        b.progress.emit(texts.SIGN_IN_STARTING.format(host=provider_host(settings.issuer)))
        try:
            with SignInSession(settings, self.keychain_factory(settings)) as session:
                if method == "browser":
                    result = session.browser(b.url.emit, cancel=self._cancel)
                else:
                    result = session.device(
                        b.code.emit,
                        cancel=self._cancel,
                        on_slow_down=lambda s: b.progress.emit(
                            texts.SIGN_IN_SLOWER.format(seconds=s)
                        ),
                    )
        except SignInCancelledError:
            b.done.emit(Outcome(False, texts.SIGN_IN_CANCELLED))
            return
        except SignInError as e:
            b.done.emit(Outcome(False, texts.SIGN_IN_FAILED.format(error=short(e, 500))))
            return
        except Exception as e:  # a bug must end in words, not a dead dialog
            b.done.emit(Outcome(False, texts.SIGN_IN_FAILED.format(error=short(repr(e), 500))))
            return
        b.done.emit(self._hand_to_agent(result))

    def _hand_to_agent(self, result: SignInResult) -> Outcome:
        return hand_to_agent(self.control(), result, self.bridge.progress.emit)

    # ----------------------------------------------------------------- the Qt side

    def _progress(self, text: str) -> None:
        self.status.setText(soft_wrap(text))
        self.status.setVisible(True)
        self._fit()

    def _choose(self, plan: SignInPlan) -> None:
        settings = plan.settings
        self._set_heading(plan)
        host = provider_host(settings.issuer) if settings else texts.UNKNOWN
        self.status.setText(soft_wrap(texts.SIGN_IN_INTRO.format(host=host)))
        self.device.setVisible("device" in plan.methods)
        self.browser.setVisible("browser" in plan.methods)
        first = self.device if "device" in plan.methods else self.browser
        first.setDefault(True)
        first.setFocus()
        self._fit()

    def _show_code(self, authorization: DeviceAuthorization) -> None:
        self.authorization = authorization
        minutes = max(1, round(authorization.expires_in / 60))
        self.status.setVisible(False)  # the steps say it all
        self.uri.setText(soft_wrap(short(authorization.verification_uri, 500)))
        self.uri.setToolTip(authorization.verification_uri)
        self.code.setText(short(authorization.user_code, 40))
        self.waiting.setText(texts.SIGN_IN_CODE_WAITING.format(minutes=minutes))
        self.device.setVisible(False)
        self.browser.setVisible(False)
        self._set_code_visible(True)
        self.copy_code.setDefault(True)
        self.copy_code.setFocus()

    def _show_url(self, url: str) -> None:
        self.browser_url = url
        self.status.setText(texts.SIGN_IN_WAITING_BROWSER.format(seconds=300))
        self.device.setVisible(False)
        self.browser.setVisible(False)
        self._fit()
        QDesktopServices.openUrl(QUrl(url))

    def _open(self) -> None:
        a = self.authorization
        if a is not None:
            QDesktopServices.openUrl(QUrl(a.verification_uri_complete or a.verification_uri))

    def _done(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.status.setText(soft_wrap(outcome.text))
        self.status.setVisible(True)
        self._set_code_visible(False)
        self.device.setVisible(False)
        self.browser.setVisible(False)
        self.cancel_button.setText(texts.SIGN_IN_CLOSE)
        self.cancel_button.setAccessibleName(texts.SIGN_IN_CLOSE)
        self.cancel_button.setFocus()
        self.finished_with.emit(outcome)

    def cancel(self) -> None:
        self._cancel.set()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.cancel()
        super().closeEvent(event)

    def reject(self) -> None:
        self.cancel()
        super().reject()


def hand_to_agent(
    control: Path, result: SignInResult, progress: Callable[[str], object] = lambda _: None
) -> Outcome:
    """``PUT /v1/identity`` with the new ID token; the agent's answer in words. Blocking."""
    claims = result.tokens.claims()
    who = short(claims.get("email") or claims.get("sub") or texts.UNKNOWN, 200)
    progress(texts.SIGN_IN_SENDING.format(who=who))
    try:
        status, body = control_request(
            control,
            "PUT",
            "/v1/identity",
            timeout=CONTROL_TIMEOUT,
            body={"id_token": result.tokens.id_token},
        )
    except ControlError as e:
        return Outcome(False, texts.SIGN_IN_AGENT_UNREACHABLE.format(error=short(e, 400)))
    if status != 200:
        return Outcome(False, texts.SIGN_IN_AGENT_REFUSED.format(message=_refusal(status, body)))
    identity = body.get("identity") if isinstance(body, dict) else None
    identity = identity if isinstance(identity, dict) else {}
    email = short(identity.get("email") or who, 200)
    expires = identity.get("expires_at")
    text = texts.SIGN_IN_DONE.format(
        who=email, until=format_when(expires if isinstance(expires, int | float) else None)
    )
    if not result.stored and result.store_problem:
        text += "\n" + texts.SIGN_IN_NOT_STORED.format(problem=short(result.store_problem))
    return Outcome(True, text, email)


def renew_silently(config: Path | None, control: Path, keychain: KeychainFactory) -> Outcome | None:
    """The stored refresh token → a new ID token → the agent, with no window: how the tray
    keeps a sign-in alive before ``identity_max_age`` ends, and restores it after the agent
    restarted. None when there is nothing to renew with (no sign-in configured, no keychain,
    nothing stored). Blocking: call from a worker thread."""
    plan = resolve_sign_in(config, control)
    if plan.settings is None:
        return None
    store = keychain(plan.settings)
    if store is None:
        return None
    try:
        with SignInSession(plan.settings, store) as session:
            result = session.silent()
    except SignInError as e:
        return Outcome(False, texts.SIGN_IN_SILENT_FAILED.format(error=short(e, 300)))
    if result is None:
        return None
    return hand_to_agent(control, result)


# --------------------------------------------------------------------------- sign-out


def sign_out(config: Path | None, control: Path, keychain: KeychainFactory) -> tuple[bool, str]:
    """As ``pullgate logout``: revoke at the provider and forget in the keychain (when
    configured), then ``DELETE /v1/identity``; each step reported. Blocking."""
    lines: list[str] = []
    ok = True

    def step(name: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and good
        template = texts.SIGN_OUT_STEP if good else texts.SIGN_OUT_STEP_FAILED
        lines.append(template.format(step=name, detail=detail))

    plan = resolve_sign_in(config, control)
    if plan.settings is None:
        step(texts.SIGN_OUT_PROVIDER, True, texts.SIGN_OUT_SKIPPED)
    else:
        try:
            with SignInSession(plan.settings, keychain(plan.settings)) as session:
                report = session.sign_out()
        except SignInError as e:
            step(texts.SIGN_OUT_PROVIDER, False, short(e, 400))
        else:
            step(texts.SIGN_OUT_PROVIDER, report.revoke.ok, short(report.revoke.detail, 400))
            step(texts.SIGN_OUT_KEYCHAIN, report.keychain.ok, short(report.keychain.detail, 400))
    try:
        status, body = control_request(control, "DELETE", "/v1/identity", timeout=CONTROL_TIMEOUT)
    except ControlError as e:
        step(texts.SIGN_OUT_AGENT, False, short(e, 400))
    else:
        if status != 200:
            step(texts.SIGN_OUT_AGENT, False, _refusal(status, body))
        elif isinstance(body, dict) and body.get("forgot"):
            step(texts.SIGN_OUT_AGENT, True, texts.SIGN_OUT_FORGOT)
        else:
            step(texts.SIGN_OUT_AGENT, True, texts.SIGN_OUT_HELD_NONE)
    return ok, "\n".join(lines)
