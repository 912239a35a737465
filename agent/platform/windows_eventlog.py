"""The Windows Event Log as the audit log's mirror (``audit_native_log``): each record's
one-line summary in the Application log, under the agent's event source
(``PullgateAgent``, the service's).

pywin32's ``servicemanager`` writes the lines with its generic message (``%1``), so Event
Viewer shows the text as written; its message file is registered for the source by the
service, as LocalSystem, on its first entry. A console agent that may not register it
(not elevated) loses only the mirror: the audit file stays the record.

Windows only, never imported elsewhere (``agent.daemon.audit_log.native_writer`` imports it
under ``sys.platform == "win32"``); type-checked with mypy ``--platform win32``, never
run here.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import contextlib
from collections.abc import Callable

import pywintypes
import servicemanager

from agent.platform.windows import EVENT_SOURCE

__all__ = ["event_log_writer"]


def event_log_writer() -> Callable[[str, str], None]:
    """``write(level, line)``: ``warning`` as a warning entry, anything else as
    information. An Event Log that refuses (full, stopped, the source not registrable)
    is not an error of the audit log."""
    servicemanager.SetEventSourceName(EVENT_SOURCE, False)

    def write(level: str, line: str) -> None:
        log = servicemanager.LogWarningMsg if level == "warning" else servicemanager.LogInfoMsg
        with contextlib.suppress(pywintypes.error):
            log(line)

    return write
