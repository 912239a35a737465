"""The BuildKit sessions the shim relays and the builds in flight on them.

A build names its session (``POST /build?version=2&session=ID``, ``Session`` in a
``Control/Solve``, ``local-sessionid:`` attributes); the daemon later asks that session for
the Dockerfile. Two facts of the daemon make the session id itself a way around the shim:

- it resolves the id to whichever session connection announced it, even one opened on
  the daemon's socket directly, which the shim never sees;
- it caches a session's synced files under the session id (``session:<local>:`` cache
  keys), so a second build naming the same id, now or after the session is gone, reuses
  a Dockerfile synced for another build without asking for it again.

So the daemon only ever sees ids the shim minted: each session relayed through the shim
gets a fresh random id (``open_session``), every request naming a session is rewritten to
it, and a build naming an id no live session of the shim's announced (or more than one)
is not one the shim can read. Cache reuse is then confined to one relayed session, whose
Dockerfile syncs are remembered (``remember``) for as long as it lives, and every build
that registers on it is decided against them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from dataclasses import dataclass, field

from agent.core.inspection.buildkit.filesync import DockerfileSync
from agent.core.inspection.buildkit.inputs import BuildInputs
from agent.core.peer import PeerInfo

__all__ = ["CONTROL_SOLVE_ENDPOINT", "BuildRegistry", "PendingBuild", "RelayedSession"]

#: The audit endpoint of a build started by ``Control/Solve`` (gateway calls name it).
CONTROL_SOLVE_ENDPOINT = "POST /grpc Control/Solve"


@dataclass(frozen=True)
class PendingBuild:
    """One build the daemon is running: what it reads, and who asked for it.

    ``daemon_sessions``: the minted ids of the sessions that may serve its Dockerfile (the
    build's own, and the one ``local-sessionid:`` names, which frontends before BuildKit
    0.9 ignore).
    """

    inputs: BuildInputs
    peer: PeerInfo
    endpoint: str  # "POST /build" or "POST /grpc Control/Solve": the audit endpoint
    daemon_sessions: tuple[str, ...] = ()

    @property
    def reads_dockerfile(self) -> bool:
        """Whether its frontend reads a Dockerfile from the session. A ``Control/Solve``
        with no frontend and no LLB only opens a build for a client-side gateway (buildx),
        whose own ``LLBBridge/Solve`` calls are registered in turn."""
        inputs = self.inputs
        return not inputs.gateway_forwarding and not inputs.llb_images


@dataclass
class RelayedSession:
    """A session the shim relays: the id its client announced, the one the daemon knows,
    and the Dockerfile syncs decided on it so far, by local name."""

    client_id: str
    daemon_id: str
    syncs: dict[str, list[DockerfileSync]] = field(default_factory=dict)


class BuildRegistry:
    """Relayed sessions by id, and builds in flight by the session that serves them."""

    #: Dockerfile syncs remembered per session and local: a client that starts more
    #: builds on one session than this is refused (its oldest syncs would be forgotten).
    MAX_SYNCS = 64

    def __init__(self) -> None:
        self._builds: dict[int, PendingBuild] = {}
        self._tokens = itertools.count(1)
        self._sessions: dict[str, RelayedSession] = {}  # by daemon id
        self._waiters: list[asyncio.Future[None]] = []
        self.held_bytes = 0  # request bodies the tunnels hold for a decision, all told

    # -- sessions ----------------------------------------------------------------------

    def open_session(self, client_id: str) -> RelayedSession:
        """A session starts through the shim: the id the daemon will know it by."""
        session = RelayedSession(client_id, f"pullgate-{secrets.token_hex(16)}")
        self._sessions[session.daemon_id] = session
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return session

    async def wait_for_session(self, client_id: str, timeout: float) -> str | None:
        """``daemon_id``, waiting up to ``timeout`` seconds for the session to start: a
        client dials its session and sends its build at once, and the build may reach the
        shim first (the daemon waits for the session too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.daemon_id(client_id)
            remaining = deadline - loop.time()
            if found is not None or remaining <= 0:
                return found
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def close_session(self, session: RelayedSession) -> None:
        self._sessions.pop(session.daemon_id, None)

    def daemon_id(self, client_id: str) -> str | None:
        """The minted id of the one live session announced as ``client_id``; None when
        none is (the session is not relayed by the shim) or several are (ambiguous)."""
        found = [s.daemon_id for s in self._sessions.values() if s.client_id == client_id]
        return found[0] if len(found) == 1 and client_id else None

    def remember(self, daemon_id: str, local: str, sync: DockerfileSync) -> bool:
        """Keep a decided Dockerfile sync for the session's later builds; False when the
        session already holds as many as it may (the caller refuses the build)."""
        session = self._sessions.get(daemon_id)
        if session is None:
            return True  # the session is gone: the daemon has no session to reuse it by
        kept = session.syncs.setdefault(local, [])
        if len(kept) >= self.MAX_SYNCS:
            return False
        kept.append(sync)
        return True

    def remembered(self, daemon_id: str, local: str) -> list[DockerfileSync]:
        """The Dockerfile syncs of ``local`` the daemon may reuse for a build on the session."""
        session = self._sessions.get(daemon_id)
        return list(session.syncs.get(local, ())) if session is not None else []

    # -- builds ------------------------------------------------------------------------

    def add(self, build: PendingBuild) -> int:
        token = next(self._tokens)
        self._builds[token] = build
        return token

    def remove(self, token: int) -> None:
        self._builds.pop(token, None)

    def __len__(self) -> int:
        return len(self._builds)

    def reading(self, daemon_session: str, local: str) -> list[PendingBuild]:
        """The builds whose Dockerfile comes from ``local`` of the session the daemon
        knows as ``daemon_session``."""
        return [
            b
            for b in self._builds.values()
            if b.reads_dockerfile
            and daemon_session in b.daemon_sessions
            and b.inputs.dockerfile_local == local
        ]

    def names_local(self, local: str, client_id: str) -> bool:
        """Whether a build in flight that names the session announced as ``client_id``
        reads its Dockerfile from a local of that name: a sync of it on that session
        that no build explains is then suspect. (Another client's builds say nothing
        about this session.)"""
        return any(
            b.reads_dockerfile
            and b.inputs.dockerfile_local == local
            and client_id in (b.inputs.session, b.inputs.dockerfile_session)
            for b in self._builds.values()
        )

    def by_ref(self, ref: str, uid: int | None) -> PendingBuild | None:
        """The ``Control/Solve`` in flight whose ``Ref`` (the build id) is ``ref`` and whose
        client ran as ``uid``; None when there is none, or more than one (which build a call
        is for is then unknown). Another user's build is never found: a gateway call naming
        it must not be read with that build's inputs, nor decided as that user."""
        found = [
            b
            for b in self._builds.values()
            if ref
            and uid is not None
            and b.inputs.ref == ref
            and b.endpoint == CONTROL_SOLVE_ENDPOINT
            and b.peer.uid == uid
        ]
        return found[0] if len(found) == 1 else None
