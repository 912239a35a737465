"""Docker Desktop mode's view of the machine: who is logged in, and the endpoints' dirs.

Observations only (``agent.core.desktop`` decides what to do with them), each a few
``stat`` calls and passwd lookups, cheap enough for the agent's rescan every few seconds:

- macOS: the owner of ``/dev/console`` (what ``loginwindow`` sets at each login and fast
  user switch; root while nobody is logged in), and every user with a graphical login in
  utmpx (``console`` lines): a user switched away from under fast user switching keeps
  their endpoint while their Docker Desktop runs on.
- Linux: logind's runtime directories ``/run/user/<uid>``, one per user with a session
  (graphical or not; Docker Desktop for Linux needs one, as a systemd user service).

The per-user directories under the users' root are made by root, for root: the user
must be able to reach their socket but never to replace it (a socket the user put there
would be served to nobody but could be named in the user's context, so the directory is
root's, 0755, and only the socket inside is the user's, 0600).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.core.desktop import SessionUser

__all__ = [
    "CONSOLE",
    "DEFAULT_SESSIONS_DIR",
    "UnsafeDirectoryError",
    "console_user",
    "darwin_users",
    "desktop_privilege_problems",
    "gui_session_names",
    "logind_users",
    "make_root_dir",
    "missing_capabilities",
    "session_users",
]

CONSOLE = Path("/dev/console")
SYSTEM_GIDS = frozenset({0, 1})
"""Groups whose write access to a parent directory is no one's but the system's: root
(wheel) and daemon, which owns macOS's ``/var/run`` (root:daemon 0775)."""
DEFAULT_SESSIONS_DIR = Path("/run/user")
"""logind's runtime directories: ``/run/user/<uid>`` exists while the user has a session."""


class UnsafeDirectoryError(OSError):
    """A directory the agent would serve from is not root's alone (or not a directory)."""


def _user(uid: int) -> SessionUser | None:
    if sys.platform == "win32":  # no uids (agent.platform.windows_sessions is Windows')
        return None
    else:
        import pwd  # noqa: PLC0415 - POSIX only: the module imports on Windows

        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return None
        return SessionUser(uid=uid, name=entry.pw_name, home=entry.pw_dir)


def console_user(console: Path = CONSOLE) -> SessionUser | None:
    """macOS: the user at the console (None: nobody, i.e. root owns it, or no console)."""
    try:
        uid = console.stat().st_uid
    except OSError:
        return None
    return None if uid == 0 else _user(uid)


def logind_users(sessions_dir: Path = DEFAULT_SESSIONS_DIR) -> list[SessionUser]:
    """Linux: users with a logind runtime directory, named by uid and owned by that uid
    (a directory of another owner is not a session's and is ignored)."""
    users: list[SessionUser] = []
    try:
        entries = list(os.scandir(sessions_dir))
    except OSError:
        return users
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        uid = int(entry.name)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue
        user = _user(uid)
        if user is not None:
            users.append(user)
    return sorted(users, key=lambda u: u.uid)


USER_PROCESS = 7
"""utmpx's ``ut_type`` of a login (``<utmpx.h>``, the same on macOS and Linux)."""
MAX_UTMPX_RECORDS = 4096
"""Records read at most: the file is the system's, but a loop over it stays bounded."""


def gui_session_names(records: Iterable[tuple[str, str, int]]) -> list[str]:
    """macOS: the users with a graphical login, from utmpx ``(user, line, type)``
    records: a login (``USER_PROCESS``) on the line ``console``, which loginwindow writes
    at each login and removes at logout. A user switched away from under fast user
    switching keeps theirs, so their endpoint stays while their Docker Desktop runs on."""
    names: list[str] = []
    for user, line, kind in records:
        if kind == USER_PROCESS and line == "console" and user and user not in names:
            names.append(user)
    return names


def _utmpx_records() -> list[tuple[str, str, int]]:
    """macOS: the utmpx database as ``(user, line, type)`` (getutxent through ctypes;
    type-checked for darwin, never run here); [] where it cannot be read."""
    if sys.platform == "darwin":
        import ctypes  # noqa: PLC0415 - macOS only, on use

        class _Timeval(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_int32)]

        class _Utmpx(ctypes.Structure):  # <utmpx.h>: _UTX_USERSIZE 256, IDSIZE 4, ...
            _fields_ = [
                ("ut_user", ctypes.c_char * 256),
                ("ut_id", ctypes.c_char * 4),
                ("ut_line", ctypes.c_char * 32),
                ("ut_pid", ctypes.c_int32),
                ("ut_type", ctypes.c_short),
                ("ut_tv", _Timeval),
                ("ut_host", ctypes.c_char * 256),
                ("ut_pad", ctypes.c_uint32 * 16),
            ]

        try:
            libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
        except OSError:
            return []
        libc.getutxent.restype = ctypes.POINTER(_Utmpx)
        records: list[tuple[str, str, int]] = []
        libc.setutxent()
        try:
            while len(records) < MAX_UTMPX_RECORDS:
                entry = libc.getutxent()
                if not entry:
                    break
                record = entry.contents
                records.append(
                    (
                        bytes(record.ut_user).split(b"\0", 1)[0].decode("utf-8", "replace"),
                        bytes(record.ut_line).split(b"\0", 1)[0].decode("utf-8", "replace"),
                        int(record.ut_type),
                    )
                )
        finally:
            libc.endutxent()
        return records
    else:
        return []


def _user_named(name: str) -> SessionUser | None:
    if sys.platform == "win32":
        return None
    else:
        import pwd  # noqa: PLC0415 - POSIX only: the module imports on Windows

        try:
            return _user(pwd.getpwnam(name).pw_uid)
        except KeyError:
            return None


def darwin_users(
    console: Path = CONSOLE,
    records: Callable[[], list[tuple[str, str, int]]] = _utmpx_records,
) -> list[SessionUser]:
    """macOS: the user at the console and every user with a graphical login (fast user
    switching keeps several), never root; by uid."""
    found: dict[int, SessionUser] = {}
    owner = console_user(console)
    if owner is not None:
        found[owner.uid] = owner
    for name in gui_session_names(records()):
        user = _user_named(name)
        if user is not None and user.uid != 0:
            found.setdefault(user.uid, user)
    return [found[uid] for uid in sorted(found)]


def session_users(
    sessions_dir: Path | None = None, platform: str = sys.platform
) -> list[SessionUser]:
    """The users logged in now, by the platform's rule (see the module's docstring)."""
    if platform == "darwin":
        return darwin_users()
    return logind_users(sessions_dir or DEFAULT_SESSIONS_DIR)


def make_root_dir(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` (and missing parents) as root's own, or check that it is: a real
    directory (not a link), owned by root, writable by nobody else. Refuses otherwise:
    whoever could write it could swap a user's socket for their own."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    for directory in (path, *path.parents):
        info = directory.lstat()
        if stat.S_ISLNK(info.st_mode) and directory != path:
            continue  # /var -> /private/var on macOS: the link is root's, in a root dir
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeDirectoryError(f"{directory} is not a directory")
        if directory == path:
            if sys.platform != "win32" and info.st_uid != os.geteuid():
                raise UnsafeDirectoryError(f"{directory} is owned by uid {info.st_uid}, not root")
            if info.st_mode & 0o7777 != mode:
                os.chmod(directory, mode, follow_symlinks=False)
        elif not info.st_mode & stat.S_ISVTX and (
            info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid not in SYSTEM_GIDS)
        ):
            raise UnsafeDirectoryError(
                f"{directory} is writable by others than its owner: a socket below it "
                "could be replaced"
            )


# Linux capability bits (linux/capability.h) Desktop mode needs beyond the takeover's.
_DESKTOP_CAPABILITIES = {
    "CAP_DAC_OVERRIDE": 1,  # open a user's Desktop socket (0600/0755: connect needs write)
    "CAP_SETGID": 6,  # run the docker CLI as the user (their groups)
    "CAP_SETUID": 7,  # ... and as their uid
}


def missing_capabilities(status: str) -> list[str]:
    """The capabilities Desktop mode needs that ``/proc/self/status``'s ``CapEff`` lacks;
    [] when the line is absent (not Linux, or a kernel that does not say)."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                effective = int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return []
            return [name for name, bit in _DESKTOP_CAPABILITIES.items() if not effective >> bit & 1]
    return []


def desktop_privilege_problems(homes: Path = Path("/home")) -> list[str]:
    """Why a root agent on Linux cannot do Desktop mode's work here (the packaged unit's
    sandbox is made for the takeover: docs/deploy/linux.md's drop-in lifts it), each as
    words for status and doctor; [] elsewhere or when nothing is missing."""
    if sys.platform == "linux":  # /proc/self/status, statvfs's flags
        if os.geteuid() != 0:
            return []
        problems: list[str] = []
        try:
            missing = missing_capabilities(Path("/proc/self/status").read_text())
        except OSError:
            missing = []
        if "CAP_DAC_OVERRIDE" in missing:
            problems.append("without CAP_DAC_OVERRIDE the agent cannot open users' Desktop sockets")
        if "CAP_SETUID" in missing or "CAP_SETGID" in missing:
            problems.append(
                "without CAP_SETUID and CAP_SETGID it cannot run the docker CLI as each user "
                "(their docker context)"
            )
        try:
            read_only = bool(os.statvfs(homes).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            problems.append(
                f"{homes} is read-only for it (ProtectHome=/ProtectSystem=): the docker CLI "
                "cannot write users' contexts"
            )
        return problems
    else:
        return []
