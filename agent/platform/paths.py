"""Where the agent keeps its state (policy cache, status, pid file), per OS and mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_state_dir"]


def default_state_dir() -> Path:
    """``/var/lib/pullgate`` for the system agent (root); the user's state dir otherwise.
    Windows: ``%ProgramData%\\Pullgate\\State`` (the agent is a LocalSystem service there:
    ``agent.platform.windows``)."""
    if sys.platform == "win32":
        from agent.platform import windows  # noqa: PLC0415

        return Path(windows.state_dir(os.environ))
    else:  # an else, so that mypy --platform win32 sees no unreachable code below
        if os.geteuid() == 0:
            return Path("/var/lib/pullgate")
        import platformdirs  # noqa: PLC0415 - only per-user agents need it

        return Path(platformdirs.user_state_dir("pullgate", appauthor=False))
