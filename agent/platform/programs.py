"""Which program a process runs, and who could have changed its file: facts for
``agent.core.desktop.listener_program_problem`` (Docker Desktop mode's listener rule).

- Linux: ``/proc/PID/exe``. ``stat`` through it reaches the very inode the process runs,
  even deleted or in another mount namespace. The program is named by the listed path
  (``desktop_executables``) whose file, in the agent's own view, is that inode: the link's
  text is only the kernel's spelling of a path as seen from some root (a chroot or a
  sandbox's mount namespace shows another prefix) and names the program only when no
  listed file matches (with " (deleted)" once the file is gone or replaced).
- macOS: ``proc_pidpath`` (libproc, through ctypes), then ``lstat`` of that path; there
  is no inode of the running file to compare (type-checked for darwin, never run here).

Each call is a handful of ``readlink``/``stat`` calls on ``/proc`` and the directories
above the executable: cheap enough for every connection to a user's Desktop socket.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Any

from agent.core.desktop import FileFacts, ListenerProgram

__all__ = ["program_of"]

_DELETED = " (deleted)"
_PATH_MAX = 4096  # PROC_PIDPATHINFO_MAXSIZE (4 * MAXPATHLEN)
_libproc: Any = None  # macOS's libproc, loaded on first use


def program_of(pid: int | None, listed: Collection[str] = ()) -> ListenerProgram:
    """What process ``pid`` runs (``pid`` None: the kernel did not say), named on Linux
    by the ``listed`` path that is its very file if one is; never raises."""
    if pid is None or pid <= 0:
        return ListenerProgram(pid=None, unreadable="the kernel named no process")
    if sys.platform == "win32":  # Desktop's pipe is judged by windows_desktop instead
        return ListenerProgram(pid=pid, unreadable="not read on Windows")
    else:
        return _posix_program(pid, listed)


def _listed_file(info: os.stat_result, listed: Collection[str]) -> str | None:
    """The listed path whose file (not followed if a link) is the inode ``info`` is."""
    for path in listed:
        try:
            at = os.lstat(path)
        except OSError:
            continue
        if (at.st_dev, at.st_ino) == (info.st_dev, info.st_ino):
            return path
    return None


def _posix_program(pid: int, listed: Collection[str]) -> ListenerProgram:
    try:
        if sys.platform == "darwin":
            path, deleted = _darwin_path(pid), False
            running = _facts(path, os.lstat(path))
        else:
            link = f"/proc/{pid}/exe"
            target = os.readlink(link)
            info = os.stat(link)  # the inode the process runs, deleted or not
            same = _listed_file(info, listed)
            deleted = same is None and target.endswith(_DELETED)
            path = same or (target.removesuffix(_DELETED) if deleted else target)
            running = _facts(path, info)
    except OSError as e:
        gone = e.errno in (errno.ENOENT, errno.ESRCH)
        why = "the process has exited" if gone else f"its executable cannot be read ({_name(e)})"
        return ListenerProgram(pid=pid, unreadable=why)
    if not path.startswith("/"):
        return ListenerProgram(pid=pid, path=path, deleted=deleted, running=running)
    try:
        at_path: FileFacts | None = _facts(path, os.lstat(path))
    except OSError:
        at_path = None
    parents: list[FileFacts] = []
    for parent in PurePosixPath(path).parents:
        try:
            parents.append(_facts(str(parent), os.lstat(parent)))
        except OSError:
            break  # the core refuses an incomplete chain
    return ListenerProgram(
        pid=pid,
        path=path,
        deleted=deleted,
        running=running,
        at_path=at_path,
        parents=tuple(parents),
    )


def _facts(path: str, info: os.stat_result) -> FileFacts:
    return FileFacts(path, info.st_mode, info.st_uid, info.st_gid, info.st_dev, info.st_ino)


def _name(error: OSError) -> str:
    """An errno's symbolic name: the client's message never says "permission denied"
    or "no such file" about a path it did not ask for."""
    return errno.errorcode.get(error.errno or 0, str(error.errno))


def _darwin_path(pid: int) -> str:
    """``proc_pidpath(pid)``: the executable's path (OSError if the process is gone)."""
    import ctypes  # noqa: PLC0415 - macOS only, on first use

    global _libproc  # noqa: PLW0603 - loaded once, on first use
    if _libproc is None:
        lib = ctypes.CDLL("/usr/lib/libproc.dylib", use_errno=True)
        lib.proc_pidpath.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        lib.proc_pidpath.restype = ctypes.c_int
        _libproc = lib
    buffer = ctypes.create_string_buffer(_PATH_MAX)
    length = int(_libproc.proc_pidpath(pid, buffer, _PATH_MAX))
    if length <= 0:
        code = ctypes.get_errno() or errno.ESRCH
        raise OSError(code, os.strerror(code))
    return os.fsdecode(buffer.raw[:length])
