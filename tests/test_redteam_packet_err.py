"""Red-team round on 318e290: a refused Dockerfile sync reaches the daemon as the client's
fsutil ``PACKET_ERR``, its gRPC status 2 s later (``Tunnel.fail_request``,
``_late_status``; ``filesync.sender_error``), against the real daemon (dockerd 20.10.24,
BuildKit v0.8).

Tried: a client that keeps sending on the refused sync after the refusal; the tunnel
gone before the 2 s timers fire (the CLI hangs up as soon as its build fails); a session
carried in ``Control/Session`` on ``/grpc`` (buildx), where the refusal is written by a
nested tunnel; a denial message longer than one HTTP/2 frame (the shim then fell back to
the status alone, the path whose "context canceled" the commit was about).

Found (fixed):

- In a ``Control/Session``, whatever the nested tunnel wrote outside a read of the outer
  connection (the refusal's ``PACKET_ERR``, a released Dockerfile, the late status and
  reset) stayed in the outer connection's buffer until the next frame arrived on it:
  BuildKit's session health check, once a second. Every refused or allowed buildx build
  waited up to 1 s for its Dockerfile's fate (measured: 1.00 s each time the client's
  data followed a health check; 0.01 s over ``POST /session``).
- A denial message over 16 KiB (a long ``messages.contact``) did not fit one DATA frame,
  so the refusal went out as the status alone: "rpc error: code = PermissionDenied"
  instead of the sender's error, and open again to the daemon's "context canceled".

Evidence of what held is taken as in tests/test_redteam_buildkit_h2.py: the agent's
``VmRSS``, its decision records, its stderr (no exception in a timer callback), and a
build through it that still works.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h2.events
import pytest

from agent.core.inspection.buildkit.protos import fsutil_types_pb2
from bench.realdocker import DockerEnv
from tests.agent_process import AgentProcess, shim_policy, start_agent
from tests.buildkit_client import (
    HEALTH_CHECK,
    TRANSPORT_GRPC,
    TRANSPORT_SESSION,
    GrpcResult,
    Session,
    build_dirs,
    dockerfile_solve_request,
    grpc_frame,
    solve,
)
from tests.h2_probe import rss_kib

DENIED_CANONICAL = "docker.io/someuser/tool:latest"
DENIED_DOCKERFILE = "FROM someuser/tool\nRUN true\n"
SENDER_DENIAL = (
    f"failed to read dockerfile: error from sender: pullgate: pulling {DENIED_CANONICAL}"
)
NO_NETWORK = {"force-network-mode": "none"}
PACKET = fsutil_types_pb2.Packet
#: The shim's grace between telling the daemon and cancelling the client's side.
GRACE = 2.0
#: How long a refusal or a release may take to reach the daemon once the client's data
#: is in: the shim decides in milliseconds; BuildKit's health check comes once a second.
PROMPT = 0.5
RSS_BOUND_KIB = 64 << 10
CALLBACK_FAILURES = ("Exception in callback", "Traceback")

pytestmark = pytest.mark.usefixtures("seeded", "alpine_local")


@pytest.fixture
def agent(docker_env: DockerEnv, tmp_path: Path) -> Iterator[AgentProcess]:
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy())
    try:
        yield shim
    finally:
        shim.stop()


def _no_callback_failures(agent: AgentProcess) -> None:
    text = agent.stderr_text()
    for failure in CALLBACK_FAILURES:
        assert failure not in text, agent.stderr_tail(40)


class _HeldSession(Session):
    """Holds the Dockerfile's data (the content asked for on the ``dockerfile`` local)
    until the daemon's next health check has arrived, then sends it at once: the next
    check is a second away, so nothing else crosses the connection meanwhile.

    ``trail``: after the Dockerfile, messages to keep sending on the same stream, from
    the health check after the data went on, until the stream is reset (a client that
    does not stop when the shim has refused its sync)."""

    def __init__(self, *args: Any, trail: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trail = trail
        self.trailed = 0
        self._held: tuple[Any, list[Iterator[bytes]]] | None = None
        self._trail_stream: Any = None
        self.released_at: float | None = None
        self.fin_at: float | None = None
        self.reset_at: float | None = None
        self._dockerfile_sid: int | None = None

    def _message(self, st: Any, msg: bytes) -> None:
        super()._message(st, msg)
        if st.sync is None or st.sync.dir_name != "dockerfile":
            return
        self._dockerfile_sid = st.sid
        if PACKET.FromString(msg).type == PACKET.PACKET_FIN:
            self.fin_at = time.monotonic()
        elif st.jobs and self.released_at is None and self._held is None:
            self._held = (st, list(st.jobs))
            st.jobs.clear()

    def _request(self, sid: int, headers: Sequence[tuple[str, str]]) -> None:
        super()._request(sid, tuple(headers))
        if dict(headers).get(":path") != HEALTH_CHECK:
            return
        if self._held is not None:
            st, jobs = self._held
            self._held = None
            st.jobs.extend(jobs)
            self.released_at = time.monotonic()
            self._trail_stream = st if self.trail else None
        elif self._trail_stream is not None:
            st, self._trail_stream = self._trail_stream, None
            st.jobs.append(self._trailing())

    def _trailing(self) -> Iterator[bytes]:
        junk = PACKET(type=PACKET.PACKET_DATA, ID=0, data=b"j" * 32768).SerializeToString()
        framed = grpc_frame(junk)
        while self.trailed < self.trail:
            self.trailed += len(framed)
            yield framed

    def _handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.StreamReset) and ev.stream_id == self._dockerfile_sid:
                self.reset_at = time.monotonic()
        super()._handle(events)


def _held_build(
    agent: AgentProcess, dirs: dict[str, Path], **kw: Any
) -> tuple[GrpcResult, _HeldSession, float]:
    session = _HeldSession(agent.socket_path, dirs, **kw)
    with session:
        result = solve(
            agent.socket_path, dockerfile_solve_request(session.id, NO_NETWORK), timeout=60
        )
        done = time.monotonic()
        if "trail" in kw:
            deadline = done + GRACE + 3
            while session.reset_at is None and session.running and time.monotonic() < deadline:
                time.sleep(0.05)
    return result, session, done


# --------------------------------------------------------------------------- findings (fixed)


@pytest.mark.parametrize("transport", [TRANSPORT_SESSION, TRANSPORT_GRPC])
def test_a_refusal_reaches_the_daemon_without_waiting_for_other_traffic(
    agent: AgentProcess, tmp_path: Path, transport: str
) -> None:
    """The solve ends as soon as the shim has refused the sync, whichever way the session
    is carried. Over ``Control/Session`` it ended with the next health check, 1 s later."""
    dirs = build_dirs(tmp_path, DENIED_DOCKERFILE)
    mark = agent.mark()
    for _ in range(3):
        result, session, done = _held_build(agent, dirs, transport=transport)
        assert not result.ok and SENDER_DENIAL in result.message, result
        assert session.released_at is not None, session.syncs
        took = done - session.released_at
        assert took < PROMPT, f"the refusal reached the daemon {took:.2f} s after the data"
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("image") == DENIED_CANONICAL, since=mark
    )
    time.sleep(GRACE + 0.5)  # the late status and reset fire on tunnels long gone
    assert agent.running()
    _no_callback_failures(agent)


@pytest.mark.parametrize("transport", [TRANSPORT_SESSION, TRANSPORT_GRPC])
def test_a_released_dockerfile_reaches_the_daemon_without_waiting_for_other_traffic(
    agent: AgentProcess, tmp_path: Path, transport: str
) -> None:
    """The allowed side of the same gap: the daemon's FIN (it has the whole Dockerfile)
    follows the client's data at once."""
    dirs = build_dirs(tmp_path, "FROM alpine\nRUN true\n")
    result, session, _ = _held_build(agent, dirs, transport=transport)
    assert result.ok, result
    assert session.released_at is not None and session.fin_at is not None, session.syncs
    took = session.fin_at - session.released_at
    assert took < PROMPT, f"the daemon had the Dockerfile {took:.2f} s after the client sent it"


def test_a_long_denial_still_reaches_the_daemon_as_the_senders_error(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    """A ``messages.contact`` of 20 000 characters: the refusal is still the sender's
    error (cut as the status is), not the status alone."""
    policy = shim_policy(messages={"contact": "it-help " + "x" * 20000})
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, policy)
    try:
        dirs = build_dirs(tmp_path, DENIED_DOCKERFILE)
        with Session(shim.socket_path, dirs) as session:
            result = solve(shim.socket_path, dockerfile_solve_request(session.id, NO_NETWORK))
        assert not result.ok, result
        assert SENDER_DENIAL in result.message, result.message[:400]
        assert "it-help xxx" in result.message, result.message[:400]
    finally:
        shim.stop()


# --------------------------------------------------------------------------- held


@pytest.mark.parametrize("transport", [TRANSPORT_SESSION, TRANSPORT_GRPC])
def test_a_client_that_keeps_sending_after_the_refusal_is_cut_off(
    agent: AgentProcess, tmp_path: Path, transport: str
) -> None:
    """After the refusal the client sends 32 KiB packets on the refused stream as fast as
    the shim takes them: dropped as they come (the agent does not grow), and the stream is
    reset after the grace; the refusal and its record stand."""
    dirs = build_dirs(tmp_path, DENIED_DOCKERFILE)
    mark = agent.mark()
    before = rss_kib(agent.proc.pid)
    result, session, done = _held_build(agent, dirs, transport=transport, trail=2 << 30)
    grown = rss_kib(agent.proc.pid) - before
    assert not result.ok and SENDER_DENIAL in result.message, result
    assert session.trailed > 0, "the client sent nothing after the refusal"
    assert session.reset_at is not None, (
        f"the refused stream was not reset; the client sent {session.trailed >> 20} MiB after"
    )
    assert session.reset_at - done < GRACE + 1.5, session.reset_at - done
    assert grown < RSS_BOUND_KIB, (
        f"agent RSS grew by {grown >> 10} MiB while the client sent "
        f"{session.trailed >> 20} MiB after the refusal"
    )
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("image") == DENIED_CANONICAL, since=mark
    )
    assert agent.running()
    _no_callback_failures(agent)
    ok = build_dirs(tmp_path / "ok", "FROM alpine\nRUN true\n")
    with Session(agent.socket_path, ok) as fresh:
        after = solve(agent.socket_path, dockerfile_solve_request(fresh.id, NO_NETWORK))
    assert after.ok, after
