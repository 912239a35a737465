"""The BuildKit builds in flight, so a session's file sync can be tied to its build.

A build names its session (``POST /build?version=2&session=ID``, or ``Session`` in a
``Control/Solve``); the daemon later asks that session for the Dockerfile. The shim
registers each build here before the daemon sees it and removes it when its request
ends, so the tunnel that carries the session knows which builds a Dockerfile is for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from agent.core.inspection.buildkit.inputs import BuildInputs
from agent.core.peer import PeerInfo

__all__ = ["BuildRegistry", "PendingBuild"]


@dataclass(frozen=True)
class PendingBuild:
    """One build the daemon is running: what it reads, and who asked for it."""

    inputs: BuildInputs
    peer: PeerInfo
    endpoint: str  # "POST /build" or "POST /grpc Control/Solve": the audit endpoint


class BuildRegistry:
    """Builds in flight by the session and local that serve their Dockerfile."""

    def __init__(self) -> None:
        self._builds: dict[int, PendingBuild] = {}
        self._tokens = itertools.count(1)

    def add(self, build: PendingBuild) -> int:
        token = next(self._tokens)
        self._builds[token] = build
        return token

    def remove(self, token: int) -> None:
        self._builds.pop(token, None)

    def __len__(self) -> int:
        return len(self._builds)

    def reading(self, session: str, local: str) -> list[PendingBuild]:
        """The builds whose Dockerfile comes from ``local`` of ``session``."""
        return [
            b
            for b in self._builds.values()
            if b.inputs.dockerfile_session == session and b.inputs.dockerfile_local == local
        ]

    def uses_session(self, session: str) -> bool:
        """Whether any build in flight reads its Dockerfile from ``session``."""
        return any(b.inputs.dockerfile_session == session for b in self._builds.values())
