"""Desktop notifications for the tray: the freedesktop Notifications service on Linux, Qt's
own tray balloon elsewhere or when there is no such service.

Why not only `QSystemTrayIcon.showMessage`: next to an XEmbed tray (trayer, most X11
panels) Qt draws a balloon of its own, which the desktop's notification centre never sees,
so a notification missed is gone. On Linux `Notifier` sends `Notify` to
`org.freedesktop.Notifications` on the session bus (app name "Pullgate", a "Why?" action,
low urgency for quiet ones, an expire timeout) and listens for `ActionInvoked` and
`NotificationClosed` to map the service's ids back to the keys it was given.

Why jeepney in a thread and not QtDBus: PySide6 cannot marshal the `u` and `y` that
`Notify`'s signature (`susssasa{sv}i`) and its urgency hint need, and a blocking D-Bus
call must not stall the Qt thread. One worker thread owns the bus connection and all of the
D-Bus state (ids, keys, the notification on screen); it blocks on one queue that both
`notify()` and jeepney's receiver thread (signals matched by filter) feed, so nothing
polls while nothing happens. Results reach the Qt thread by queued signals.

A burst (compose pulling ten images) is coalesced by the caller into one text under one
key; `Notifier` shows it in place: a notification replaces the one with the same key
(`replaces_id`) while that one is still on screen, so a burst is one notification, updated,
not ten. A new key is a new notification.

Nothing here raises into the caller: no session bus, no service, a service that dies or a
bus that goes away fall back to the balloon, and `problem` says why in words.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QSystemTrayIcon

try:  # jeepney comes with keyring on Linux; elsewhere Qt's notifications are the native ones
    from jeepney import (  # type: ignore[import-untyped]
        DBusAddress,
        HeaderFields,
        MatchRule,
        message_bus,
        new_method_call,
    )
    from jeepney.io.threading import (  # type: ignore[import-untyped]
        DBusRouter,
        Proxy,
        open_dbus_connection,
    )
    from jeepney.wrappers import unwrap_msg  # type: ignore[import-untyped]
except ImportError as e:  # pragma: no cover - platform dependent
    _JEEPNEY_MISSING: str | None = f"jeepney is not installed ({e})"
else:
    _JEEPNEY_MISSING = None

__all__ = ["APP_NAME", "EXPIRE_TIMEOUT_MS", "Notifier"]

log = logging.getLogger(__name__)

APP_NAME = "Pullgate"
EXPIRE_TIMEOUT_MS = 10_000
"""How long the desktop shows a notification (the service may cap it)."""
QUIET_EXPIRE_TIMEOUT_MS = 6_000
"""`monitor` mode's "would be blocked" notifications: shorter, and low urgency."""
CALL_TIMEOUT = 5.0
"""Seconds a D-Bus call may take before the service counts as not answering."""
WHY_ACTION = "why"

_SERVICE = "org.freedesktop.Notifications"
_PATH = "/org/freedesktop/Notifications"
_INTERFACE = "org.freedesktop.Notifications"
_URGENCY_LOW = 0
_URGENCY_NORMAL = 1


def _use_dbus() -> bool:
    return sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))


@dataclass(frozen=True)
class _Send:
    title: str
    body: str
    key: str
    quiet: bool


_STOP = object()


class _Worker:
    """The D-Bus side: runs in its own thread, owns the connection and every id."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self.inbox: queue.Queue[Any] = queue.Queue()
        self._router: Any = None
        self._filters: list[Any] = []
        self._keys: dict[int, str] = {}
        self._ids: dict[str, int] = {}
        """The service's id of each key's notification still on screen."""

    # ---------------------------------------------------------------- thread body

    def run(self) -> None:
        try:
            self._connect()
            while True:
                item = self.inbox.get()
                if item is _STOP:
                    return
                if isinstance(item, _Send):
                    self._send(item)
                else:
                    self._on_message(item)
        except Exception as e:  # never let the thread die silently
            log.exception("notification worker failed")
            self._notifier._report.emit(False, f"notification worker failed: {e}")
        finally:
            self._disconnect()

    # ---------------------------------------------------------------- connection

    def _connect(self) -> bool:
        """Open the session bus, subscribe to the service's signals and ask who it is."""
        if self._router is not None:
            return True
        if _JEEPNEY_MISSING is not None:
            self._notifier._report.emit(False, _JEEPNEY_MISSING)
            return False
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not os.environ.get("XDG_RUNTIME_DIR"):
            self._notifier._report.emit(False, "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS)")
            return False
        try:
            router = DBusRouter(open_dbus_connection(bus="SESSION"))
        except Exception as e:
            self._notifier._report.emit(False, f"cannot reach the D-Bus session bus: {e}")
            return False
        self._router = router
        try:
            rules = [
                MatchRule(type="signal", interface=_INTERFACE, path=_PATH, member=member)
                for member in ("ActionInvoked", "NotificationClosed")
            ]
            rules.append(
                MatchRule(
                    type="signal",
                    sender="org.freedesktop.DBus",
                    interface="org.freedesktop.DBus",
                    member="NameOwnerChanged",
                    path="/org/freedesktop/DBus",
                )
            )
            rules[-1].add_arg_condition(0, _SERVICE)
            bus = Proxy(message_bus, router, timeout=CALL_TIMEOUT)
            for rule in rules:
                self._filters.append(router.filter(rule, queue=self.inbox))
                bus.AddMatch(rule)
        except Exception as e:
            self._notifier._report.emit(False, f"cannot subscribe on the session bus: {e}")
            self._disconnect()
            return False
        self._ask_server()
        return True

    def _disconnect(self) -> None:
        for handle in self._filters:
            with contextlib.suppress(Exception):
                handle.close()
        self._filters.clear()
        router, self._router = self._router, None
        if router is not None:
            with contextlib.suppress(Exception):
                router.close()
            with contextlib.suppress(Exception):
                router.conn.close()
        self._keys.clear()
        self._ids.clear()

    def _call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
        address = DBusAddress(_PATH, bus_name=_SERVICE, interface=_INTERFACE)
        message = new_method_call(address, method, signature, body)
        reply = self._router.send_and_get_reply(message, timeout=CALL_TIMEOUT)
        return unwrap_msg(reply)

    def _ask_server(self) -> None:
        """GetServerInformation: whether a service answers (it may be D-Bus activated)."""
        try:
            name, vendor, version, _spec = self._call("GetServerInformation")
        except Exception as e:
            self._notifier._report.emit(False, _describe(e))
            return
        log.info("notification service: %s %s (%s)", name, version, vendor)
        self._notifier._report.emit(True, "")

    # ---------------------------------------------------------------- work

    def _send(self, item: _Send) -> None:
        if self._router is None or not self._router._rcv_thread.is_alive():
            # The bus went away (or was never there): try once more, then fall back.
            self._disconnect()
            if not self._connect():
                self._notifier._fallback.emit(item.title, item.body, item.key, item.quiet)
                return
        replaces = self._ids.get(item.key, 0)
        hints = {"urgency": ("y", _URGENCY_LOW if item.quiet else _URGENCY_NORMAL)}
        actions = ["default", "Why?", WHY_ACTION, "Why?"]
        timeout = QUIET_EXPIRE_TIMEOUT_MS if item.quiet else EXPIRE_TIMEOUT_MS
        body = (APP_NAME, replaces, "", item.title, item.body, actions, hints, timeout)
        try:
            (notification_id,) = self._call("Notify", "susssasa{sv}i", body)
        except Exception as e:
            self._notifier._report.emit(False, _describe(e))
            self._notifier._fallback.emit(item.title, item.body, item.key, item.quiet)
            return
        if replaces and replaces != notification_id:
            self._keys.pop(replaces, None)
        self._keys[notification_id] = item.key
        self._ids[item.key] = notification_id
        self._notifier._report.emit(True, "")

    def _on_message(self, message: Any) -> None:
        member = message.header.fields.get(HeaderFields.member)
        if member == "ActionInvoked":
            notification_id, action = message.body
            key = self._keys.get(notification_id)
            if key is not None and action in ("default", WHY_ACTION):
                self._notifier._clicked.emit(key)
        elif member == "NotificationClosed":
            notification_id, _reason = message.body
            key = self._keys.pop(notification_id, None)
            if key is not None and self._ids.get(key) == notification_id:
                del self._ids[key]
        elif member == "NameOwnerChanged":
            _name, _old, new = message.body
            # Ids die with the service that gave them.
            self._keys.clear()
            self._ids.clear()
            if new:
                self._notifier._report.emit(True, "")
            else:
                self._notifier._report.emit(False, "the notification service stopped")


def _describe(error: Exception) -> str:
    name = getattr(error, "name", "")
    if name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ):
        return "no notification service on the session bus"
    if name.startswith("org.freedesktop.DBus.Error.Spawn."):
        # The bus knows a service to start (a .service file) but it did not come up.
        detail = " ".join(str(a) for a in getattr(error, "data", ()) or ())
        return f"the notification service could not be started ({detail or name})"
    if isinstance(error, TimeoutError):
        return f"the notification service did not answer within {CALL_TIMEOUT:.0f} s"
    text = str(error) or type(error).__name__
    return f"the notification service failed: {text}"


class Notifier(QObject):
    """Shows a notification per `notify()`; `activated` emits its `key` when the user clicks
    it or its "Why?" action. Call `close()` before the application quits."""

    activated = Signal(str)
    """The key of the notification the user clicked (body or "Why?")."""
    changed = Signal()
    """`available` or `problem` changed."""

    # From the worker thread to this object's (the Qt) thread: queued connections.
    _report = Signal(bool, str)
    _fallback = Signal(str, str, str, bool)
    _clicked = Signal(str)

    def __init__(self, tray: QSystemTrayIcon | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tray = tray
        self._available = False
        self._problem: str | None = None
        self._balloon_key: str | None = None
        self._worker: _Worker | None = None
        self._thread: threading.Thread | None = None
        self._report.connect(self._on_report)
        self._fallback.connect(self._show_balloon)
        self._clicked.connect(self.activated)
        if tray is not None:
            tray.messageClicked.connect(self._on_balloon_clicked)
        if _use_dbus():
            self._worker = _Worker(self)
            self._thread = threading.Thread(
                target=self._worker.run, name="pullgate-notify", daemon=True
            )
            self._thread.start()
        elif tray is not None:
            # macOS and Windows: Qt's showMessage is the platform's own notification.
            self._available = QSystemTrayIcon.supportsMessages()

    @property
    def available(self) -> bool:
        """Whether a desktop notification service answered (the last call, or the service's
        coming and going since). False means notifications fall back to Qt's balloon."""
        return self._available

    @property
    def problem(self) -> str | None:
        """Why desktop notifications are not available, in words; None when they are (or
        before the service has answered the first time)."""
        return self._problem

    def notify(self, title: str, body: str, key: str, *, quiet: bool = False) -> None:
        """Show `title` and `body`; never blocks and never raises."""
        if self._worker is not None:
            self._worker.inbox.put(_Send(title, body, key, quiet))
        else:
            self._show_balloon(title, body, key, quiet)

    def close(self) -> None:
        """Stop the worker and close the bus connection (waits at most a few seconds)."""
        if self._worker is not None and self._thread is not None:
            self._worker.inbox.put(_STOP)
            self._thread.join(CALL_TIMEOUT + 1)
        self._worker = None
        self._thread = None

    @Slot(bool, str)
    def _on_report(self, available: bool, problem: str) -> None:
        new_problem = None if available else problem
        if available == self._available and new_problem == self._problem:
            return
        self._available = available
        self._problem = new_problem
        if problem:
            log.warning("desktop notifications: %s", problem)
        self.changed.emit()

    @Slot(str, str, str, bool)
    def _show_balloon(self, title: str, body: str, key: str, quiet: bool) -> None:
        if self._tray is None or not self._tray.isVisible():
            log.warning("notification not shown (no tray icon): %s", title)
            return
        icon = (
            QSystemTrayIcon.MessageIcon.Information
            if quiet
            else QSystemTrayIcon.MessageIcon.Warning
        )
        self._balloon_key = key
        timeout = QUIET_EXPIRE_TIMEOUT_MS if quiet else EXPIRE_TIMEOUT_MS
        self._tray.showMessage(title, body, icon, timeout)

    @Slot()
    def _on_balloon_clicked(self) -> None:
        if self._balloon_key is not None:
            self.activated.emit(self._balloon_key)
