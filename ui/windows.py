"""The tray's windows: "Why was this blocked?", recent decisions, status, diagnostics.

Each is a plain QDialog built once and refilled (``show_decisions``/``set_state``); none
does I/O on the Qt thread (diagnostics runs ``pullgate doctor`` in a QProcess). Every
control has an accessible name and a keyboard path (mnemonics, tab order in reading order,
Escape closes). ``fields()`` returns what a window shows, for tests and screenshots.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ui import texts
from ui.model import (
    DecisionLog,
    DecisionView,
    DockerCheck,
    TrayState,
    docker_check_from_doctor,
    format_when,
    remedy_lines,
    short,
)

__all__ = ["DecisionsWindow", "DiagnosticsWindow", "StatusWindow", "WhyWindow", "copy_text"]


def copy_text(text: str) -> None:
    clipboard = QGuiApplication.clipboard()
    if clipboard is not None:
        clipboard.setText(text)


def _value_label(name: str) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)  # agent text is never rich text
    label.setTextInteractionFlags(
        Qt.TextInteractionFlag.TextSelectableByMouse
        | Qt.TextInteractionFlag.TextSelectableByKeyboard
    )
    label.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # reachable with Tab, readable aloud
    label.setAccessibleName(name)
    return label


def _button(text: str, name: str) -> QPushButton:
    button = QPushButton(text)
    button.setAccessibleName(name)
    return button


class _Form(QDialog):
    """A dialog of labelled, selectable values."""

    def __init__(self, title: str, names: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAccessibleName(title)
        self.form = QFormLayout()
        self.values: dict[str, QLabel] = {}
        for name in names:
            value = _value_label(name)
            self.values[name] = value
            caption = QLabel(name + ":")
            caption.setBuddy(value)
            self.form.addRow(caption, value)

    def set_value(self, name: str, text: str | None) -> None:
        label = self.values[name]
        label.setText(text or texts.WHY_NONE)
        self.form.setRowVisible(label, bool(text))

    def fields(self) -> dict[str, str]:
        """The visible rows: caption → text."""
        return {
            name: label.text()
            for name, label in self.values.items()
            if label.text() and label.text() != texts.WHY_NONE
        }


# --------------------------------------------------------------------------- why


class WhyWindow(_Form):
    """One decision explained; a burst's other images are listed to pick from."""

    NAMES = (
        texts.WHY_IMAGE,
        texts.WHY_AS_TYPED,
        texts.WHY_CATEGORY,
        texts.WHY_RULE,
        texts.WHY_REASON,
        texts.WHY_MESSAGE,
        texts.WHY_DETAIL,
        texts.WHY_POLICY,
        texts.WHY_WHAT_TO_DO,
        texts.WHY_CONTACT,
        texts.WHY_TIME,
        texts.WHY_COMMAND,
        texts.WHY_PROCESS,
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(texts.WHY_TITLE, self.NAMES, parent)
        self.decisions: list[DecisionView] = []
        self.current: DecisionView | None = None
        self.current_policy = ""
        self.batch = QListWidget()
        self.batch.setAccessibleName(texts.WHY_BATCH)
        self.batch.currentRowChanged.connect(self._pick)
        self.batch_label = QLabel(texts.WHY_BATCH + ":")
        self.batch_label.setBuddy(self.batch)
        self.empty = QLabel(texts.WHY_NOTHING)
        self.copy = _button(texts.WHY_COPY, texts.WHY_COPY_NAME)
        self.copy.clicked.connect(self._copy)
        self.request = _button(texts.WHY_REQUEST, texts.WHY_REQUEST_NAME)
        self.request.clicked.connect(self._request)
        self.copied = QLabel()
        self.copied.setAccessibleName(texts.COPY_DONE)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy)
        buttons.addWidget(self.request)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addWidget(self.batch_label)
        layout.addWidget(self.batch)
        layout.addLayout(self.form)
        layout.addWidget(self.copied)
        layout.addLayout(buttons)
        self.resize(560, 480)
        self.show_decisions([], "")

    def show_decisions(self, decisions: Sequence[DecisionView], current_policy: str) -> None:
        self.decisions = list(decisions)
        self.current_policy = current_policy
        self.batch.blockSignals(True)
        self.batch.clear()
        for d in self.decisions:
            self.batch.addItem(d.shown_name)
        self.batch.blockSignals(False)
        many = len(self.decisions) > 1
        self.batch.setVisible(many)
        self.batch_label.setVisible(many)
        self.empty.setVisible(not self.decisions)
        self._pick(0 if self.decisions else -1)
        if many:
            self.batch.setCurrentRow(0)

    def _pick(self, row: int) -> None:
        d = self.decisions[row] if 0 <= row < len(self.decisions) else None
        self.current = d
        self.copied.clear()
        if d is None:
            for name in self.NAMES:
                self.set_value(name, None)
            self.copy.setEnabled(False)
            self.request.setEnabled(False)
            return
        if d.verdict == "allow":
            title = texts.WHY_ALLOWED_TITLE
        else:
            title = texts.WHY_TITLE_WOULD if d.quiet else texts.WHY_TITLE
        self.setWindowTitle(title)
        self.set_value(texts.WHY_IMAGE, d.image)
        self.set_value(texts.WHY_AS_TYPED, d.input if d.input != d.image else None)
        self.set_value(
            texts.WHY_CATEGORY, texts.CATEGORY.get(d.category or "", d.category or "") or None
        )
        self.set_value(texts.WHY_RULE, d.rule)
        self.set_value(texts.WHY_REASON, d.reason)
        self.set_value(texts.WHY_MESSAGE, d.message)
        self.set_value(texts.WHY_DETAIL, d.detail)
        policy = d.policy
        if self.current_policy:
            policy = texts.WHY_POLICY_VALUE.format(policy=d.policy, current=self.current_policy)
        self.set_value(texts.WHY_POLICY, policy)
        remedy = "\n".join(remedy_lines(d)) if d.denied else None
        if d.alternative_command:
            remedy = f"{remedy}\n{d.alternative_command}" if remedy else d.alternative_command
        self.set_value(texts.WHY_WHAT_TO_DO, remedy)
        self.set_value(texts.WHY_CONTACT, d.contact)
        self.set_value(texts.WHY_TIME, format_when(d.time) if d.time is not None else None)
        self.set_value(texts.WHY_COMMAND, d.command_line)
        self.set_value(texts.WHY_PROCESS, d.process)
        self.copy.setEnabled(d.alternative_command is not None)
        self.request.setEnabled(d.help_url is not None)
        self.request.setToolTip(d.help_url or "")

    def _copy(self) -> None:
        if self.current is not None and self.current.alternative_command:
            copy_text(self.current.alternative_command)
            self.copied.setText(texts.WHY_COPIED.format(text=self.current.alternative_command))

    def _request(self) -> None:
        if self.current is not None and self.current.help_url:
            QDesktopServices.openUrl(QUrl(self.current.help_url))


# --------------------------------------------------------------------------- decisions


class DecisionsWindow(QDialog):
    """Recent decisions, newest first, with a verdict filter and an image filter."""

    why_requested = Signal(object)  # a DecisionView

    FILTERS = (None, "allow", "deny", "would_deny")

    def __init__(self, log: DecisionLog, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.log = log
        self.setWindowTitle(texts.DECISIONS_TITLE)
        self.setAccessibleName(texts.DECISIONS_TITLE)
        self.verdict = QComboBox()
        self.verdict.setAccessibleName(texts.DECISIONS_FILTER_NAME)
        self.verdict.addItem(texts.DECISIONS_ALL)
        for key in self.FILTERS[1:]:
            self.verdict.addItem(texts.DECISIONS_VERDICT[str(key)])
        self.verdict.currentIndexChanged.connect(self.refill)
        verdict_label = QLabel(texts.DECISIONS_FILTER)
        verdict_label.setBuddy(self.verdict)
        self.search = QLineEdit()
        self.search.setPlaceholderText(texts.DECISIONS_SEARCH)
        self.search.setAccessibleName(texts.DECISIONS_SEARCH_NAME)
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.refill)
        self.list = QListWidget()
        self.list.setAccessibleName(texts.DECISIONS_LIST_NAME)
        self.list.itemActivated.connect(self._why)
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.why = _button(texts.DECISIONS_WHY, texts.DECISIONS_WHY_NAME)
        self.why.clicked.connect(lambda: self._why(self.list.currentItem()))
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        top = QHBoxLayout()
        top.addWidget(verdict_label)
        top.addWidget(self.verdict)
        top.addWidget(self.search, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.why)
        bottom.addStretch(1)
        bottom.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.problem)
        layout.addLayout(bottom)
        self.resize(640, 420)
        self.shown: list[DecisionView] = []

    def set_filter(self, verdict: str | None, text: str = "") -> None:
        self.verdict.setCurrentIndex(self.FILTERS.index(verdict))
        self.search.setText(text)
        self.refill()

    def set_problem(self, text: str) -> None:
        self.problem.setText(text)

    def refill(self) -> None:
        verdict = self.FILTERS[max(0, self.verdict.currentIndex())]
        self.shown = self.log.filtered(verdict, self.search.text())
        self.list.clear()
        for d in self.shown:
            when = format_when(d.time)[11:19] if d.time is not None else "--:--:--"
            row = texts.DECISIONS_ROW.format(
                time=when,
                verdict=texts.DECISIONS_VERDICT.get(d.verdict, d.verdict),
                image=d.image or d.shown_name,
            )
            item = QListWidgetItem(row)
            item.setData(Qt.ItemDataRole.AccessibleTextRole, row)
            self.list.addItem(item)
        if self.shown:
            self.list.setCurrentRow(0)
        self.why.setEnabled(bool(self.shown))

    def rows(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def _why(self, item: QListWidgetItem | None) -> None:
        row = self.list.row(item) if item is not None else -1
        if 0 <= row < len(self.shown):
            self.why_requested.emit(self.shown[row])


# --------------------------------------------------------------------------- status


class StatusWindow(QDialog):
    """The agent's state in rows (from ``TrayState.rows``), with diagnostics at hand."""

    diagnostics_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(texts.STATUS_TITLE)
        self.setAccessibleName(texts.STATUS_TITLE)
        self.headline = _value_label(texts.STATUS_TITLE)
        self.form = QFormLayout()
        self.updated = QLabel()
        self.values: dict[str, QLabel] = {}
        diagnostics = _button(texts.MENU_DIAGNOSTICS, texts.MENU_DIAGNOSTICS)
        diagnostics.clicked.connect(self.diagnostics_requested)
        copy = _button(texts.DIAGNOSTICS_COPY, texts.DIAGNOSTICS_COPY_NAME)
        copy.clicked.connect(lambda: copy_text(self.as_text()))
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(diagnostics)
        buttons.addWidget(copy)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addLayout(self.form)
        layout.addWidget(self.updated)
        layout.addLayout(buttons)
        self.resize(560, 360)

    def set_state(self, state: TrayState, when: float) -> None:
        self.headline.setText(state.headline)
        for name, value in state.rows:
            label = self.values.get(name)
            if label is None:
                label = _value_label(name)
                caption = QLabel(name + ":")
                caption.setBuddy(label)
                self.form.addRow(caption, label)
                self.values[name] = label
            label.setText(value)
        shown = {name for name, _ in state.rows}
        for name, label in self.values.items():
            self.form.setRowVisible(label, name in shown)
        self.updated.setText(texts.STATUS_REFRESHED.format(time=format_when(when)))

    def fields(self) -> dict[str, str]:
        return {
            name: label.text()
            for name, label in self.values.items()
            if self.form.isRowVisible(label)
        }

    def as_text(self) -> str:
        lines = [self.headline.text()]
        lines += [f"{name}: {value}" for name, value in self.fields().items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- diagnostics


class DiagnosticsWindow(QDialog):
    """``pullgate doctor --json`` in a QProcess; its checks as copyable text."""

    finished = Signal(object)  # the DockerCheck it found

    def __init__(
        self,
        control: Callable[[], Path],
        config: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.control = control
        self.config = config
        self.setWindowTitle(texts.DIAGNOSTICS_TITLE)
        self.setAccessibleName(texts.DIAGNOSTICS_TITLE)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.output.setAccessibleName(texts.DIAGNOSTICS_OUTPUT_NAME)
        self.output.setTabChangesFocus(True)
        self.rerun = _button(texts.DIAGNOSTICS_RERUN, texts.DIAGNOSTICS_RERUN)
        self.rerun.clicked.connect(self.run)
        copy = _button(texts.DIAGNOSTICS_COPY, texts.DIAGNOSTICS_COPY_NAME)
        copy.clicked.connect(lambda: copy_text(self.output.toPlainText()))
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.rerun)
        buttons.addWidget(copy)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.output, 1)
        layout.addLayout(buttons)
        self.resize(720, 440)
        self.process: QProcess | None = None
        self.last_check = DockerCheck()

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "agent", "doctor", "--json", "--control", str(self.control())]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    def run(self) -> None:
        if self.process is not None:
            return
        self.output.setPlainText(texts.DIAGNOSTICS_RUNNING)
        self.rerun.setEnabled(False)
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        process.finished.connect(self._done)
        process.errorOccurred.connect(self._failed)
        argv = self.command()
        self.process = process
        process.start(argv[0], argv[1:])

    def _failed(self, error: QProcess.ProcessError) -> None:
        if error is QProcess.ProcessError.FailedToStart and self.process is not None:
            self.output.setPlainText(
                texts.DIAGNOSTICS_FAILED_START.format(error=self.process.errorString())
            )
            self.process.deleteLater()
            self.process = None
            self.rerun.setEnabled(True)

    def _done(self, code: int, _status: QProcess.ExitStatus) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        out = bytes(process.readAllStandardOutput().data())
        err = bytes(process.readAllStandardError().data()).decode("utf-8", "replace")
        process.deleteLater()
        self.rerun.setEnabled(True)
        self.output.setPlainText(format_doctor(out, err, code))
        self.last_check = docker_check_from_doctor(out)
        self.finished.emit(self.last_check)


def format_doctor(out: bytes, err: str, code: int) -> str:
    """Doctor's JSON checks as aligned lines; anything else as it came."""
    lines: list[str] = []
    try:
        checks = json.loads(out)
    except ValueError:
        checks = None
    if isinstance(checks, list):
        for check in checks:
            if not isinstance(check, dict):
                continue
            lines.append(
                texts.DIAGNOSTICS_LINE.format(
                    result=short(check.get("result"), 5),
                    name=short(check.get("name"), 100),
                    detail=short(check.get("detail"), 1000),
                )
            )
            if check.get("fix"):
                lines.append(texts.DIAGNOSTICS_FIX.format(fix=short(check["fix"], 1000)))
    else:
        lines.append(short(out.decode("utf-8", "replace"), 20000))
    if err.strip():
        lines += ["", short(err, 20000)]
    lines += ["", texts.DIAGNOSTICS_EXIT.format(code=code)]
    return "\n".join(lines)
