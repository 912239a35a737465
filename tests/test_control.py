"""The control API on a real Unix socket, asked with real curl and raw Python sockets.

The server runs in-process on its own event loop thread; events go in through a real
``DecisionSink``. Another user is a real other uid: curl runs as ``nobody`` (65534), so
``SO_PEERCRED`` tells the server so, exactly as for a developer asking root's agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.control.contract import control_candidates, default_control_path, default_socket_mode
from agent.core.events import DecisionEvent, Event, NoticeEvent, PolicyEvent
from agent.core.peer import PeerInfo
from agent.daemon.bus import DecisionSink
from agent.daemon.control_server import ControlLimits, ControlServer
from agent.daemon.policy_fetch import FetchError
from tests.agent_process import LineStream

NOBODY = 65534
OTHER_USER = 1000
CURL = shutil.which("curl")
TIMEOUT = 10.0
BASE = "http://localhost"

_T = TypeVar("_T")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


def decision(uid: int | None, image: str = "docker.io/someuser/tool:latest") -> DecisionEvent:
    return DecisionEvent(
        action="image-pull",
        decision="deny",
        image=image,
        input=image,
        category="community",
        rule="category:community",
        reason="community images are not allowed",
        policy='org "acme" policy serial 1',
        policy_serial=1,
        endpoint="POST /images/create",
        peer=PeerInfo(pid=4242, uid=uid, user=str(uid)),
    )


class RunningControl:
    """A ControlServer serving on its own event loop in a thread, fed by a DecisionSink."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.sink = DecisionSink()
        self.sink.subscribe(server)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(server.start())

    @property
    def path(self) -> Path:
        return self.server.path

    def call(self, coro: Awaitable[_T]) -> _T:
        async def wrap() -> _T:
            return await coro

        future: Future[_T] = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        return future.result(TIMEOUT)

    def emit_in_loop(self, *events: Event) -> float:
        """Emit from the loop thread, as the shim does; returns how long emitting took."""

        async def emit() -> float:
            started = time.perf_counter()
            for event in events:
                self.sink.emit(event)
            return time.perf_counter() - started

        return self.call(emit())

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT)
            self.loop.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory under /tmp that other users may traverse (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pgctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


StartControl = Callable[..., RunningControl]


@pytest.fixture
def start_control(socket_dir: Path) -> Iterator[StartControl]:
    running: list[RunningControl] = []

    def start(
        *,
        refresh: Callable[[], Awaitable[str]] | None = None,
        socket_mode: int | None = 0o666,
        limits: ControlLimits | None = None,
        name: str = "control.sock",
    ) -> RunningControl:
        server = ControlServer(
            socket_dir / name,
            status=lambda: {"mode": "enforce", "org": "acme", "policy": {"state": "fresh"}},
            refresh=refresh,
            socket_mode=socket_mode,
            limits=limits,
        )
        control = RunningControl(server)
        running.append(control)
        return control

    yield start
    for control in running:
        control.stop()


def curl(
    path: Path, target: str, *args: str, user: int | None = None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) from real curl over the Unix socket, as ``user``."""
    if CURL is None:
        pytest.fail("curl is not installed (scripts/install-system-deps.sh installs it)")
    result = subprocess.run(
        [
            CURL,
            *("-sS", "--max-time", "5", "--unix-socket", str(path), "-w", "\n%{http_code}"),
            *args,
            f"http://localhost{target}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=user,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    parsed: dict[str, Any] = json.loads(body) if body.strip() else {}
    return int(code), parsed


def curl_stream(path: Path, *, user: int | None = None) -> tuple[subprocess.Popen[str], LineStream]:
    """A live ``curl -N`` on /v1/events, started and past the stream's opening comment."""
    assert CURL is not None
    proc = subprocess.Popen(
        [CURL, "-sS", "-N", "--max-time", "30", "--unix-socket", str(path), f"{BASE}/v1/events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        user=user,
    )
    assert proc.stdout is not None
    lines = LineStream(proc.stdout)
    first = lines.next(TIMEOUT)
    assert first is not None and first.startswith(": pullgate"), first
    assert lines.next(TIMEOUT) == "\n"
    return proc, lines


def next_event(lines: LineStream, timeout: float = TIMEOUT) -> tuple[str, dict[str, Any]]:
    """The next ``event:``/``data:`` pair of an SSE stream (comments skipped)."""
    deadline = time.monotonic() + timeout
    name = None
    while True:
        line = lines.next(max(0.01, deadline - time.monotonic()))
        assert line is not None, "stream ended"
        if line.startswith("event: "):
            name = line[len("event: ") :].strip()
        elif line.startswith("data: "):
            assert name is not None, "data without event"
            return name, json.loads(line[len("data: ") :])


def raw_exchange(path: Path, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes: (status, whole response)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- paths and modes ------------------------------------------------------------------


def test_default_control_path_is_system_for_root_and_runtime_dir_for_users() -> None:
    assert default_control_path(0, {}) == Path("/run/pullgate/control.sock")
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_control_path(1000, env) == Path("/run/user/1000/pullgate/control.sock")
    assert default_control_path(1001, {}) == Path("/run/user/1001/pullgate/control.sock")
    assert default_socket_mode(0) == 0o666
    assert default_socket_mode(1000) == 0o600
    assert control_candidates(1000, env) == [
        Path("/run/user/1000/pullgate/control.sock"),
        Path("/run/pullgate/control.sock"),
    ]
    assert control_candidates(0, {}) == [Path("/run/pullgate/control.sock")]


def test_system_socket_is_world_writable_and_private_socket_refuses_other_users(
    start_control: StartControl,
) -> None:
    shared = start_control(socket_mode=None)  # root: the default mode
    assert shared.path.stat().st_mode & 0o777 == 0o666
    assert curl(shared.path, "/v1/status", user=NOBODY)[0] == 200
    private = start_control(socket_mode=0o600, name="private.sock")
    assert private.path.stat().st_mode & 0o777 == 0o600
    result = subprocess.run(
        [str(CURL), "-sS", "--max-time", "5", "--unix-socket", str(private.path), BASE],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=NOBODY,
        check=False,
    )
    assert result.returncode != 0, result.stdout


def test_second_server_refuses_to_take_over_a_live_socket(start_control: StartControl) -> None:
    control = start_control()
    intruder = ControlServer(control.path, status=dict, refresh=None)
    with pytest.raises(RuntimeError, match="already serving"):
        control.call(intruder.start())
    assert curl(control.path, "/v1/status")[0] == 200


def test_close_ends_streams_and_removes_the_socket(start_control: StartControl) -> None:
    control = start_control()
    proc, lines = curl_stream(control.path)
    try:
        control.call(control.server.close())
        assert lines.until_eof(5.0) == []
        assert not control.path.exists()
    finally:
        stop_process(proc)


# --- status and decisions -------------------------------------------------------------


def test_status_carries_agent_status_and_the_callers_last_decisions(
    start_control: StartControl,
) -> None:
    control = start_control()
    control.sink.emit(decision(0, "docker.io/library/alpine:latest"))
    control.sink.emit(decision(NOBODY, "docker.io/someuser/tool:latest"))
    code, status = curl(control.path, "/v1/status")
    assert code == 200
    assert status["org"] == "acme" and status["mode"] == "enforce"
    assert status["caller"] == {"uid": 0}
    assert [d["image"] for d in status["last_decisions"]] == [
        "docker.io/someuser/tool:latest",
        "docker.io/library/alpine:latest",
    ]
    code, status = curl(control.path, "/v1/status", user=NOBODY)
    assert code == 200
    assert status["caller"] == {"uid": NOBODY}
    assert [d["image"] for d in status["last_decisions"]] == ["docker.io/someuser/tool:latest"]


def test_decisions_are_newest_first_and_limited(start_control: StartControl) -> None:
    control = start_control()
    for i in range(5):
        control.sink.emit(decision(0, f"docker.io/library/img{i}:latest"))
    code, body = curl(control.path, "/v1/decisions?limit=3")
    assert code == 200
    assert [d["image"] for d in body["decisions"]] == [
        "docker.io/library/img4:latest",
        "docker.io/library/img3:latest",
        "docker.io/library/img2:latest",
    ]
    assert body["decisions"][0]["peer"]["uid"] == 0


def test_decisions_default_to_50_and_cap_at_1000_from_a_1000_ring(
    start_control: StartControl,
) -> None:
    control = start_control()
    control.emit_in_loop(*(decision(0, f"docker.io/library/i{i}:latest") for i in range(1100)))
    assert len(curl(control.path, "/v1/decisions")[1]["decisions"]) == 50
    newest = curl(control.path, "/v1/decisions?limit=5000")[1]["decisions"]
    assert len(newest) == 1000
    assert newest[0]["image"] == "docker.io/library/i1099:latest"
    assert newest[-1]["image"] == "docker.io/library/i100:latest"


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=-1", "limit=1&limit=2", "x=1"])
def test_bad_decisions_query_is_400(start_control: StartControl, query: str) -> None:
    code, body = curl(start_control().path, f"/v1/decisions?{query}")
    assert code == 400
    assert body["message"]


def test_user_sees_only_their_own_decisions_and_root_sees_all(
    start_control: StartControl,
) -> None:
    control = start_control()
    control.sink.emit(decision(OTHER_USER, "docker.io/other/secret:latest"))
    control.sink.emit(decision(NOBODY, "docker.io/someuser/tool:latest"))
    control.sink.emit(decision(None, "docker.io/unknown/peer:latest"))
    code, mine = curl(control.path, "/v1/decisions", user=NOBODY)
    assert code == 200
    assert [d["image"] for d in mine["decisions"]] == ["docker.io/someuser/tool:latest"]
    everything = curl(control.path, "/v1/decisions")[1]["decisions"]
    assert len(everything) == 3


# --- event stream ---------------------------------------------------------------------


def test_stream_delivers_a_decision_within_100_ms_of_emit(start_control: StartControl) -> None:
    control = start_control()
    proc, lines = curl_stream(control.path)
    latencies = []
    try:
        for i in range(10):
            started = time.perf_counter()
            control.loop.call_soon_threadsafe(
                control.sink.emit, decision(0, f"docker.io/library/n{i}:latest")
            )
            name, data = next_event(lines, timeout=2.0)
            latencies.append(time.perf_counter() - started)
            assert name == "decision"
            assert data["image"] == f"docker.io/library/n{i}:latest"
    finally:
        stop_process(proc)
    assert max(latencies) < 0.1, f"latencies {latencies}"


def test_stream_shows_a_user_only_their_decisions_but_policy_and_notices_to_all(
    start_control: StartControl,
) -> None:
    control = start_control()
    proc, lines = curl_stream(control.path, user=NOBODY)
    try:
        control.sink.emit(decision(OTHER_USER, "docker.io/other/secret:latest"))
        control.sink.emit(decision(NOBODY, "docker.io/someuser/tool:latest"))
        control.sink.emit(PolicyEvent("policy-update", "success", "enforcing serial 2", serial=2))
        control.sink.emit(NoticeEvent("agent-start", "success", "agent started"))
        control.sink.emit(
            NoticeEvent("bypass-suspected", "unknown", "pull not via the shim", severity="warning")
        )
        received = [next_event(lines) for _ in range(4)]
    finally:
        stop_process(proc)
    assert [(name, data.get("image") or data["action"]) for name, data in received] == [
        ("decision", "docker.io/someuser/tool:latest"),
        ("policy", "policy-update"),
        ("notice", "agent-start"),
        ("warning", "bypass-suspected"),
    ]


def test_idle_stream_gets_keep_alive_comments(start_control: StartControl) -> None:
    control = start_control(limits=ControlLimits(keepalive=0.2))
    proc, lines = curl_stream(control.path)
    try:
        seen = [lines.next(2.0) for _ in range(2)]
    finally:
        stop_process(proc)
    assert ": keep-alive\n" in seen


def test_slow_consumer_does_not_block_emit_and_is_told_how_many_events_it_lost(
    start_control: StartControl,
) -> None:
    control = start_control(limits=ControlLimits(stream_queue=16))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(5.0)
        slow.connect(str(control.path))
        slow.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert slow.recv(4096).startswith(b"HTTP/1.1 200 OK")
        padding = "x" * 2000  # ~2 KB per event: the socket buffers fill quickly
        events = [
            dataclasses.replace(decision(0, f"docker.io/library/s{i}:latest"), detail=padding)
            for i in range(3000)
        ]
        elapsed = control.emit_in_loop(*events)
        assert elapsed < 0.5, f"emitting 3000 events took {elapsed:.3f} s with a stalled reader"
        started = time.perf_counter()
        assert curl(control.path, "/v1/status")[0] == 200
        assert time.perf_counter() - started < 1.0
        control.sink.emit(NoticeEvent("marker", "success", "the last event"))
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while b'"action":"marker"' not in data and time.monotonic() < deadline:
            data += slow.recv(1 << 20)
    frames = [f for f in data.split(b"\n\n") if b"data: " in f]
    dropped = [json.loads(f.split(b"data: ", 1)[1]) for f in frames if b"events-dropped" in f]
    delivered = sum(1 for f in frames if b"event: decision" in f)
    assert dropped, "no events-dropped notice"
    assert b"event: warning" in data
    lost = sum(d["details"]["dropped"] for d in dropped)
    assert delivered + lost == 3000
    assert lost > 0


# --- policy refresh -------------------------------------------------------------------


def test_refresh_endpoint_runs_the_refresh_and_returns_its_result(
    start_control: StartControl,
) -> None:
    calls = []

    async def refresh() -> str:
        calls.append(time.time())
        return "accepted serial 2"

    control = start_control(refresh=refresh)
    code, body = curl(control.path, "/v1/policy/refresh", "-X", "POST")
    assert (code, body) == (200, {"result": "accepted serial 2"})
    assert len(calls) == 1
    code, body = curl(control.path, "/v1/policy/refresh", "-d", "")  # curl -d: a body
    assert code == 200 and len(calls) == 2


def test_refresh_fetch_failure_is_502_with_the_reason(start_control: StartControl) -> None:
    async def refresh() -> str:
        raise FetchError("connection refused by policy.example.com")

    code, body = curl(start_control(refresh=refresh).path, "/v1/policy/refresh", "-X", "POST")
    assert code == 502
    assert "connection refused by policy.example.com" in body["message"]


def test_refresh_without_an_org_policy_is_409(start_control: StartControl) -> None:
    code, body = curl(start_control().path, "/v1/policy/refresh", "-X", "POST")
    assert code == 409
    assert "no org policy" in body["message"]


# --- errors and framing ---------------------------------------------------------------


def test_unknown_endpoint_is_404_wrong_method_405_and_identity_409_unconfigured(
    start_control: StartControl,
) -> None:
    path = start_control().path
    code, body = curl(path, "/v2/status")
    assert code == 404 and "no such endpoint" in body["message"]
    code, body = curl(path, "/v1/status", "-X", "DELETE")
    assert code == 405 and "GET" in body["message"]
    code, body = curl(path, "/v1/policy/refresh")
    assert code == 405
    for method in ("PUT", "DELETE"):
        code, body = curl(path, "/v1/identity", "-X", method)
        assert code == 409 and "no oidc_issuer" in body["message"]
        assert body["reason"] == "not_configured"
    code, body = curl(path, "/v1/identity")
    assert code == 200 and body == {"identity": None, "sign_in": None}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/status HTTP/1.1\nHost: x\n\n", 400),  # bare LF
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET http://evil/v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute-form
        (
            b"POST /v1/policy/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /v1/status HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ],
    ids=["bare-lf", "garbage", "absolute-form", "cl-and-te", "huge-head", "http2"],
)
def test_malformed_requests_are_refused_with_json(
    start_control: StartControl, request_bytes: bytes, status: int
) -> None:
    code, data = raw_exchange(start_control().path, request_bytes)
    assert code == status, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["message"]


def test_keep_alive_connection_answers_several_requests(start_control: StartControl) -> None:
    control = start_control()
    conn = http.client.HTTPConnection("localhost", timeout=5)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(control.path))
    conn.sock = sock
    try:
        for target in ("/v1/status", "/v1/decisions?limit=1", "/v1/status"):
            conn.request("GET", target)
            resp = conn.getresponse()
            assert resp.status == 200
            json.loads(resp.read())
    finally:
        conn.close()


def test_an_event_before_start_is_kept_for_decisions(socket_dir: Path) -> None:
    server = ControlServer(socket_dir / "c.sock", status=dict, refresh=None, socket_mode=0o600)
    server(decision(0))
    control = RunningControl(server)
    try:
        assert len(curl(control.path, "/v1/decisions")[1]["decisions"]) == 1
    finally:
        control.stop()


def test_notice_about_another_users_process_is_redacted_for_non_root() -> None:
    from agent.control.contract import redacted_for
    from agent.core.events import NoticeEvent
    from agent.core.peer import PeerInfo

    notice = NoticeEvent(
        action="bypass-suspected",
        outcome="unknown",
        reason="a process reached the daemon directly",
        severity="warning",
        details={"pid": 4242, "command_line": ["docker", "pull", "x"]},
        peer=PeerInfo(pid=4242, uid=1000, user="ann"),
    )
    assert redacted_for(notice, 0)["details"]["pid"] == 4242
    assert redacted_for(notice, 1000)["peer"]["user"] == "ann"
    other = redacted_for(notice, 1001)
    assert other["peer"] is None and "pid" not in other["details"]
    assert other["reason"] == notice.reason


# --- issue 10: frames once, connection limit, refresh callers ---------------------------


def test_each_event_is_serialised_once_for_all_streams(
    start_control: StartControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = json.dumps

    def counting(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        return original(*args, **kwargs)

    control = start_control()
    streams = [curl_stream(control.path) for _ in range(5)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while control.server.status_for(0)["control"]["streams"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(json, "dumps", counting)
        control.emit_in_loop(decision(0))
        for _, lines in streams:
            assert next_event(lines)[0] == "decision"
        monkeypatch.setattr(json, "dumps", original)
    finally:
        for proc, _ in streams:
            stop_process(proc)
    assert len(calls) == 1


_HOLD = """
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX); s.connect(path); held.append(s)
time.sleep(0.3)
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.settimeout(1.0)
try:
    data = s.recv(65536)  # a refused connection is answered before any request
except TimeoutError:
    s.settimeout(5.0)
    s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    data = s.recv(65536)
print(data.split(b" ", 2)[1].decode())
"""


@pytest.mark.parametrize(("user", "expected"), [(NOBODY, "503"), (None, "200")])
def test_the_per_user_connection_limit_spares_root(
    start_control: StartControl, user: int | None, expected: str
) -> None:
    control = start_control(limits=ControlLimits(max_connections_per_uid=3))
    python = "/usr/bin/python3"  # stdlib only; nobody may not run the venv's python
    if not os.access(python, os.X_OK):
        pytest.skip("needs /usr/bin/python3 to act as another user")
    done = subprocess.run(
        [python, "-c", _HOLD, str(control.path), "3"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=user,
        check=False,
    )
    assert done.stdout.strip() == expected, done.stderr


def test_refresh_by_a_user_is_rate_limited_but_root_may_always(
    start_control: StartControl,
) -> None:
    calls = []

    async def refresh() -> str:
        calls.append(1)
        return "unchanged"

    control = start_control(refresh=refresh)
    assert curl(control.path, "/v1/policy/refresh", "-X", "POST", user=NOBODY)[0] == 200
    code, body = curl(control.path, "/v1/policy/refresh", "-X", "POST", user=NOBODY)
    assert code == 429 and body["message"].startswith("refused: a policy refresh was asked")
    assert curl(control.path, "/v1/policy/refresh", "-X", "POST", user=OTHER_USER)[0] == 200
    for _ in range(3):
        assert curl(control.path, "/v1/policy/refresh", "-X", "POST")[0] == 200
    assert len(calls) == 5


@pytest.mark.parametrize("body", [b"[" * 40_000, b"\xff\xfe", b'{"a": 1, "a": 2}'])
def test_client_turns_an_unreadable_answer_into_a_control_error(body: bytes) -> None:
    from agent.control.client import ControlError, control_request

    base = Path(tempfile.mkdtemp(prefix="pgctl-", dir="/tmp"))
    path = base / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ControlError, match="without readable JSON"):
            control_request(path, "GET", "/v1/status", timeout=5.0)
    finally:
        thread.join(5.0)
        server.close()
        shutil.rmtree(base, ignore_errors=True)
