"""Where the agent keeps its state (policy cache, status, pid file), per OS and mode.

The system agent's places differ on macOS, where ``/`` is read-only (no ``/run``, no
``/var/lib``): its state is in ``/Library/Application Support/Pullgate``, its sockets in
``/var/run/pullgate`` and its logs (the audit log and ``agent.log``) in
``/Library/Logs/Pullgate``. They are the defaults here, so the LaunchDaemon passes none.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

__all__ = [
    "MACOS_LOG_DIR",
    "MACOS_STATE_DIR",
    "agent_log_file",
    "default_desktop_users_dir",
    "default_state_dir",
    "own_output",
    "system_run_dir",
]

MACOS_STATE_DIR = Path("/Library/Application Support/Pullgate")
MACOS_LOG_DIR = Path("/Library/Logs/Pullgate")


def system_run_dir(platform: str = sys.platform) -> Path:
    """The system agent's sockets (shim, control API, Desktop mode's users): ``/run``
    on Linux, ``/var/run`` on macOS (emptied at boot; the agent creates it)."""
    return Path("/var/run/pullgate" if platform == "darwin" else "/run/pullgate")


def default_desktop_users_dir(platform: str = sys.platform) -> Path:
    """Docker Desktop mode's endpoints, one directory per uid: ``/run/pullgate/users``
    (``/var/run/pullgate/users`` on macOS)."""
    return system_run_dir(platform) / "users"


def agent_log_file(platform: str = sys.platform) -> Path | None:
    """Where the system agent writes its own lines (one JSON object per event, errors)
    when no one collects its stderr: macOS's ``/Library/Logs/Pullgate/agent.log``
    (launchd keeps no job's output); None elsewhere (journald, the Windows service's)."""
    return MACOS_LOG_DIR / "agent.log" if platform == "darwin" else None


def default_state_dir() -> Path:
    """``/var/lib/pullgate`` for the system agent (root); the user's state dir otherwise.
    Windows: ``%ProgramData%\\Pullgate\\State`` (the agent is a LocalSystem service there:
    ``agent.platform.windows``)."""
    if sys.platform == "win32":
        from agent.platform import windows  # noqa: PLC0415

        return Path(windows.state_dir(os.environ))
    else:  # an else, so that mypy --platform win32 sees no unreachable code below
        if os.geteuid() == 0:
            return MACOS_STATE_DIR if sys.platform == "darwin" else Path("/var/lib/pullgate")
        import platformdirs  # noqa: PLC0415 - only per-user agents need it

        return Path(platformdirs.user_state_dir("pullgate", appauthor=False))


def own_output(path: Path) -> bool:
    """Send this process's stdout and stderr to ``path`` (appended, 0640, never through a
    link) unless stderr already goes to a file or a terminal, e.g. a LaunchDaemon's
    ``StandardErrorPath`` an admin set. True if redirected; nothing changes on failure."""
    try:
        mode = os.fstat(2).st_mode
    except OSError:
        mode = 0
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or os.isatty(2):
        return False
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o640)
    except OSError:
        return False
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    return True
