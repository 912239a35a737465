"""The real desktop for the tray's tests: bench/desktop.py (Xvfb, a private session bus,
trayer, dunst), which the tray benchmark uses too and so lives in bench/."""

from __future__ import annotations

from bench.desktop import (
    Desktop,
    DesktopError,
    Window,
    missing_requirements,
    start_desktop,
    stop_desktop,
)

__all__ = [
    "Desktop",
    "DesktopError",
    "Window",
    "missing_requirements",
    "start_desktop",
    "stop_desktop",
]
