"""Durations as the managed config and the messages spell them (``90s``, ``12h``, ``1h30m``)."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["DURATION_UNITS", "format_duration"]

DURATION_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def format_duration(value: timedelta) -> str:
    """The shortest ``parse_duration`` spelling of ``value`` (for docs and status)."""
    ms = round(value.total_seconds() * 1000)
    parts = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = round(DURATION_UNITS[unit].total_seconds() * 1000)
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0s"
