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

__all__ = ["CONTROL_SOLVE_ENDPOINT", "BuildRegistry", "PendingBuild"]

#: The audit endpoint of a build started by ``Control/Solve`` (gateway calls name it).
CONTROL_SOLVE_ENDPOINT = "POST /grpc Control/Solve"


@dataclass(frozen=True)
class PendingBuild:
    """One build the daemon is running: what it reads, and who asked for it."""

    inputs: BuildInputs
    peer: PeerInfo
    endpoint: str  # "POST /build" or "POST /grpc Control/Solve": the audit endpoint

    @property
    def reads_dockerfile(self) -> bool:
        """Whether its frontend reads a Dockerfile from the session. A ``Control/Solve``
        with no frontend and no LLB only opens a build for a client-side gateway (buildx),
        whose own ``LLBBridge/Solve`` calls are registered in turn."""
        inputs = self.inputs
        return not inputs.gateway_forwarding and not inputs.llb_images


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
            if b.reads_dockerfile
            and b.inputs.dockerfile_session == session
            and b.inputs.dockerfile_local == local
        ]

    def by_ref(self, ref: str) -> PendingBuild | None:
        """The ``Control/Solve`` in flight whose ``Ref`` (the build id) is ``ref``; None
        when there is none, or more than one (which build a call is for is then unknown)."""
        found = [
            b
            for b in self._builds.values()
            if ref and b.inputs.ref == ref and b.endpoint == CONTROL_SOLVE_ENDPOINT
        ]
        return found[0] if len(found) == 1 else None

    def uses_session(self, session: str) -> bool:
        """Whether any build in flight reads its Dockerfile from ``session``."""
        return any(
            b.reads_dockerfile and b.inputs.dockerfile_session == session
            for b in self._builds.values()
        )
