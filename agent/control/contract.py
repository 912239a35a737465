"""The control API's contract, shared by the agent's server and its clients (the CLI, the
tray): where the socket (on Windows, the pipe) is, and which events a caller may see,
and how.

No server code here: a client imports this, never ``agent.daemon``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from agent.core.events import DecisionEvent, Event, NoticeEvent
from agent.core.peer import Principal, principal_of
from agent.platform.paths import system_run_dir
from agent.platform.windows import control_pipe

__all__ = [
    "IDENTITY_ACTIONS",
    "SYSTEM_CONTROL_PATH",
    "control_candidates",
    "default_control_path",
    "default_socket_mode",
    "event_name",
    "redacted",
    "redacted_for",
    "redacts",
    "visible_to",
]

SYSTEM_CONTROL_PATH: Final = system_run_dir() / "control.sock"
"""The system agent's: ``/run/pullgate/control.sock``, ``/var/run/pullgate/...`` on macOS."""


def default_control_path(uid: int, env: Mapping[str, str]) -> Path:
    """``SYSTEM_CONTROL_PATH`` for root, else under the user's runtime directory."""
    if uid == 0:
        return SYSTEM_CONTROL_PATH
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return Path(runtime) / "pullgate" / "control.sock"


def default_socket_mode(uid: int) -> int:
    """0666 for the system agent (uid filtering is the access control), else 0600."""
    return 0o666 if uid == 0 else 0o600


def control_candidates(who: Principal, env: Mapping[str, str]) -> list[Path]:
    """Where a client looks for an agent: for a uid, the user's own agent first, then the
    system one; for a SID (Windows, from the client's process token), the control pipe
    the agent's service serves that user, ``\\\\.\\pipe\\pullgate_control_<SID>``, the only
    one (a pipe name is a path on Windows)."""
    if isinstance(who, str):
        return [Path(control_pipe(who))]
    own = default_control_path(who, env)
    return [own] if own == SYSTEM_CONTROL_PATH else [own, SYSTEM_CONTROL_PATH]


IDENTITY_ACTIONS: Final = frozenset({"sign-in", "sign-out", "identity-expired"})
"""Notices about sign-in (``agent.daemon.identities``): their SSE event is ``identity``."""


def event_name(event: Event) -> str:
    """The SSE ``event:`` field: decision | policy | identity | notice | warning."""
    if isinstance(event, NoticeEvent):
        if event.action in IDENTITY_ACTIONS:
            return "identity"
        return "warning" if event.severity == "warning" else "notice"
    return event.type


def visible_to(event: Event, uid: Principal) -> bool:
    """A user sees their own decisions and sign-ins; root sees all; policy and other
    notices are for all. ``uid``: a uid, or on Windows the caller's SID (compared with
    the client's SID, ``principal_of``)."""
    if isinstance(event, DecisionEvent):
        return uid in (0, principal_of(event.peer))
    if isinstance(event, NoticeEvent) and event.action in IDENTITY_ACTIONS:
        return uid == 0 or (event.peer is not None and principal_of(event.peer) == uid)
    return True


def redacts(event: Event, uid: Principal) -> bool:
    """Whether ``uid`` sees ``event`` without its process details (see ``redacted_for``)."""
    return (
        isinstance(event, NoticeEvent)
        and uid != 0
        and (event.peer is not None or bool(event.details))
        and (event.peer is None or principal_of(event.peer) != uid)
    )


def redacted_for(event: Event, uid: Principal) -> dict[str, Any]:
    """The event as ``uid`` may see it: a notice about another user's process (a bypass
    suspicion) keeps its reason but not that process's details."""
    return redacted(event, redacts(event, uid))


def redacted(event: Event, redact: bool) -> dict[str, Any]:
    data = event.to_json()
    if redact:
        data["peer"] = None
        data["details"] = {"redacted": "details are visible to root only"}
    return data
