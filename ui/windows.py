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
from typing import Any, Final

from PySide6.QtCore import QProcess, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QDesktopServices,
    QFont,
    QFontDatabase,
    QGuiApplication,
    QPalette,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui import texts
from ui.icons import icon_for
from ui.model import (
    DecisionLog,
    DecisionView,
    DockerCheck,
    TrayState,
    decision_title,
    docker_check_from_doctor,
    format_when,
    policy_line,
    short,
    soft_wrap,
    why_remedy,
)

__all__ = [
    "WIDTH",
    "DecisionsWindow",
    "DiagnosticsWindow",
    "StatusWindow",
    "WhyWindow",
    "cli_command",
    "copy_text",
    "fit_to_content",
]


WIDTH: Final = 580
"""The width the windows open at: untrusted text wraps (``soft_wrap``) rather than widen them."""


def copy_text(text: str) -> None:
    clipboard = QGuiApplication.clipboard()
    if clipboard is not None:
        clipboard.setText(text)


def _value_label(name: str) -> QLabel:
    """A value: plain text (agent text is never rich text), wrapped, selectable with the
    mouse and, once Tab reaches it, with the keyboard; read aloud under ``name``."""
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(
        Qt.TextInteractionFlag.TextSelectableByMouse
        | Qt.TextInteractionFlag.TextSelectableByKeyboard
    )
    label.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    label.setAccessibleName(name)
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    return label


def _set_text(label: QLabel, text: str) -> None:
    """Untrusted text into ``label``: wrapped where it could not break (``soft_wrap``), its
    accessible description the text itself."""
    label.setText(soft_wrap(text))
    label.setAccessibleDescription(text)


def _heading(text: str = "", scale: float = 1.25) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    font = QFont(label.font())
    font.setPointSizeF(font.pointSizeF() * scale)
    font.setBold(True)
    label.setFont(font)
    return label


def _note(text: str = "") -> QLabel:
    """A quiet line (when the status was read, what was copied)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    return label


def _button(text: str, name: str) -> QPushButton:
    button = QPushButton(text)
    button.setAccessibleName(name)
    return button


def fit_to_content(window: QWidget, width: int = WIDTH) -> None:
    """Size ``window`` to its content at ``width``: no empty band, no growth sideways."""
    layout = window.layout()
    if layout is None:
        return
    layout.activate()
    height = layout.totalHeightForWidth(width) if layout.hasHeightForWidth() else -1
    if height <= 0:
        height = layout.sizeHint().height()
    window.resize(width, height)


class _Form(QDialog):
    """A dialog of labelled, selectable values, sized to its content. Focus starts on
    ``primary`` (a button), so no value shows a caret when the window opens."""

    def __init__(self, title: str, names: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAccessibleName(title)
        self.form = QFormLayout()
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.form.setVerticalSpacing(6)
        self.values: dict[str, QLabel] = {}
        self.texts: dict[str, str] = {}
        self.primary: QWidget | None = None
        for name in names:
            value = _value_label(name)
            self.values[name] = value
            caption = QLabel(name + ":")
            caption.setBuddy(value)
            caption.setForegroundRole(QPalette.ColorRole.PlaceholderText)
            self.form.addRow(caption, value)

    def set_value(self, name: str, text: str | None) -> None:
        label = self.values[name]
        self.texts[name] = text or ""
        _set_text(label, text or texts.WHY_NONE)
        self.form.setRowVisible(label, bool(text))

    def fields(self) -> dict[str, str]:
        """The visible rows: caption → text (as it came, not as wrapped)."""
        return {name: text for name, text in self.texts.items() if text}

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if self.primary is not None and self.primary.isVisible():
            self.primary.setFocus(Qt.FocusReason.OtherFocusReason)


class _NoFocusFrame(QStyledItemDelegate):
    """Rows with room around the text and no focus rectangle over it (a dotted line
    through a short row read as struck through); the selection still shows the row."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: Any) -> None:  # noqa: N802
        super().initStyleOption(option, index)
        option.state &= ~QStyle.StateFlag.State_HasFocus
        # An image name loses its middle (registry and tag stay); a reason its end.
        option.textElideMode = (
            Qt.TextElideMode.ElideMiddle if index.column() == 2 else Qt.TextElideMode.ElideRight
        )

    def sizeHint(self, option: QStyleOptionViewItem, index: Any) -> QSize:  # noqa: N802
        size = super().sizeHint(option, index)
        return QSize(size.width(), max(size.height(), option.fontMetrics.height()) + 10)


# --------------------------------------------------------------------------- why


class WhyWindow(_Form):
    """One denial (or a burst of them): the decision event's fields, what to do (the
    event's ``remediation``), and *Copy command* / *Request access…*. The denial message
    docker printed is folded away under *Show the full message*, with *Copy message*."""

    NAMES = (
        texts.WHY_REASON,
        texts.WHY_WHAT_TO_DO,
        texts.WHY_CONTACT,
        texts.WHY_IMAGE,
        texts.WHY_AS_TYPED,
        texts.WHY_CATEGORY,
        texts.WHY_RULE,
        texts.WHY_POLICY,
        texts.WHY_DETAIL,
        texts.WHY_TIME,
        texts.WHY_COMMAND,
        texts.WHY_PROCESS,
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(texts.WHY_TITLE, self.NAMES, parent)
        self.decisions: list[DecisionView] = []
        self.current: DecisionView | None = None
        self.current_policy = ""
        self.enforcing: str | None = None
        self.heading = _heading()
        self.heading.setAccessibleName(texts.WHY_TITLE)
        self.batch = QListWidget()
        self.batch.setAccessibleName(texts.WHY_BATCH)
        self.batch.currentRowChanged.connect(self._pick)
        self.batch.setMaximumHeight(self.batch.fontMetrics().height() * 5)
        self.batch.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.batch.setItemDelegate(_NoFocusFrame(self.batch))
        self.batch_label = QLabel(texts.WHY_BATCH + ":")
        self.batch_label.setBuddy(self.batch)
        self.empty = QLabel(texts.WHY_NOTHING)

        # What to do: the remedy, and the alternative's command with its copy button.
        self.command = QLabel()
        self.command.setTextFormat(Qt.TextFormat.PlainText)
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command.setAccessibleName(texts.WHY_COPY_NAME)
        self.copy = _button(texts.WHY_COPY, texts.WHY_COPY_NAME)
        self.copy.clicked.connect(self._copy)
        self.copied = _note()
        self.copied.setAccessibleName(texts.COPY_DONE)
        command_row = QHBoxLayout()
        command_row.setContentsMargins(0, 0, 0, 0)
        command_row.addWidget(self.command)
        command_row.addWidget(self.copy)
        command_row.addStretch(1)
        self.command_box = QWidget()
        self.command_box.setLayout(command_row)
        # Its own row under the remedy (a label nested in a container would keep a stale
        # height when the remedy's text changes), then a rule: what happened and what to
        # do above it, the details of the decision below.
        self.form.insertRow(self.NAMES.index(texts.WHY_WHAT_TO_DO) + 1, QLabel(), self.command_box)
        rule = QFrame()
        rule.setFrameShape(QFrame.Shape.HLine)
        rule.setFrameShadow(QFrame.Shadow.Sunken)
        self.form.insertRow(self.NAMES.index(texts.WHY_IMAGE) + 1, rule)
        bold = QFont(self.values[texts.WHY_WHAT_TO_DO].font())
        bold.setBold(True)
        self.values[texts.WHY_WHAT_TO_DO].setFont(bold)

        # The full message, folded.
        self.message_toggle = QToolButton()
        self.message_toggle.setText(texts.WHY_MESSAGE_SHOW)
        self.message_toggle.setAccessibleName(texts.WHY_MESSAGE_NAME)
        self.message_toggle.setCheckable(True)
        self.message_toggle.setAutoRaise(True)
        self.message_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.message_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.message_toggle.toggled.connect(self._fold)
        self.message = _value_label(texts.WHY_MESSAGE)
        self.message.setFrameShape(QFrame.Shape.StyledPanel)
        self.message.setMargin(6)
        self.message.setVisible(False)
        self.copy_message = _button(texts.WHY_COPY_MESSAGE, texts.WHY_COPY_MESSAGE_NAME)
        self.copy_message.clicked.connect(self._copy_message)

        self.request = _button(texts.WHY_REQUEST, texts.WHY_REQUEST_NAME)
        self.request.clicked.connect(self._request)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        self.close_button = close.button(QDialogButtonBox.StandardButton.Close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.request)
        buttons.addWidget(self.copy_message)
        buttons.addWidget(self.copied, 1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        layout.addWidget(self.heading)
        layout.addWidget(self.empty)
        layout.addWidget(self.batch_label)
        layout.addWidget(self.batch)
        layout.addLayout(self.form)
        layout.addWidget(self.message_toggle)
        layout.addWidget(self.message)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self.show_decisions([], "")

    def show_decisions(
        self,
        decisions: Sequence[DecisionView],
        current_policy: str,
        enforcing: str | None = None,
    ) -> None:
        """``current_policy``: the policy now enforced, in words; ``enforcing``: its name
        as decisions give it (to tell whether a decision was made by another policy)."""
        self.decisions = list(decisions)
        self.current_policy = current_policy
        self.enforcing = enforcing
        self.batch.blockSignals(True)
        self.batch.clear()
        metrics = self.batch.fontMetrics()
        for d in self.decisions:
            name = metrics.elidedText(d.shown_name, Qt.TextElideMode.ElideMiddle, WIDTH - 60)
            item = QListWidgetItem(name)
            item.setToolTip(d.image or d.shown_name)
            item.setData(Qt.ItemDataRole.AccessibleTextRole, d.shown_name)
            self.batch.addItem(item)
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
        self.message_toggle.setChecked(False)
        if d is None:
            for name in self.NAMES:
                self.set_value(name, None)
            self.heading.setText(texts.WHY_TITLE)
            self.form.setRowVisible(self.command_box, False)
            self.request.setEnabled(False)
            self.request.setVisible(False)
            self.message_toggle.setVisible(False)
            self.copy_message.setVisible(False)
            self.primary = self.close_button
            fit_to_content(self)
            return
        if d.verdict == "allow":
            title = texts.WHY_ALLOWED_TITLE
        else:
            title = texts.WHY_TITLE_WOULD if d.quiet else texts.WHY_TITLE
        self.setWindowTitle(title)
        self.heading.setText(soft_wrap(decision_title(d)))
        self.set_value(texts.WHY_IMAGE, d.image)
        self.set_value(texts.WHY_AS_TYPED, d.input if d.input != d.image else None)
        self.set_value(
            texts.WHY_CATEGORY, texts.CATEGORY.get(d.category or "", d.category or "") or None
        )
        self.set_value(texts.WHY_RULE, d.rule)
        self.set_value(texts.WHY_REASON, d.reason)
        self.set_value(texts.WHY_DETAIL, d.detail)
        self.set_value(
            texts.WHY_POLICY, policy_line(d, self.current_policy, self.enforcing) or None
        )
        self.set_value(texts.WHY_WHAT_TO_DO, "\n".join(why_remedy(d)) or None)
        self.set_value(texts.WHY_CONTACT, d.contact)
        self.set_value(texts.WHY_TIME, format_when(d.time) if d.time is not None else None)
        self.set_value(texts.WHY_COMMAND, d.command_line)
        self.set_value(texts.WHY_PROCESS, d.process)
        command = d.alternative_command
        self.command.setText(soft_wrap(command or ""))
        self.form.setRowVisible(self.command_box, command is not None)
        self.copy.setEnabled(command is not None)
        self.request.setEnabled(d.help_url is not None)
        self.request.setVisible(d.help_url is not None)
        self.request.setToolTip(d.help_url or "")
        self.message.setText(soft_wrap(d.message or ""))
        self.message.setAccessibleDescription(d.message or "")
        self.message_toggle.setVisible(d.message is not None)
        self.copy_message.setVisible(d.message is not None)
        if command is not None:
            self.primary = self.copy
        elif d.help_url is not None:
            self.primary = self.request
        else:
            self.primary = self.close_button
        for button in (self.copy, self.request, self.close_button):
            button.setDefault(button is self.primary)
        if self.isVisible():
            self.primary.setFocus(Qt.FocusReason.OtherFocusReason)
        fit_to_content(self, self.width() if self.isVisible() else WIDTH)

    def _fold(self, shown: bool) -> None:
        self.message.setVisible(shown)
        self.message_toggle.setText(texts.WHY_MESSAGE_HIDE if shown else texts.WHY_MESSAGE_SHOW)
        self.message_toggle.setArrowType(
            Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow
        )
        fit_to_content(self, self.width() if self.isVisible() else WIDTH)

    def _copy(self) -> None:
        if self.current is not None and self.current.alternative_command:
            copy_text(self.current.alternative_command)
            self.copied.setText(texts.WHY_COPIED.format(text=self.current.alternative_command))

    def _copy_message(self) -> None:
        if self.current is not None and self.current.message:
            copy_text(self.current.message)
            self.copied.setText(texts.COPY_DONE)

    def _request(self) -> None:
        if self.current is not None and self.current.help_url:
            QDesktopServices.openUrl(QUrl(self.current.help_url))


# --------------------------------------------------------------------------- decisions


class DecisionsWindow(QDialog):
    """Recent decisions, newest first, in columns (time, decision, image, reason), with a
    verdict filter and an image filter. Long names and reasons are elided in the row and
    whole in its tooltip."""

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
        self.list = QTreeWidget()
        self.list.setAccessibleName(texts.DECISIONS_LIST_NAME)
        self.list.setColumnCount(len(texts.DECISIONS_COLUMNS))
        self.list.setHeaderLabels(list(texts.DECISIONS_COLUMNS))
        self.list.setRootIsDecorated(False)
        self.list.setUniformRowHeights(True)
        self.list.setAlternatingRowColors(True)
        self.list.setAllColumnsShowFocus(True)
        self.list.setItemDelegate(_NoFocusFrame(self.list))
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.list.header()
        header.setStretchLastSection(True)
        header.setSectionsMovable(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(2, 210)
        self.list.itemActivated.connect(lambda item, _column: self._why(item))
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setVisible(False)
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
        self.resize(600, 360)
        self.shown: list[DecisionView] = []

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self.list.setFocus(Qt.FocusReason.OtherFocusReason)  # arrows move, Enter explains

    def set_filter(self, verdict: str | None, text: str = "") -> None:
        self.verdict.setCurrentIndex(self.FILTERS.index(verdict))
        self.search.setText(text)
        self.refill()

    def set_problem(self, text: str) -> None:
        self.problem.setText(soft_wrap(text))
        self.problem.setVisible(bool(text))

    def refill(self) -> None:
        verdict = self.FILTERS[max(0, self.verdict.currentIndex())]
        self.shown = self.log.filtered(verdict, self.search.text())
        self.list.clear()
        for d in self.shown:
            when = format_when(d.time)[11:19] if d.time is not None else "--:--:--"
            verdict_words = texts.DECISIONS_VERDICT.get(d.verdict, d.verdict)
            image = d.image or d.shown_name
            reason = d.reason
            item = QTreeWidgetItem([when, verdict_words, image, reason])
            if d.denied:
                bold = QFont(self.list.font())
                bold.setBold(True)
                item.setFont(1, bold)
            item.setToolTip(2, image)
            item.setToolTip(3, reason)
            if when and d.time is not None:
                item.setToolTip(0, format_when(d.time))
            row = texts.DECISIONS_ROW.format(
                time=when, verdict=verdict_words, image=image, reason=reason
            )
            for column in range(4):
                item.setData(column, Qt.ItemDataRole.AccessibleTextRole, row)
            self.list.addTopLevelItem(item)
        first = self.list.topLevelItem(0)
        if first is not None:
            self.list.setCurrentItem(first)
        self.why.setEnabled(bool(self.shown))

    def rows(self) -> list[str]:
        """The rows as shown, their columns joined by two spaces."""
        return [
            "  ".join(item.text(c) for c in range(4)).rstrip()
            for item in (self.list.topLevelItem(i) for i in range(self.list.topLevelItemCount()))
            if item is not None
        ]

    def _why(self, item: QTreeWidgetItem | None) -> None:
        row = self.list.indexOfTopLevelItem(item) if item is not None else -1
        if 0 <= row < len(self.shown):
            self.why_requested.emit(self.shown[row])


# --------------------------------------------------------------------------- status


class StatusWindow(QDialog):
    """The agent's state in rows (from ``TrayState.rows``) under a heading with the tray's
    icon, with diagnostics at hand; sized to its content, focus on *Close*."""

    diagnostics_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(texts.STATUS_TITLE)
        self.setAccessibleName(texts.STATUS_TITLE)
        self.icon = QLabel()
        self.headline = _heading(scale=1.15)
        self.headline.setAccessibleName(texts.STATUS_TITLE)
        self.form = QFormLayout()
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.form.setVerticalSpacing(6)
        self.updated = _note()
        self.values: dict[str, QLabel] = {}
        self.texts: dict[str, str] = {}
        diagnostics = _button(texts.MENU_DIAGNOSTICS, texts.MENU_DIAGNOSTICS)
        diagnostics.clicked.connect(self.diagnostics_requested)
        copy = _button(texts.DIAGNOSTICS_COPY, texts.DIAGNOSTICS_COPY_NAME)
        copy.clicked.connect(lambda: copy_text(self.as_text()))
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        self.close_button = close.button(QDialogButtonBox.StandardButton.Close)
        buttons = QHBoxLayout()
        buttons.addWidget(diagnostics)
        buttons.addWidget(copy)
        buttons.addStretch(1)
        buttons.addWidget(close)
        top = QHBoxLayout()
        top.setSpacing(10)
        top.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.headline, 1)
        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        layout.addLayout(top)
        layout.addLayout(self.form)
        layout.addWidget(self.updated)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self.headline_text = ""

    def set_state(self, state: TrayState, when: float) -> None:
        self.headline_text = state.headline
        self.headline.setText(soft_wrap(state.headline))
        self.icon.setPixmap(icon_for(state.icon).pixmap(32, 32))
        for name, value in state.rows:
            label = self.values.get(name)
            if label is None:
                label = _value_label(name)
                caption = QLabel(name + ":")
                caption.setBuddy(label)
                caption.setForegroundRole(QPalette.ColorRole.PlaceholderText)
                self.form.addRow(caption, label)
                self.values[name] = label
            _set_text(label, value)
            self.texts[name] = value
        shown = {name for name, _ in state.rows}
        for name, label in self.values.items():
            self.form.setRowVisible(label, name in shown)
        self.updated.setText(texts.STATUS_REFRESHED.format(time=format_when(when)))
        fit_to_content(self, self.width() if self.isVisible() else WIDTH)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self.close_button.setFocus(Qt.FocusReason.OtherFocusReason)

    def fields(self) -> dict[str, str]:
        return {
            name: self.texts.get(name, "")
            for name, label in self.values.items()
            if self.form.isRowVisible(label)
        }

    def as_text(self) -> str:
        lines = [self.headline_text]
        lines += [f"{name}: {value}" for name, value in self.fields().items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- diagnostics


def cli_command(
    executable: str | None = None, frozen: bool | None = None, platform: str = sys.platform
) -> list[str]:
    """How the tray runs ``pullgate``: in a frozen bundle (the packages, Pullgate.app, the
    MSI) ``sys.executable`` is the tray itself, which knows no ``-m``, and the CLI is the
    ``pullgate`` beside it; from source, this Python's ``-m agent``."""
    executable = sys.executable if executable is None else executable
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    if frozen:
        name = "pullgate.exe" if platform == "win32" else "pullgate"
        return [str(Path(executable).with_name(name))]
    return [executable, "-m", "agent"]


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
        argv = [*cli_command(), "doctor", "--json", "--control", str(self.control())]
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
