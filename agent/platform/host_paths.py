"""Host paths as the Docker daemon's side of the machine sees them, and who asks.

``containers.host_access`` judges a bind by where its path leads when the daemon mounts
it. The agent may see another file system than the daemon: systemd's ``PrivateTmp=``
or ``ProtectHome=``, a test's private mount namespace. So on Linux a path is resolved
one component at a time *beneath the root of the process serving the daemon's socket*
(``/proc/PID/root``, opened ``O_PATH``; the PID from ``SO_PEERCRED``): the lookups walk
that process's mounts, and an absolute link starts again at its root. Where that cannot
be opened (macOS, no ptrace access) the agent's own view is used.

Blocking file system calls: the shim runs these in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from agent.core import strict_json
from agent.core.dockerd_hosts import dockerd_paths, flag_values
from agent.core.inspection.host_access import PathFacts, Requester
from agent.platform.files import FileTooLargeError, read_capped
from agent.platform.peer import contained, peer_credentials
from agent.platform.unix_sockets import unix_stream_socket

__all__ = [
    "DAEMON_JSON",
    "MAX_LINKS",
    "NO_SOCKET",
    "PathFacts",
    "daemon_paths",
    "examine",
    "requester",
    "user_reach_problem",
]

#: dockerd's configuration file unless ``--config-file`` names another.
DAEMON_JSON = "/etc/docker/daemon.json"

#: ``user_reach_problem`` when nothing is at the path (Docker Desktop is not running).
NO_SOCKET = "no such socket"
#: Links followed in one path before it is judged as written (the kernel's limit).
MAX_LINKS = 40


def _listener_pid(daemon: Path) -> int | None:
    """The PID of the process listening on the unix socket ``daemon`` (SO_PEERCRED)."""
    try:
        with unix_stream_socket() as sock:
            sock.settimeout(2.0)
            sock.connect(str(daemon))
            pid, _uid, _gid = peer_credentials(sock)
    except OSError:
        return None
    return pid or None


def _listener_root(daemon: Path | None) -> int | None:
    """An ``O_PATH`` descriptor of the root directory of the process listening on
    ``daemon``, or None (not Linux, nothing listening, no access)."""
    if daemon is None:
        return None
    if sys.platform.startswith("linux"):
        pid = _listener_pid(daemon)
        # Only a root daemon's view: a listener of a user's (Docker Desktop mode) may run
        # in a mount namespace of their making, which shows whatever they like.
        if pid and _owner(pid) == 0:
            try:
                flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
                return os.open(f"/proc/{pid}/root", flags)
            except OSError:
                return None
    return None


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def user_reach_problem(path: str, uid: int) -> str | None:
    """Why user ``uid`` could not connect to the socket ``path`` themselves (every
    directory above searchable by them, the socket theirs), or None. The agent connects
    to a user's Docker Desktop socket with root's rights: asked first, so that root never
    reaches, for a user, a socket they could not (nor tells them what listens there)."""
    if sys.platform == "win32":
        return "no unix sockets here"
    else:  # the platform check mypy reads
        import pwd  # noqa: PLC0415 - POSIX only: the module imports on Windows

        try:
            entry = pwd.getpwuid(uid)
            groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
            facts = _walk(path, None)
        except (KeyError, OSError, ValueError):
            return "the socket cannot be looked at"
        return _reach_problem(facts, Requester(uid, groups))


def _reach_problem(facts: PathFacts, who: Requester) -> str | None:
    for mode, owner, group in facts.chain[:-1]:
        if not _may_search(mode, owner, group, who):
            return "a directory on the way is closed to the user"
    if not facts.exists:
        return NO_SOCKET
    mode, owner, _group = facts.chain[-1]
    if owner != who.uid:
        return "not the user's own socket"
    if not stat.S_ISSOCK(mode):
        return NO_SOCKET  # a file of theirs, no socket: nothing serves there
    return None


def _may_search(mode: int, owner: int, group: int, who: Requester) -> bool:
    if who.uid == owner:
        return bool(mode & 0o100)
    if group in who.gids:
        return bool(mode & 0o010)
    return bool(mode & 0o001)


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode(errors="replace").split("\0") if a]


def _dockerd_pids() -> list[int]:
    """Every running dockerd: under socket activation the socket's listener is systemd,
    whose command line names none of dockerd's directories."""
    import psutil  # noqa: PLC0415 - loaded on the first bind judged, not at agent start

    pids = []
    for process in psutil.process_iter(["name"]):
        if process.info.get("name") == "dockerd":
            pids.append(process.pid)
    return pids


def daemon_paths(daemon: Path) -> list[str]:
    """Where the process serving ``daemon`` and every running dockerd keep their state
    and sockets, from their command lines and ``daemon.json``
    (``agent.core.dockerd_hosts.dockerd_paths``); empty where the machine does not show
    them. Walks the process table: the caller caches it."""
    if sys.platform.startswith("linux"):
        return _linux_daemon_paths(daemon)
    else:  # the platform check mypy reads
        return []


def _linux_daemon_paths(daemon: Path) -> list[str]:
    pids = dict.fromkeys([p for p in [_listener_pid(daemon)] if p])
    with contextlib.suppress(Exception):  # psutil's errors are its own classes
        pids.update(dict.fromkeys(_dockerd_pids()))
    out: list[str] = []
    for pid in pids:
        argv = _command_line(pid)
        if not argv:
            continue
        config_file = next(iter(flag_values(argv, ("--config-file",))), DAEMON_JSON)
        config: dict[str, object] | None = None
        with contextlib.suppress(OSError, ValueError, FileTooLargeError):
            value = strict_json.loads(read_capped(Path(f"/proc/{pid}/root{config_file}"), 1 << 20))
            config = value if isinstance(value, dict) else None
        out += [p for p in dockerd_paths(argv, config) if p not in out]
    return out


def _lstat(rel: str, root: int | None) -> os.stat_result:
    if root is None:
        return os.lstat("/" + rel)
    return os.stat(rel or ".", dir_fd=root, follow_symlinks=False)


def _readlink(rel: str, root: int | None) -> str:
    return os.readlink("/" + rel) if root is None else os.readlink(rel, dir_fd=root)


def _walk(path: str, root: int | None) -> PathFacts:
    """Resolve ``path`` as the kernel does, beneath ``root``; a missing part ends the
    look-ups and the rest is kept as written (``..`` folded), as ``realpath`` does."""
    pending = [p for p in reversed(path.split("/")) if p]
    parts: list[str] = []
    top = _lstat("", root)
    chain = [(top.st_mode, top.st_uid, top.st_gid)]
    links = 0
    missing = False
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if parts:
                parts.pop()
                if not missing:
                    chain.pop()
            continue
        if missing:
            parts.append(part)
            continue
        rel = "/".join([*parts, part])
        try:
            st = _lstat(rel, root)
        except (FileNotFoundError, NotADirectoryError):
            missing = True
            parts.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            target = _readlink(rel, root) if links <= MAX_LINKS else ""
            if not target:  # a loop, or an empty link: the mount fails; judged as written
                missing = True
                parts.append(part)
                continue
            if target.startswith("/"):
                parts = []
                chain = chain[:1]
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        parts.append(part)
        chain.append((st.st_mode, st.st_uid, st.st_gid))
    return PathFacts("/" + "/".join(parts), tuple(chain), exists=not missing)


def examine(paths: Iterable[str], *, daemon: Path | None) -> dict[str, PathFacts]:
    """Each absolute path's facts, beneath the root of the process serving ``daemon``
    (or the agent's own root); a path that cannot be looked at is left out (judged as
    written, with no one's access)."""
    root = _listener_root(daemon)
    out: dict[str, PathFacts] = {}
    try:
        for path in paths:
            if not path.startswith("/") or "\0" in path:
                continue
            with contextlib.suppress(OSError, ValueError):
                out[path] = _walk(path, root)
    finally:
        if root is not None:
            os.close(root)
    return out


def _proc_groups(pid: int) -> frozenset[int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return None


def requester(
    pid: int | None,
    uid: int | None,
    gid: int | None,
    *,
    inside: bool | None = None,
    groups: frozenset[int] | None = None,
) -> Requester | None:
    """The client's uid and every group it has (the process's own list where the
    machine shows it, else the user database's); None when the uid is unknown.
    ``inside``: whether it runs in a container, when already known; ``groups``: the
    groups the kernel took at connect() (``SO_PEERGROUPS``), when known."""
    if uid is None:
        return None
    if groups is None and pid:
        groups = _proc_groups(pid)
    if groups is None:
        groups = frozenset()
        if sys.platform != "win32":  # Windows has no uids or groups of them
            with contextlib.suppress(KeyError, OSError):
                import pwd  # noqa: PLC0415 - POSIX only: the module imports on Windows

                name = pwd.getpwuid(uid).pw_name
                groups = frozenset(os.getgrouplist(name, gid if gid is not None else -1))
    if gid is not None:
        groups |= {gid}
    if inside is None:
        inside = bool(pid) and contained(pid or 0)
    return Requester(uid, groups, contained=inside)
