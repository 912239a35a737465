"""Who is on the other end of a socket: the client's user and process, for audit records.

The uid and pid come from the kernel (``SO_PEERCRED``; ``LOCAL_PEERCRED`` and
``LOCAL_PEERPID`` on macOS), so a client cannot claim to be someone else. psutil then
names the process and its parents, so IT sees ``docker`` <- ``bash`` <- ``code``.
A process may exit before we look: then only the kernel's numbers are recorded.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar

from agent.core.peer import PeerInfo, ProcessSummary
from agent.core.redaction import redact_command_line

__all__ = [
    "MAX_PARENTS",
    "ListenerError",
    "check_holders",
    "check_listener",
    "contained",
    "describe_peer",
    "peer_credentials",
    "peer_groups",
]

MAX_PARENTS = 8


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None, int | None]:
    """(pid, uid, gid) of a connected Unix socket's peer, from the kernel."""
    try:
        if hasattr(socket, "SO_PEERCRED"):
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
            return pid, uid, gid
        if sys.platform == "darwin":  # pragma: no cover - macOS only
            # SOL_LOCAL (0): LOCAL_PEERPID (2), and LOCAL_PEERCRED (1), a struct xucred
            # {u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]}
            # (getpeereid(3) reads the same): the uid, and the first group.
            local_peercred, local_peerpid = 0x001, 0x002
            pid = struct.unpack("i", sock.getsockopt(0, local_peerpid, 4))[0]
            raw = sock.getsockopt(0, local_peercred, struct.calcsize("IIh2x16I"))
            _version, uid, ngroups, *groups = struct.unpack("IIh2x16I", raw)
            return pid, uid, groups[0] if ngroups > 0 else None
    except OSError:
        pass
    return None, None, None


#: Linux's SO_PEERGROUPS (4.13+): the peer's supplementary groups, taken at connect().
_SO_PEERGROUPS = 59


def peer_groups(sock: socket.socket) -> frozenset[int] | None:
    """Every group of a connected Unix socket's peer as the kernel took them when it
    connected (not as a reused PID shows them later); None where the machine cannot tell."""
    try:
        if sys.platform.startswith("linux"):
            for size in (4 * 256, 4 * 65536):
                try:
                    raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
                except OSError as e:
                    if e.errno == errno.ERANGE:
                        continue
                    raise
                return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
        if sys.platform == "darwin":  # pragma: no cover - macOS only
            raw = sock.getsockopt(0, 0x001, struct.calcsize("IIh2x16I"))
            _version, _uid, ngroups, *groups = struct.unpack("IIh2x16I", raw)
            return frozenset(groups[: max(0, min(ngroups, 16))])
    except OSError:
        pass
    return None


class ListenerError(OSError):
    """The socket the agent reached is served by someone it must not forward to; the
    message is the one for the client (``agent.core.desktop.upstream_peer_problem``).
    ``listener``: what listens there, when it is the user's but not Docker Desktop
    (``agent.core.desktop.listener_program_problem``), for the bypass monitor's notice;
    ``held``: found by :func:`check_holders`, which the shim's own connections do not
    make (so their passing does not clear it)."""

    def __init__(self, *args: object, listener: str | None = None, held: bool = False) -> None:
        super().__init__(*args)
        self.listener = listener
        self.held = held


def check_listener(
    sock: socket.socket,
    path: object,
    expected_uid: int,
    executables: Collection[str] | None = None,
) -> None:
    """Raise ``ListenerError`` unless the process listening at the other end of ``sock``
    (a connected Unix socket) runs as ``expected_uid``: the kernel's credentials of the
    listener, taken when it called ``listen()``. With ``executables`` (Docker Desktop
    mode's ``desktop_executables``), that process must also run one of them, from a file
    only root can change: any process of the user's could listen there otherwise."""
    from agent.core.desktop import (  # noqa: PLC0415 - Desktop mode only
        executable_dir_groups,
        listener_program_problem,
        refused_program_message,
        upstream_peer_problem,
    )

    pid, uid, _gid = peer_credentials(sock)
    problem = upstream_peer_problem(str(path), expected_uid, uid)
    if problem is not None:
        raise ListenerError(problem)
    if executables is None:
        return
    from agent.platform.programs import program_of  # noqa: PLC0415 - Desktop mode only

    program = listener_program_problem(
        program_of(pid, executables), executables, executable_dir_groups(sys.platform)
    )
    if program is not None:
        raise ListenerError(
            refused_program_message(str(path), expected_uid, program), listener=program
        )


HOLDERS_CHECKED = sys.platform.startswith("linux")
"""Whether :func:`check_holders` can ask the kernel (Linux's sock_diag and ``/proc``);
elsewhere it checks nothing (docs/deploy/macos.md)."""


def check_holders(
    sock: socket.socket, path: object, expected_uid: int, executables: Collection[str]
) -> None:
    """Raise ``ListenerError`` (``held``) unless every process holding the server's end of
    ``sock`` (a connected unix socket, once the server has accepted it: an answer came)
    and every process holding the socket listening there is ``expected_uid``'s and runs
    one of ``executables`` by :func:`check_listener`'s rule. ``SO_PEERCRED`` names the
    process that called ``listen()``, which may since have handed the socket to another
    and exec'd Desktop's program. A /proc scan: for a connection of the bypass monitor's
    (and doctor's view of it), not for each of the shim's. No-op but on Linux."""
    if not HOLDERS_CHECKED:
        return
    from agent.core.desktop import (  # noqa: PLC0415 - Desktop mode only
        SocketHolder,
        executable_dir_groups,
        refused_program_message,
        socket_holders_problem,
    )
    from agent.platform import unix_diag  # noqa: PLC0415 - Desktop mode only
    from agent.platform.programs import program_of  # noqa: PLC0415 - Desktop mode only

    def refuse(problem: str) -> ListenerError:
        message = refused_program_message(str(path), expected_uid, problem)
        return ListenerError(message, listener=problem, held=True)

    connection = "the connection the agent opened there"
    listening = "the socket listening there"
    try:
        mine = unix_diag.unix_socket(os.fstat(sock.fileno()).st_ino, unix_diag.SHOW_PEER)
        server = mine.peer if mine is not None else None
        accepted = unix_diag.unix_socket(server, unix_diag.SHOW_VFS) if server else None
        listeners: list[int] = []
        if accepted is not None and accepted.vfs_ino:
            # An accepted socket carries its listener's file: the listener is found by it,
            # not by the path, which the user may have changed since.
            bound = (accepted.vfs_ino, accepted.vfs_dev)
            states = 1 << unix_diag.STATE_LISTEN
            listeners = [
                s.inode
                for s in unix_diag.dump_unix_sockets(states, unix_diag.SHOW_VFS)
                if (s.vfs_ino, s.vfs_dev) == bound
            ]
        scan = unix_diag.socket_holders({i for i in (server, *listeners) if i})
    except OSError as e:
        raise refuse(f"a socket the agent cannot examine ({_errno_name(e)})") from e
    if not server:
        raise refuse(f"no process the agent can find: the kernel names no end of {connection}")
    dir_groups = executable_dir_groups(sys.platform)
    for what, inodes in ((connection, [server]), (listening, listeners)):
        holders = [
            SocketHolder(program_of(pid, executables), unix_diag.process_uids(pid))
            for inode in inodes
            for pid in scan.holders.get(inode, [])
        ]
        problem = socket_holders_problem(
            what, holders, expected_uid, executables, dir_groups, unexamined=scan.unexamined
        )
        if problem is not None:
            raise refuse(problem)


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error))


def _user(uid: int | None) -> str | None:
    if uid is None:
        return None
    if sys.platform == "win32":  # no uids there: a pipe's client is named by its SID
        return str(uid)
    else:
        import pwd  # noqa: PLC0415 - POSIX only: the module imports on Windows

        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)


def process_ids(process: Any) -> tuple[int | None, int | None]:
    """A ``psutil.Process``'s real uid and gid; (None, None) on Windows, which has
    neither (psutil.Error as ``uids()`` raises it)."""
    if sys.platform == "win32":
        return None, None
    else:
        return process.uids().real, process.gids().real


def contained(pid: int) -> bool:
    """Whether ``pid`` runs in another PID namespace than the agent (a container)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


def describe_peer(pid: int | None, uid: int | None, gid: int | None) -> PeerInfo:
    """Everything we can learn about the client now; never raises."""
    base = PeerInfo(pid=pid, uid=uid, gid=gid, user=_user(uid))
    if pid is None or pid <= 0:
        return base
    inside = contained(pid)
    import psutil  # noqa: PLC0415 - loaded on the first decision, not at agent start

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            exe = _safe(proc.exe)
            cmdline = redact_command_line(_safe(proc.cmdline) or [])
        parents = []
        for parent in proc.parents()[:MAX_PARENTS]:
            try:
                parents.append(ProcessSummary(parent.pid, parent.name(), _safe(parent.exe)))
            except psutil.Error:
                parents.append(ProcessSummary(parent.pid))
    except psutil.Error:
        return replace(base, contained=inside)
    return PeerInfo(
        pid=pid,
        uid=uid,
        gid=gid,
        user=base.user,
        name=name,
        executable=exe,
        command_line=cmdline,
        parents=tuple(parents),
        contained=inside,
    )


_T = TypeVar("_T")


def _safe(getter: Callable[[], _T]) -> _T | None:
    import psutil  # noqa: PLC0415

    try:
        return getter()
    except psutil.Error:
        return None
