"""Docker Desktop mode's rules: which users get a shim endpoint, and whom it trusts.

In ``enforcement: desktop`` the agent runs as root and serves one endpoint per user
logged in at the machine, in front of that user's own Docker Desktop socket. The agent is
root and the Desktop socket's path is the user's to change, so the rules that keep it
from being anyone's deputy live here, as values: the platform edge
(``agent.platform.desktop_users``) observes sessions, this module plans the endpoints,
and the daemon (``agent.daemon.desktop``) applies the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.core.inspection.host_access import clean_path

__all__ = [
    "DESKTOP_CONTEXTS",
    "DESKTOP_SOCKETS",
    "LINUX_MIN_UID",
    "EndpointPlan",
    "SessionUser",
    "client_allowed",
    "desktop_socket",
    "plan_endpoints",
    "should_select_context",
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
