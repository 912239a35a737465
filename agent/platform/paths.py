"""Where the agent keeps its state (policy cache, status, pid file), per OS and mode."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_state_dir"]


def default_state_dir() -> Path:
    """``/var/lib/pullgate`` for the system agent (root); the user's state dir otherwise."""
    if os.name == "posix" and os.geteuid() == 0:
        return Path("/var/lib/pullgate")
    import platformdirs  # noqa: PLC0415 - only per-user agents need it

    return Path(platformdirs.user_state_dir("pullgate", appauthor=False))
