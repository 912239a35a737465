"""The client on the other end of a socket, as a value.

``agent.platform.peer`` fills it in from the kernel and psutil (its command line through
``agent.core.redaction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PeerInfo", "Principal", "ProcessSummary", "principal_of"]

Principal = int | str
"""Whom a client is attributed to: a uid on Linux and macOS, a SID string on Windows
(where ``PeerInfo.uid`` is None and ``PeerInfo.user`` is the SID)."""


@dataclass(frozen=True, slots=True)
class ProcessSummary:
    pid: int
    name: str | None = None
    executable: str | None = None


@dataclass(frozen=True)
class PeerInfo:
    """The client process on the other end of the socket."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    name: str | None = None
    executable: str | None = None
    command_line: tuple[str, ...] = ()
    parents: tuple[ProcessSummary, ...] = field(default=())
    #: The client runs inside a container (another PID namespace than the agent's): its
    #: uid is whatever the container was started with, so it is nobody's sign-in.
    contained: bool = False


def principal_of(peer: PeerInfo) -> Principal | None:
    """The client's uid, or on Windows (no uid) its user's SID: the key sign-ins and the
    desktop endpoint's client rule use. Where a uid is known it is the answer, so Linux
    and macOS keep their uid-keyed behaviour exactly (``user`` is then the uid's name)."""
    if peer.uid is not None:
        return peer.uid
    return peer.user
