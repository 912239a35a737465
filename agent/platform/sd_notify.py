"""systemd's service notification protocol (``sd_notify(3)``), without libsystemd.

A ``Type=notify`` unit is "started" only when the service says ``READY=1``; with
``WatchdogSec=`` systemd kills and restarts a service that stops saying ``WATCHDOG=1``.
The protocol is one datagram of ``KEY=VALUE`` lines to the Unix socket named in
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``), so a few
lines of ``socket`` do what linking libsystemd would. Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op, so the agent runs the same in a terminal.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Notifier", "watchdog_interval"]


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications; ``address`` None means "not under systemd"."""

    address: str | None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Notifier:
        """The notify socket named by the service manager, if any."""
        raw = env.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):  # an abstract socket: the name begins with a NUL byte
            return cls("\0" + raw[1:])
        return cls(raw if raw.startswith("/") else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``READY="1"``-style fields (names upper-cased) in one datagram.

        Returns whether the datagram was sent; a failure is not an error for the agent
        (systemd restarts a notify service that never gets ready, which is the remedy).
        """
        if self.address is None:
            return False
        # Values must be one line each: a newline would start another field.
        payload = "\n".join(f"{k.upper()}={v.replace(chr(10), ' ')}" for k, v in fields.items())
        if sys.platform == "win32":  # no systemd: the service reports to the SCM instead
            return False
        else:
            try:
                # Not inherited by child processes without SOCK_CLOEXEC (PEP 446), which
                # macOS does not have.
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.sendto(payload.encode(), self.address)
            except OSError:
                return False
            return True


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (as
    ``sd_watchdog_enabled(3)`` advises), or None when the watchdog is off or meant for
    another process (``$WATCHDOG_PID``)."""
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None
