"""Where a service's output goes: a service has no console, so what the agent prints
goes to a log file, and the last lines are kept for the message that says why the
service stopped (``agent.daemon.winservice`` puts them in the Event Log).

Plain files and text, so tested on Linux.
"""

from __future__ import annotations

import collections
import io
import os
import threading
from pathlib import Path
from typing import TextIO

__all__ = ["KEEP_LINES", "ROTATE_BYTES", "OutputTail", "open_service_log"]

KEEP_LINES = 20
ROTATE_BYTES = 10 * 1024 * 1024


class OutputTail(io.TextIOBase):
    """A text stream (for ``sys.stdout``/``sys.stderr``) that writes through to
    ``target``, flushed at once (a crash must not lose the last words), and keeps the
    last ``keep`` whole lines."""

    def __init__(self, target: TextIO, keep: int = KEEP_LINES) -> None:
        self.target = target
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.target.write(text)
            self.target.flush()
            *whole, self._partial = (self._partial + text).split("\n")
            self.lines.extend(whole)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.target.fileno()


def open_service_log(path: Path, rotate_bytes: int = ROTATE_BYTES) -> TextIO:
    """``path`` opened for appending, the previous one kept once as ``<name>.1`` when it
    grew past ``rotate_bytes``; the null device if the directory cannot be written (the
    service must start all the same; the Event Log still says why it stops)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > rotate_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
        return open(path, "a", encoding="utf-8", errors="replace", buffering=1)
    except OSError:
        return open(os.devnull, "w", encoding="utf-8")
