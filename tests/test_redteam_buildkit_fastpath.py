"""Red-team round 3 on the BuildKit tunnels: the DATA fast path (``Tunnel._receive``,
``_relay_box``, ``_relay_data``, ``_reopen``), session renaming and ``Control/Session``
(``_NestedSessionHook``), against the real daemon (dockerd 20.10.24, BuildKit v0.8).

Rounds 1 and 2 (tests/test_redteam_buildkit.py, tests/test_redteam_buildkit_h2.py) cover
what a build reads and what a client can do to the outer tunnels; this file covers the
nested session a ``Control/Session`` call carries. Each finding was a strict xfail until
fixed; it asserts what must hold: memory the agent keeps is bounded (``VmRSS`` of the
agent process).

Found: the nested session's own HTTP/2 answers (PING ACKs, SETTINGS ACKs) go to the client
inside the outer stream's ``BytesMessage``s, so they wait in that stream's outbox for a
window the client never grants; the client's requests are acknowledged all the same (the
outbox towards the daemon is empty) and the transport never backs up (nothing reaches
it), so round 2's "a client that does not read is not read either" never engages. Each
PING the client sends leaves its answer, a ``memoryview`` and a ``bytes`` in the agent:
hundreds of MiB in seconds, for as long as the connection lives.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.inspection.buildkit.protos.control_pb2 import BytesMessage
from bench.realdocker import DockerEnv
from tests.agent_process import AgentProcess, shim_policy, start_agent, unix_request
from tests.buildkit_client import grpc_frame
from tests.h2_probe import DATA, PING, SETTINGS_TYPE, call_headers, frame, raw_grpc, rss_kib

CONTROL_SESSION = "/moby.buildkit.v1.Control/Session"
#: What the agent may grow by under one attack (as round 2): the windows it grants one
#: tunnel several times over, far below what the attack makes it keep.
RSS_BOUND_KIB = 64 << 10
#: The daemon gives up on a session whose health checks go unanswered after ~11 s (1 s
#: ticker, 10 s timeout): the attack moves to a new ``Control/Session`` call before that.
SESSION_LIFETIME = 8.0

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def agent(docker_env: DockerEnv, tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh agent per test (enforce, community denied, ``builds: deny``)."""
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy())
    try:
        yield shim
    finally:
        shim.stop()


# --------------------------------------------------------------------------- helpers


def _read_in_thread(sock: socket.socket, stop: threading.Event) -> threading.Thread:
    """Read and drop everything the shim sends: its transport never backs up, so the
    shim never stops reading this client for not reading."""

    def run() -> None:
        while not stop.is_set():
            try:
                if not sock.recv(1 << 16):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _bytes_message(data: bytes) -> bytes:
    return grpc_frame(BytesMessage(data=data).SerializeToString())


def _session_headers() -> list[tuple[str, str]]:
    return [
        *call_headers(CONTROL_SESSION),
        ("x-docker-expose-session-uuid", uuid.uuid4().hex),
        ("x-docker-expose-session-name", "pullgate-redteam"),
        ("x-docker-expose-session-sharedkey", "redteam"),
    ]


def _ping_agent(agent: AgentProcess) -> None:
    status, _, body = unix_request(agent.socket_path, "GET", "/_ping")
    assert status == 200 and body == b"OK", (status, body)


# --------------------------------------------------------------------------- findings


def test_a_nested_session_cannot_grow_the_agent_with_answers_it_never_takes(
    agent: AgentProcess,
) -> None:
    """The client opens ``Control/Session`` calls on ``/grpc``, opens the nested session
    with its SETTINGS, then sends nested PINGs, one per outer DATA frame (one message
    each), and never sends a WINDOW_UPDATE for the outer stream; it reads the socket."""
    before = rss_kib(agent.proc.pid)
    sock, conn = raw_grpc(agent.socket_path)
    sock.settimeout(0.5)
    stop = threading.Event()
    reader = _read_in_thread(sock, stop)
    ping = _bytes_message(frame(PING, 0, 0, b"pullgate"))
    sent = 0
    try:
        deadline = time.monotonic() + 2 * SESSION_LIFETIME
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while time.monotonic() < deadline:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, _session_headers())
                opening = _bytes_message(frame(SETTINGS_TYPE, 0, 0, b""))
                sock.sendall(conn.data_to_send() + frame(DATA, 0, sid, opening))
                # the shim acknowledges each message as it reads it (its outbox towards
                # the daemon stays empty): no window is waited for
                burst = frame(DATA, 0, sid, ping) * 4096  # 132 KiB, 4096 PINGs
                until = min(time.monotonic() + SESSION_LIFETIME, deadline)
                while time.monotonic() < until:
                    sock.sendall(burst)
                    sent += len(burst)
        time.sleep(2)
        grown = rss_kib(agent.proc.pid) - before
        _ping_agent(agent)
    finally:
        stop.set()
        reader.join(5)
        sock.close()
    assert grown < RSS_BOUND_KIB, (
        f"agent RSS grew by {grown >> 10} MiB for {sent >> 20} MiB of nested PINGs"
    )
