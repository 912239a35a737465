"""Red-team round 2: HTTP/2, timing and resource attacks on the shim's BuildKit tunnels
(``/session``, ``/grpc``), against the real daemon (dockerd 20.10.24, BuildKit v0.8).

Round 1 (tests/test_redteam_buildkit.py) and the hostile tests of
tests/test_shim_buildkit_grpc.py cover what a build reads; this file covers what a client
can do to the tunnels themselves: hold a Dockerfile sync and stuff it, reset streams while
the shim is deciding, open many tunnels, never read. Each finding is a strict xfail that
asserts what must hold: memory the agent keeps is bounded (``VmRSS`` of the agent
process), a reset request leaves nothing behind in the shim, legitimate builds keep
working. The checks that held are plain tests.

Found: a Dockerfile sync whose data has started but never completes holds every later
client message (PACKET_ERR/FIN are not counted as file data) and acknowledges it, so one
client makes the agent hold hundreds of MiB; a Solve reset while the shim waits for its
session is registered after it was forgotten, for ever (memory, and a build that names
``dockerfilekey=context`` makes every other client's context sync "unexplained": builds
refused, for the agent's life); a build in flight does the same while it lasts
(``names_local`` spans every session); held Solve bodies are bounded per tunnel, not per
agent; a client that never reads piles up the shim's own HTTP/2 answers (PING ACKs).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import pytest

from agent.core.inspection.buildkit.protos import fsutil_types_pb2
from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    DEBIAN_DOCKER_CLI,
    AgentProcess,
    describe,
    docker_with,
    shim_environ,
    shim_policy,
    start_agent,
)
from tests.buildkit_client import (
    CONTROL_SOLVE,
    GrpcResult,
    Session,
    build_dirs,
    dockerfile_solve_request,
    grpc_frame,
    solve,
)
from tests.h2_probe import (
    DATA,
    END_STREAM,
    PING,
    call_headers,
    frame,
    raw_grpc,
    rss_kib,
)

NO_NETWORK = {"force-network-mode": "none"}
SOLVE_TIMEOUT = 60.0
PACKET = fsutil_types_pb2.Packet
#: What the agent may grow by under one attack: the windows it grants one tunnel (8 MiB
#: a direction) several times over, far below what each attack pushes.
RSS_BOUND_KIB = 64 << 10

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def agent(docker_env: DockerEnv, tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh agent per test (enforce, community denied, ``builds: deny``): the attacks
    here leave state behind in the agent (memory, registered builds)."""
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy())
    try:
        yield shim
    finally:
        shim.stop()


# --------------------------------------------------------------------------- helpers


def _solve_then_reset(
    sock: socket.socket, conn: h2.connection.H2Connection, payload: bytes
) -> None:
    """A whole ``Control/Solve`` (headers, message, end), then its RST_STREAM."""
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, call_headers(CONTROL_SOLVE))
    message = grpc_frame(payload)
    for at in range(0, len(message), 16384):
        # the shim acknowledges held request bytes as they arrive: no window is waited for
        sock.sendall(conn.data_to_send() + frame(DATA, 0, sid, message[at : at + 16384]))
    sock.sendall(frame(DATA, END_STREAM, sid, b""))
    time.sleep(0.5)  # the shim has read the request and waits for its session
    conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    sock.sendall(conn.data_to_send())


def _in_thread(
    run: Callable[[], GrpcResult],
) -> tuple[threading.Thread, list[GrpcResult | BaseException]]:
    outcome: list[GrpcResult | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run())
        except BaseException as e:  # reported by the caller
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# --------------------------------------------------------------------------- findings


class _StuffingSession(Session):
    """Serves the Dockerfile's first bytes, never its end, then ``stuffing`` bytes of
    PACKET_ERR messages on the same stream: file data has started, so the shim would hold
    every message after it until the sync is complete, and it never is. (The shim fails the
    build at the first PACKET_ERR, quoting at most 1 KiB of its text.)"""

    stuffing = 256 << 20
    chunk = 1 << 20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stuffed = 0

    def _file(self, file_id: int, entry: Any) -> Iterator[bytes]:
        if entry.stat.path != "Dockerfile":
            yield from super()._file(file_id, entry)
            return
        first = PACKET(type=PACKET.PACKET_DATA, ID=file_id, data=b"FROM alpine\n")
        yield grpc_frame(first.SerializeToString())
        err = grpc_frame(PACKET(type=PACKET.PACKET_ERR, data=b"x" * self.chunk).SerializeToString())
        while self.stuffed < self.stuffing:
            self.stuffed += len(err)
            yield err


@pytest.mark.usefixtures("alpine_local")
def test_a_held_dockerfile_sync_cannot_be_stuffed_without_bound(
    agent: AgentProcess, tmp_path: Path
) -> None:
    dirs = build_dirs(tmp_path, "FROM alpine\nRUN true\n")
    before = rss_kib(agent.proc.pid)
    session = _StuffingSession(agent.socket_path, dirs)
    with session:
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        solver, outcome = _in_thread(lambda: solve(agent.socket_path, request, timeout=90))
        deadline = time.monotonic() + 60
        while session.stuffed < session.stuffing and not outcome:
            assert session.running, session.error
            assert time.monotonic() < deadline, "neither refused nor relayed within 60 s"
            time.sleep(0.2)
        time.sleep(1)
        grown = rss_kib(agent.proc.pid) - before
        stuffed = session.stuffed
    solver.join(30)
    assert outcome and isinstance(outcome[0], GrpcResult) and not outcome[0].ok, outcome
    # The client's text is quoted, cut short: a megabyte of it once hung the agent in HPACK.
    assert len(outcome[0].message) < 8192, len(outcome[0].message)
    assert grown < RSS_BOUND_KIB, (
        f"agent RSS grew by {grown >> 10} MiB while the client sent {stuffed >> 20} MiB "
        "of messages after the first bytes of its Dockerfile"
    )


def _leaky_solve(attrs: dict[str, str]) -> bytes:
    """A Dockerfile solve naming a session nobody announces: the shim waits for it
    (SESSION_WAIT, 5 s) before it registers the build."""
    return dockerfile_solve_request(f"nosuch-{uuid.uuid4().hex}", attrs).SerializeToString()


@pytest.mark.usefixtures("alpine_local")
def test_a_reset_solve_leaves_no_build_registered_that_breaks_other_builds(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """The reset Solve says its Dockerfile is in the local ``context`` (``dockerfilekey``):
    once it is registered for ever, every ordinary build's context sync, on any session
    of any user, is a sync "no build names"."""
    dirs = build_dirs(tmp_path / "ok", "FROM alpine\nCOPY a.txt /a.txt\n", {"a.txt": "a\n"})
    with Session(agent.socket_path, dirs) as session:
        before = solve(agent.socket_path, dockerfile_solve_request(session.id, NO_NETWORK))
    assert before.ok, before
    sock, conn = raw_grpc(agent.socket_path)
    with sock:
        _solve_then_reset(sock, conn, _leaky_solve({"dockerfilekey": "context"}))
        time.sleep(6)  # the shim's wait for the session ends, then it registers the build
    with Session(agent.socket_path, dirs) as session:
        after = solve(agent.socket_path, dockerfile_solve_request(session.id, NO_NETWORK))
    assert after.ok, f"an ordinary build after the reset Solve: {after}"


@pytest.mark.usefixtures("alpine_local")
def test_a_build_in_flight_does_not_break_other_clients_builds(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """No reset needed: the attacker's build names ``dockerfilekey=context`` and its
    session sends the first bytes of the Dockerfile and never the rest, so the build stays
    in flight as long as the attacker wants."""
    evil = build_dirs(tmp_path / "evil", "FROM alpine\nRUN true\n")
    dirs = build_dirs(tmp_path / "ok", "FROM alpine\nCOPY a.txt /a.txt\n", {"a.txt": "a\n"})
    holder = _StuffingSession(agent.socket_path, {"context": evil["context"]})
    holder.stuffing = 0
    with holder:
        request = dockerfile_solve_request(holder.id, {**NO_NETWORK, "dockerfilekey": "context"})
        solver, outcome = _in_thread(lambda: solve(agent.socket_path, request, timeout=90))
        deadline = time.monotonic() + 30
        while not any("Dockerfile" in s.requested for s in holder.syncs_of("context")):
            assert time.monotonic() < deadline and not outcome, (outcome, holder.error)
            time.sleep(0.1)
        with Session(agent.socket_path, dirs) as session:
            victim = solve(agent.socket_path, dockerfile_solve_request(session.id, NO_NETWORK))
    solver.join(30)
    assert victim.ok, f"another client's ordinary build meanwhile: {victim}"


def test_reset_solves_do_not_leak_their_requests(agent: AgentProcess) -> None:
    """Ten Solves, each with a 24 MiB build argument, each reset while the shim waits for
    its session. (The same ten Solves not reset leave the agent about 70 MiB larger: what
    the allocator keeps.)"""
    before = rss_kib(agent.proc.pid)
    sock, conn = raw_grpc(agent.socket_path)
    with sock:
        for _ in range(10):
            _solve_then_reset(sock, conn, _leaky_solve({"build-arg:PAD": "p" * (24 << 20)}))
        time.sleep(7)
    time.sleep(1)
    grown = rss_kib(agent.proc.pid) - before
    assert grown < 2 * RSS_BOUND_KIB, (
        f"agent RSS grew by {grown >> 10} MiB after ten reset Solves and their tunnel ended"
    )


def test_unfinished_solve_requests_on_many_tunnels_are_bounded(agent: AgentProcess) -> None:
    """Eight ``/grpc`` tunnels, each with one Solve stream of 30 MiB never ended."""
    before = rss_kib(agent.proc.pid)
    chunk = b"\x0a" * 16384
    tunnels = []
    try:
        for _ in range(8):
            sock, conn = raw_grpc(agent.socket_path)
            tunnels.append(sock)
            conn.send_headers(1, call_headers(CONTROL_SOLVE))
            sock.sendall(conn.data_to_send())
            sock.sendall(frame(DATA, 0, 1, b"\x00" + struct.pack(">I", (32 << 20) - 1)))
            body = frame(DATA, 0, 1, chunk) * 64  # 1 MiB
            for _ in range(30):
                sock.sendall(body)
        time.sleep(1)
        grown = rss_kib(agent.proc.pid) - before
    finally:
        for sock in tunnels:
            sock.close()
    assert grown < RSS_BOUND_KIB, f"agent RSS grew by {grown >> 10} MiB"


def test_a_client_that_never_reads_cannot_grow_the_agent_with_pings(
    agent: AgentProcess,
) -> None:
    before = rss_kib(agent.proc.pid)
    sock, _ = raw_grpc(agent.socket_path)
    burst = frame(PING, 0, 0, b"pullgate") * 8192  # 136 KiB
    sent = 0
    with sock:
        sock.settimeout(30)
        deadline = time.monotonic() + 45
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while time.monotonic() < deadline and sent < (32 << 20):
                sock.sendall(burst)
                sent += len(burst)
        time.sleep(2)
        grown = rss_kib(agent.proc.pid) - before
    assert grown < RSS_BOUND_KIB // 8, (
        f"agent RSS grew by {grown >> 10} MiB for {sent >> 20} MiB of PINGs never read"
    )


# --------------------------------------------------------------------------- held


@pytest.mark.usefixtures("alpine_local")
@pytest.mark.parametrize("through_shim", [False, True], ids=["direct", "shim"])
def test_a_secret_mount_builds_through_the_shim_as_directly(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, through_shim: bool
) -> None:
    """``docker build --secret`` (Debian CLI 20.10, DOCKER_BUILDKIT=1): the daemon asks
    the session for the secret (``Secrets/GetSecret``), relayed unread."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    token = uuid.uuid4().hex
    (ctx / "Dockerfile").write_text(
        "FROM alpine\nRUN --mount=type=secret,id=x cat /run/secrets/x > /seen\n"
    )
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    tag = f"acme/pgtest-secret-{uuid.uuid4().hex[:8]}"
    environ = dict(docker_env.env)
    if through_shim:
        environ = shim_environ(agent, docker_env)
    try:
        result = docker_with(
            {**environ, "DOCKER_BUILDKIT": "1"},
            *("build", "--network", "none", "--progress", "plain", "--no-cache"),
            *("--secret", f"id=x,src={secret}", "-t", tag, str(ctx)),
            cli=DEBIAN_DOCKER_CLI,
        )
        assert result.returncode == 0, describe(result, agent)
        seen = docker(docker_env, "run", "--rm", "--network", "none", tag, "cat", "/seen")
        assert seen.stdout == token
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)
