"""The machine's side of ``containers.host_access`` on a Windows endpoint: where a user's
profile is, and whether a folder on a bind's way is a junction, symbolic link or mount
point (``agent.core.inspection.windows_binds`` judges, with these facts).

A bind passes only inside the requester's profile; a junction there leading to ``C:\\``
would pass by its name, so every folder the path walks through is looked at, not
followed: ``GetFileAttributesW`` shows a reparse point's own attributes, and for one of
them ``FindFilesW`` its directory entry's reparse tag (without opening it, so a cloud
placeholder is not fetched; the judgement lets OneDrive's placeholders through). Paths are
looked up with the ``\\\\?\\`` prefix (they are clean drive paths by then), so a long
path is looked at too rather than missed as "not found". The profile is the SID's
``ProfileImagePath`` under ``HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\
ProfileList``, which only administrators can change.

Blocking calls: the shim runs them in a worker thread. Windows only, never imported
elsewhere; type-checked with mypy ``--platform win32``, never run here.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import winreg
from collections.abc import Iterable

import pywintypes
import win32con
import win32file
import winerror

from agent.core.inspection.windows_binds import WindowsPathFacts
from agent.platform.windows import WindowsNameError, check_sid

__all__ = ["PROFILE_LIST", "MachinePaths", "examine", "profile_directory"]

PROFILE_LIST = "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\ProfileList"
_INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF
_NOT_FOUND = frozenset({winerror.ERROR_FILE_NOT_FOUND, winerror.ERROR_PATH_NOT_FOUND})


def profile_directory(sid: str) -> str | None:
    """The profile folder of ``sid`` (environment variables expanded), or None: not a
    SID, no profile on this machine, or a value of another type."""
    try:
        check_sid(sid)
    except WindowsNameError:
        return None
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, f"{PROFILE_LIST}\\{sid}") as key:
            value, kind = winreg.QueryValueEx(key, "ProfileImagePath")
    except OSError:
        return None
    if not isinstance(value, str):
        return None
    if kind == winreg.REG_EXPAND_SZ:
        return winreg.ExpandEnvironmentStrings(value)
    return value if kind == winreg.REG_SZ else None


def examine(paths: Iterable[str]) -> dict[str, WindowsPathFacts]:
    """Each clean drive path as it is now (exists, is a reparse point); one that could
    not be looked at (denied, a bad name) is left out, and the bind is refused."""
    out: dict[str, WindowsPathFacts] = {}
    for path in paths:
        try:
            attributes = int(win32file.GetFileAttributesW("\\\\?\\" + path))
        except pywintypes.error as e:
            if e.winerror in _NOT_FOUND:
                out[path] = WindowsPathFacts(exists=False)
            continue
        if attributes == _INVALID_FILE_ATTRIBUTES:
            continue
        reparse = bool(attributes & win32con.FILE_ATTRIBUTE_REPARSE_POINT)
        out[path] = WindowsPathFacts(True, reparse, _reparse_tag(path) if reparse else None)
    return out


def _reparse_tag(path: str) -> int | None:
    """The reparse tag of ``path``'s directory entry (``WIN32_FIND_DATA.dwReserved0``),
    or None when it cannot be read."""
    try:
        found = win32file.FindFilesW("\\\\?\\" + path)
    except pywintypes.error:
        return None
    return int(found[0][6]) if len(found) == 1 else None


class MachinePaths:
    """This machine, as the shim asks it (``agent.daemon.shim.WindowsHostPaths``)."""

    def profile(self, sid: str) -> str | None:
        return profile_directory(sid)

    def examine(self, paths: list[str]) -> dict[str, WindowsPathFacts]:
        return examine(paths)
