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
from bench.realdocker import DockerEnv, docker, image_present
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


@pytest.fixture(scope="module")
def alpine_local(docker_env: DockerEnv) -> None:
    if not image_present(docker_env, "alpine"):
        docker(docker_env, "pull", "alpine")


# --------------------------------------------------------------------------- helpers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS_TYPE, PING = 0x0, 0x1, 0x3, 0x4, 0x6
END_STREAM, END_HEADERS = 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _upgrade(socket_path: Path, path: str = "/grpc") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(socket_path))
    head = [f"POST {path} HTTP/1.1", "Host: localhost", "Upgrade: h2c", "Connection: Upgrade"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the 101: {buf!r}"
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf
    return sock


def _raw_grpc(socket_path: Path) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = _upgrade(socket_path)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _call_headers(method: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def _solve_then_reset(
    sock: socket.socket, conn: h2.connection.H2Connection, payload: bytes
) -> None:
    """A whole ``Control/Solve`` (headers, message, end), then its RST_STREAM."""
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, _call_headers(CONTROL_SOLVE))
    message = grpc_frame(payload)
    for at in range(0, len(message), 16384):
        # the shim acknowledges held request bytes as they arrive: no window is waited for
        sock.sendall(conn.data_to_send() + _frame(DATA, 0, sid, message[at : at + 16384]))
    sock.sendall(_frame(DATA, END_STREAM, sid, b""))
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
    PACKET_ERR messages on the same stream: file data has started, so the shim holds every
    message after it until the sync is complete, and it never is."""

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
    before = _rss_kib(agent.proc.pid)
    session = _StuffingSession(agent.socket_path, dirs)
    with session:
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        solver, outcome = _in_thread(lambda: solve(agent.socket_path, request, timeout=90))
        deadline = time.monotonic() + 60
        while session.stuffed < session.stuffing and time.monotonic() < deadline:
            assert session.running and not outcome, (outcome, session.error)
            time.sleep(0.2)
        time.sleep(1)
        grown = _rss_kib(agent.proc.pid) - before
        stuffed = session.stuffed
    solver.join(30)
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
    sock, conn = _raw_grpc(agent.socket_path)
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
    before = _rss_kib(agent.proc.pid)
    sock, conn = _raw_grpc(agent.socket_path)
    with sock:
        for _ in range(10):
            _solve_then_reset(sock, conn, _leaky_solve({"build-arg:PAD": "p" * (24 << 20)}))
        time.sleep(7)
    time.sleep(1)
    grown = _rss_kib(agent.proc.pid) - before
    assert grown < 2 * RSS_BOUND_KIB, (
        f"agent RSS grew by {grown >> 10} MiB after ten reset Solves and their tunnel ended"
    )


def test_unfinished_solve_requests_on_many_tunnels_are_bounded(agent: AgentProcess) -> None:
    """Eight ``/grpc`` tunnels, each with one Solve stream of 30 MiB never ended."""
    before = _rss_kib(agent.proc.pid)
    chunk = b"\x0a" * 16384
    tunnels = []
    try:
        for _ in range(8):
            sock, conn = _raw_grpc(agent.socket_path)
            tunnels.append(sock)
            conn.send_headers(1, _call_headers(CONTROL_SOLVE))
            sock.sendall(conn.data_to_send())
            sock.sendall(_frame(DATA, 0, 1, b"\x00" + struct.pack(">I", (32 << 20) - 1)))
            body = _frame(DATA, 0, 1, chunk) * 64  # 1 MiB
            for _ in range(30):
                sock.sendall(body)
        time.sleep(1)
        grown = _rss_kib(agent.proc.pid) - before
    finally:
        for sock in tunnels:
            sock.close()
    assert grown < RSS_BOUND_KIB, f"agent RSS grew by {grown >> 10} MiB"


def test_a_client_that_never_reads_cannot_grow_the_agent_with_pings(
    agent: AgentProcess,
) -> None:
    before = _rss_kib(agent.proc.pid)
    sock, _ = _raw_grpc(agent.socket_path)
    burst = _frame(PING, 0, 0, b"pullgate") * 8192  # 136 KiB
    sent = 0
    with sock:
        sock.settimeout(30)
        deadline = time.monotonic() + 45
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while time.monotonic() < deadline and sent < (32 << 20):
                sock.sendall(burst)
                sent += len(burst)
        time.sleep(2)
        grown = _rss_kib(agent.proc.pid) - before
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
