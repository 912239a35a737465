"""Docker Desktop mode's rules: which users get a shim endpoint, and whom it trusts.

In ``enforcement: desktop`` the agent runs as root and serves one endpoint per user
logged in at the machine, in front of that user's own Docker Desktop socket. The agent is
root and the Desktop socket's path is the user's to change, so the rules that keep it
from being anyone's deputy live here, as values: the platform edge
(``agent.platform.desktop_users``) observes sessions, this module plans the endpoints,
and the daemon (``agent.daemon.desktop``) applies the plan.
"""

from __future__ import annotations

import stat
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.core.inspection.host_access import clean_path

__all__ = [
    "DESKTOP_CONTEXTS",
    "DESKTOP_EXECUTABLES",
    "DESKTOP_SOCKETS",
    "EXECUTABLE_DIR_GROUPS",
    "LINUX_MIN_UID",
    "EndpointPlan",
    "FileFacts",
    "ListenerProgram",
    "SessionUser",
    "SocketHolder",
    "client_allowed",
    "desktop_executables",
    "desktop_socket",
    "executable_dir_groups",
    "listener_program_problem",
    "plan_endpoints",
    "refused_program_message",
    "should_select_context",
    "socket_holders_problem",
    "unreachable_upstream_problem",
    "upstream_peer_problem",
]

DESKTOP_SOCKETS: Mapping[str, str] = {
    "darwin": ".docker/run/docker.sock",
    "linux": ".docker/desktop/docker.sock",
}
"""Where Docker Desktop listens for each user, relative to the user's home: macOS since
Desktop 4.13 (``/var/run/docker.sock`` is only an optional link to it), Linux always
(Desktop for Linux never binds ``/var/run/docker.sock``)."""

DESKTOP_CONTEXTS = frozenset({"desktop-linux", "desktop-windows", "default"})
"""The contexts Docker Desktop creates (and the CLI's own default): selecting one of them
means "Docker Desktop directly", which Pullgate's context replaces."""

DESKTOP_EXECUTABLES: Mapping[str, tuple[str, ...]] = {
    "darwin": ("/Applications/Docker.app/Contents/MacOS/com.docker.backend",),
    "linux": ("/opt/docker-desktop/bin/com.docker.backend",),
}
"""The programs that may serve a user's Desktop socket when ``desktop_executables`` is
not set: Docker Desktop's backend, the process that listens on that socket (and the one
``ps`` shows as Docker Desktop's main process), where Docker's installers put it."""

EXECUTABLE_DIR_GROUPS: Mapping[str, frozenset[int]] = {
    "darwin": frozenset({0, 80}),
    "linux": frozenset({0}),
}
"""Groups that may write a directory above Desktop's executable: root's (wheel), and on
macOS admin (80), whose members may write ``/Applications`` (root:admin 0775) and may
also become root with sudo, which no check of the agent's outlasts."""

LINUX_MIN_UID = 1000
"""``UID_MIN`` of login.defs on Debian, Ubuntu and Fedora: below it are system users,
which never run Docker Desktop (it needs a graphical session)."""


@dataclass(frozen=True)
class SessionUser:
    """A user seen logged in: on the console (macOS) or with a logind session (Linux)."""

    uid: int
    name: str
    home: str  # the passwd entry's home directory


@dataclass(frozen=True)
class EndpointPlan:
    """One user's endpoint: where the agent listens for them and where Desktop listens."""

    uid: int
    user: str
    home: str
    listen: str  # <users_dir>/<uid>/docker.sock, root's directory, the user's socket
    upstream: str  # the user's Docker Desktop socket (a path the user controls)


def desktop_socket(home: str, platform: str) -> str:
    """The Docker Desktop socket of a user whose home is ``home``."""
    relative = DESKTOP_SOCKETS.get("darwin" if platform == "darwin" else "linux")
    assert relative is not None
    return str(PurePosixPath(home) / relative)


def plan_endpoints(
    users: Iterable[SessionUser],
    users_dir: str,
    platform: str,
    *,
    min_uid: int = LINUX_MIN_UID,
) -> dict[int, EndpointPlan]:
    """The endpoints to serve for the users seen: one per uid, by uid.

    Root never gets one (root reaches any daemon anyway, and the agent will not forward
    to a socket root "owns" in a user's home). On Linux, uids below ``min_uid`` are system
    users (gdm, sddm). A user without an absolute home has no Desktop socket to find.
    """
    plans: dict[int, EndpointPlan] = {}
    for user in users:
        if user.uid <= 0 or user.uid in plans:
            continue
        if platform != "darwin" and user.uid < min_uid:
            continue
        if not user.home.startswith("/") or user.home == "/":
            continue
        listen = PurePosixPath(users_dir) / str(user.uid) / "docker.sock"
        plans[user.uid] = EndpointPlan(
            uid=user.uid,
            user=user.name,
            home=user.home,
            listen=str(listen),
            upstream=desktop_socket(user.home, platform),
        )
    return plans


def client_allowed(endpoint_uid: int, client_uid: int | None) -> bool:
    """Who may use a user's endpoint: that user, and root (who could anyway)."""
    return client_uid is not None and client_uid in (endpoint_uid, 0)


def upstream_peer_problem(upstream: str, expected_uid: int, listener_uid: int | None) -> str | None:
    """Why the agent must not forward to the socket it reached at ``upstream`` (None: it
    may): the listener must be the endpoint's user, i.e. that user's Docker Desktop.

    The path is in the user's home, so the user decides what it leads to. If it led to a
    socket that root or another user listens on (a link to dockerd's root-only socket,
    another user's Desktop), the agent — root — would carry the user's requests there:
    a confused deputy. The listener's uid comes from the kernel, checked after connecting,
    so swapping the link between a check and the connect does not help.
    """
    if listener_uid == expected_uid:
        return None
    who = "an unknown user" if listener_uid is None else f"uid {listener_uid}"
    if listener_uid == 0:
        who = "root"
    return (
        f"pullgate: refusing to forward to unix://{upstream}: the socket there is served by "
        f"{who}, not by uid {expected_uid}'s own Docker Desktop. This endpoint forwards only "
        "to the Docker Desktop of the user it serves; a link from that path to another "
        "daemon's socket is not followed. Remove it and restart Docker Desktop, or ask "
        "your IT administrator (`pullgate doctor`)."
    )


def desktop_executables(platform: str) -> tuple[str, ...]:
    """The default ``desktop_executables`` of ``platform``."""
    return DESKTOP_EXECUTABLES["darwin" if platform == "darwin" else "linux"]


def executable_dir_groups(platform: str) -> frozenset[int]:
    """The groups whose write access to a directory above Desktop's executable is
    accepted on ``platform`` (:data:`EXECUTABLE_DIR_GROUPS`)."""
    return EXECUTABLE_DIR_GROUPS["darwin" if platform == "darwin" else "linux"]


@dataclass(frozen=True)
class FileFacts:
    """A file or directory as ``stat`` or ``lstat`` saw it: what it is, who may change it,
    and which inode it is (to tell the file a process runs from the one at its path)."""

    path: str
    mode: int  # st_mode, file type included
    uid: int
    gid: int
    dev: int = 0
    ino: int = 0


@dataclass(frozen=True)
class ListenerProgram:
    """The program behind a socket's listener, as the platform saw it.

    ``pid``: the kernel's (``SO_PEERCRED``, ``LOCAL_PEERPID``); ``path``: its executable
    as the kernel names it (``/proc/PID/exe``, ``proc_pidpath``), None when it could not
    be read (``unreadable`` says why); ``deleted``: Linux's "(deleted)", the file it was
    started from is gone or replaced; ``running``: the file the process runs (Linux: the
    open executable's inode; macOS: what is at ``path``); ``at_path``: what is at
    ``path`` now in the agent's view (None: nothing); ``parents``: every directory above
    ``path`` as ``lstat`` saw it, nearest first, ending with ``/``.
    """

    pid: int | None
    path: str | None = None
    deleted: bool = False
    running: FileFacts | None = None
    at_path: FileFacts | None = None
    parents: tuple[FileFacts, ...] = ()
    unreadable: str | None = None


def listener_program_problem(
    program: ListenerProgram, allowed: Collection[str], dir_groups: frozenset[int]
) -> str | None:
    """Why the program listening on a user's Desktop socket is not Docker Desktop's own
    (None: it is), as the words after "served by".

    The listener's uid is the user's whatever runs there, and any process of the user's
    at that path can tell the agent's connections from their own (a silent ``/events``
    for the bypass monitor, while they pull through another path to the same daemon).
    So it must also run one of ``allowed`` (``desktop_executables``), from a file no user
    can change: root's, written by no group or others, in directories root owns that
    only ``dir_groups`` may write besides (a sticky directory's entries are their
    owners'). It must be the file now at that path (a deleted or replaced binary, or
    another mount namespace's file of that name, is not), which stops a user's own
    copy, however named.
    """
    if program.pid is None or program.path is None:
        return f"a process the agent cannot identify ({program.unreadable or 'no pid'})"
    who = f"{program.path} (pid {program.pid})"
    if program.path not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        return f"{who}, which is not Docker Desktop (desktop_executables: {listed})"
    if program.deleted:
        return f"{who}, started from a file that has since been deleted or replaced"
    running, at_path = program.running, program.at_path
    if (
        running is None
        or at_path is None
        or (running.dev, running.ino) != (at_path.dev, at_path.ino)
    ):
        return f"{who}, which does not run the file now at {program.path}"
    expected = [str(p) for p in PurePosixPath(program.path).parents]
    if (
        not PurePosixPath(program.path).is_absolute()
        or [p.path for p in program.parents] != expected
    ):
        return f"{who}, whose directories could not all be examined"
    changeable = _changeable(running, dir_groups, directory=False)
    for parent in program.parents:
        if changeable is not None:
            break
        changeable = _changeable(parent, dir_groups, directory=True)
    if changeable is not None:
        return f"{who}, which a user could have changed: {changeable}"
    return None


@dataclass(frozen=True)
class SocketHolder:
    """A process with a descriptor on a socket (Linux: ``/proc/PID/fd``): its program,
    and its real, effective, saved and file-system uids (empty: not read)."""

    program: ListenerProgram
    uids: frozenset[int] = frozenset()


def socket_holders_problem(
    what: str,
    holders: Sequence[SocketHolder],
    expected_uid: int,
    allowed: Collection[str],
    dir_groups: frozenset[int],
    *,
    unexamined: Sequence[tuple[int, str]] = (),
) -> str | None:
    """Why the processes holding ``what`` (the connection the agent opened to a user's
    Desktop socket, or the socket listening there) are not all Docker Desktop's own
    (None: they are), as the words after "served by".

    The kernel's listener (``SO_PEERCRED``) is the process that called ``listen()``: one
    that listened, handed the socket to a child and then exec'd Desktop's program passes
    :func:`listener_program_problem` while the child serves. So every process holding
    the socket must be the user's and pass that rule too. No holder found (a descriptor
    in flight over ``SCM_RIGHTS``, or in a process the agent could not read) is refused:
    what serves it cannot be told.
    """
    if unexamined:
        shown = ", ".join(f"pid {pid}: {why}" for pid, why in unexamined[:3])
        return f"processes the agent could not examine ({shown}), any of which may hold {what}"
    if not holders:
        return f"no process the agent can find: none holds {what}"
    for holder in sorted(holders, key=lambda h: h.program.pid or 0):
        pid = holder.program.pid
        if holder.uids != {expected_uid}:
            uids = ", ".join(str(u) for u in sorted(holder.uids)) or "unknown"
            return f"pid {pid} (uid {uids}), not a process of uid {expected_uid}'s, holding {what}"
        problem = listener_program_problem(holder.program, allowed, dir_groups)
        if problem is not None:
            return f"{problem}; it holds {what}"
    return None


def _changeable(facts: FileFacts, dir_groups: frozenset[int], *, directory: bool) -> str | None:
    """Why someone but root could change ``facts`` (None: no one can)."""
    kind = stat.S_ISDIR(facts.mode) if directory else stat.S_ISREG(facts.mode)
    if not kind:
        what = "a symbolic link" if stat.S_ISLNK(facts.mode) else "of another type"
        return f"{facts.path} is {what}, not a {'directory' if directory else 'regular file'}"
    if facts.uid != 0:
        return f"{facts.path} is owned by uid {facts.uid}, not root"
    mode = stat.S_IMODE(facts.mode)
    if not directory:
        if mode & 0o022:
            return f"{facts.path} is writable by its group or by others (mode {mode:04o})"
        return None
    if mode & stat.S_ISVTX:
        return None  # entries of a sticky directory can be renamed only by their owners
    if mode & 0o002:
        return f"{facts.path} is writable by anyone (mode {mode:04o})"
    if mode & 0o020 and facts.gid not in dir_groups:
        return f"{facts.path} is writable by group {facts.gid} (mode {mode:04o})"
    return None


def refused_program_message(upstream: str, expected_uid: int, problem: str) -> str:
    """The client's message when the listener at ``upstream`` is the user's but not
    Docker Desktop (``problem``, from :func:`listener_program_problem`)."""
    return (
        f"pullgate: refusing to forward to unix://{upstream}: the socket there is served by "
        f"{problem}. This endpoint forwards only to uid {expected_uid}'s own Docker "
        "Desktop, run from its installation (a file only root can change, listed in the "
        "agent's desktop_executables). Quit what listens there and restart Docker "
        "Desktop, or ask your IT administrator (`pullgate doctor`)."
    )


def unreachable_upstream_problem(upstream: str, expected_uid: int, why: str) -> str:
    """Why the agent will not even connect to ``upstream`` for user ``expected_uid``: the
    path does not lead to a socket of theirs that they could reach themselves (``why``:
    a directory closed to them on the way, or a socket that is not theirs). Asked before
    connecting, so that root never reaches, for a user, what they could not (nor tells
    them what listens where they cannot look)."""
    return (
        f"pullgate: refusing to forward to unix://{upstream}: it does not lead to a socket "
        f"of uid {expected_uid}'s own ({why}). This endpoint forwards only to the Docker "
        "Desktop of the user it serves; a link from that path to another daemon's socket is "
        "not followed. Remove it and restart Docker Desktop, or ask your IT administrator "
        "(`pullgate doctor`)."
    )


def should_select_context(
    current: str | None, current_host: str | None, desktop_host: str, ours: str
) -> bool:
    """Whether the agent makes its context the user's current one (``desktop_context:
    enforce``): when the user is on no context, the default one, one of Docker Desktop's
    own, or any other context that leads straight to their Desktop socket. A context of
    the user's to another engine (a remote or CI host) is theirs to use and is left
    alone; the bypass monitor still reports direct use of the Desktop socket."""
    if current == ours:
        return False
    if current is None or current in DESKTOP_CONTEXTS:
        return True
    return current_host is None or _same_unix_host(current_host, desktop_host)


def _same_unix_host(a: str, b: str) -> bool:
    """Two ``unix://`` hosts naming one path however written (``//``, ``/./``, ``..``)."""
    if not (a.startswith("unix://") and b.startswith("unix://")):
        return a == b
    return clean_path(a.removeprefix("unix://")) == clean_path(b.removeprefix("unix://"))
