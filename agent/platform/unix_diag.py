"""The kernel's view of unix sockets: Linux's sock_diag netlink interface (what ``ss -x``
reads) and the processes holding a socket, from ``/proc/PID/fd``.

Two users: the bypass monitor's scan of the processes connected to a daemon socket
(``agent.daemon.bypass.socket_clients``), and Docker Desktop mode's holder check
(``agent.platform.peer.check_holders``): ``SO_PEERCRED`` names the process that called
``listen()``, so who actually holds the connection the agent opened, and the listening
socket, is asked of the kernel here.

The requests and answers are bytes built and parsed by pure functions (tested without a
kernel); the socket and ``/proc`` calls are the thin edge. Linux only: elsewhere there is
no sock_diag and no ``/proc`` (callers check ``sys.platform`` first).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = [
    "SHOW_NAME",
    "SHOW_PEER",
    "SHOW_VFS",
    "STATE_ESTABLISHED",
    "STATE_LISTEN",
    "HolderScan",
    "UnixSocket",
    "diag_request",
    "dump_unix_sockets",
    "parse_diag_msg",
    "parse_diag_replies",
    "process_uids",
    "socket_holders",
    "unix_socket",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
SHOW_NAME = 0x1  # UDIAG_SHOW_NAME
SHOW_VFS = 0x2  # UDIAG_SHOW_VFS
SHOW_PEER = 0x4  # UDIAG_SHOW_PEER
_UNIX_DIAG_NAME = 0
_UNIX_DIAG_VFS = 1
_UNIX_DIAG_PEER = 2
STATE_ESTABLISHED = 1  # TCP_ESTABLISHED: a connected stream socket
STATE_LISTEN = 10  # TCP_LISTEN
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: an exact lookup by inode alone
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBHIIIII")  # struct unix_diag_req
_MESSAGE = struct.Struct("=BBBBIII")  # struct unix_diag_msg (family .. cookie[2])


@dataclass(frozen=True)
class UnixSocket:
    """One unix socket as sock_diag reported it. ``vfs_ino``/``vfs_dev``: the file it is
    bound to (an accepted socket reports its listener's), ``vfs_dev`` in the kernel's
    encoding (``MAJOR << 20 | MINOR``, not ``st_dev``'s); ``peer``: the other end's inode."""

    inode: int
    state: int
    name: str | None = None
    peer: int | None = None
    vfs_ino: int | None = None
    vfs_dev: int | None = None


def diag_request(*, show: int, states: int = 0, inode: int = 0, seq: int = 1) -> bytes:
    """A ``SOCK_DIAG_BY_FAMILY`` request for unix sockets: a dump of those in ``states``
    (a bit per state), or with ``inode`` the one socket of that inode."""
    body = _REQUEST.pack(
        getattr(socket, "AF_UNIX", 1),  # getattr: mypy --platform win32 (never run there)
        0,
        0,
        states,
        inode,
        show,
        _NO_COOKIE,
        _NO_COOKIE,
    )
    flags = NLM_F_REQUEST if inode else NLM_F_REQUEST | NLM_F_DUMP
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def parse_diag_msg(body: bytes) -> UnixSocket:
    """A ``unix_diag_msg`` and its attributes (the payload of one netlink message)."""
    _family, _type, state, _pad, inode, _c0, _c1 = _MESSAGE.unpack_from(body, 0)
    name: str | None = None
    peer: int | None = None
    vfs_ino: int | None = None
    vfs_dev: int | None = None
    pos = _MESSAGE.size
    while pos + 4 <= len(body):
        rta_len, rta_type = struct.unpack_from("=HH", body, pos)
        if rta_len < 4:
            break
        payload = body[pos + 4 : pos + rta_len]
        if rta_type == _UNIX_DIAG_NAME:
            name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif rta_type == _UNIX_DIAG_PEER and len(payload) >= 4:
            peer = struct.unpack_from("=I", payload)[0]
        elif rta_type == _UNIX_DIAG_VFS and len(payload) >= 8:
            vfs_ino, vfs_dev = struct.unpack_from("=II", payload)
        elif rta_type == _UNIX_DIAG_VFS and len(payload) >= 4:
            vfs_ino = struct.unpack_from("=I", payload)[0]
        pos += (rta_len + 3) & ~3
    return UnixSocket(inode, state, name, peer, vfs_ino, vfs_dev)


def parse_diag_replies(data: bytes) -> tuple[list[UnixSocket], bool]:
    """The sockets in one datagram of netlink answers, and whether the answer is complete
    (``NLMSG_DONE``, or a datagram cut short). An ``NLMSG_ERROR`` is an ``OSError`` with
    the kernel's errno (``ENOENT``: no socket of that inode in this network namespace)."""
    out: list[UnixSocket] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            if code == 0:  # an acknowledgement, not an error
                return out, True
            raise OSError(-code, f"sock_diag: {os.strerror(-code)}")
        if length - _HEADER.size >= _MESSAGE.size:
            out.append(parse_diag_msg(data[offset + _HEADER.size : offset + length]))
        offset += (length + 3) & ~3
    return out, False


def _ask(request: bytes, *, exact: bool) -> list[UnixSocket]:
    # getattr: Linux has AF_NETLINK, macOS (mypy --platform darwin) not; Linux only.
    sock = socket.socket(getattr(socket, "AF_NETLINK", -1), socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(5.0)
        sock.send(request)
        out: list[UnixSocket] = []
        while True:
            found, done = parse_diag_replies(sock.recv(1 << 16))
            out += found
            if done or exact:  # an exact lookup answers one message, without DONE
                return out
    finally:
        sock.close()


def dump_unix_sockets(states: int, show: int) -> list[UnixSocket]:
    """Every unix socket in ``states`` (a bit per state) of this network namespace, with
    the attributes ``show`` asks for. Raises OSError where sock_diag is unavailable."""
    return _ask(diag_request(show=show, states=states), exact=False)


def unix_socket(inode: int, show: int) -> UnixSocket | None:
    """The unix socket of ``inode`` in this network namespace (None: none there)."""
    try:
        found = _ask(diag_request(show=show, inode=inode), exact=True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return next((s for s in found if s.inode == inode), None)


@dataclass(frozen=True)
class HolderScan:
    """Who holds which socket: ``holders`` by inode (pids, ascending); ``unexamined``:
    processes whose descriptors could not be read, and why (any of them may hold one)."""

    holders: dict[int, list[int]] = field(default_factory=dict)
    unexamined: tuple[tuple[int, str], ...] = ()


_GONE = (errno.ENOENT, errno.ESRCH)


def socket_holders(inodes: Collection[int], *, first_only: bool = False) -> HolderScan:
    """The processes with a descriptor on each socket of ``inodes``, by reading every
    process's ``/proc/PID/fd`` links (root's CAP_SYS_PTRACE reads other users'); with
    ``first_only``, one per inode and the scan stops once each has one. Threads with a
    descriptor table of their own (``/proc/PID/task/TID/fd``) are not read."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    holders: dict[int, list[int]] = {}
    unexamined: list[tuple[int, str]] = []
    if not wanted:
        return HolderScan()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError as e:
            if e.errno not in _GONE:
                unexamined.append((pid, errno.errorcode.get(e.errno or 0, str(e.errno))))
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue  # closed meanwhile
                inode = wanted.get(target)
                if inode is None:
                    continue
                pids = holders.setdefault(inode, [])
                if pid not in pids and not (first_only and pids):
                    pids.append(pid)
        if first_only and len(holders) == len(wanted):
            break
    return HolderScan({i: sorted(p) for i, p in holders.items()}, tuple(unexamined))


def process_uids(pid: int) -> frozenset[int]:
    """The real, effective, saved and file-system uids of ``pid`` (``/proc/PID/status``;
    empty: the process is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return frozenset(int(u) for u in line.split()[1:5])
    except (OSError, ValueError):
        pass
    return frozenset()
