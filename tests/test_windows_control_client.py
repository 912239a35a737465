"""The CLI's and the tray's way to the agent on Windows, through its parts that run here:
which pipe an address names, whether the process serving it is the agent, the errors a
user meets, the overlapped reads and writes' timeouts and cancels
(``agent.platform.pipe_stream`` against scripted Windows answers), and ``control_request``
and the event stream over a channel with the pipe's behaviour (a socketpair behind the
same ``PipeOps`` seam that pywin32 fills on Windows).

What is not here, because nothing runs Windows code on this machine:
``agent.platform.pipe_client`` itself (CreateFile, WaitNamedPipe, the server's token and
the Service Control Manager, ReadFile/WriteFile/CancelIo), type-checked for win32 only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cli import context_cmd, policy_cmd, status_cmd
from agent.control import client
from agent.control.client import ControlError, EventStream, control_request, first_answer
from agent.control.contract import control_candidates
from agent.platform import windows
from agent.platform.docker_context import ContextError, context_meta_dir, host_url, points_at
from agent.platform.pipe_stream import (
    ERROR_ACCESS_DENIED,
    ERROR_BROKEN_PIPE,
    ERROR_FILE_NOT_FOUND,
    ERROR_OPERATION_ABORTED,
    ERROR_PIPE_BUSY,
    ERROR_SEM_TIMEOUT,
    INFINITE,
    MAX_IO,
    PipeCallError,
    PipeChannel,
    PipeHTTPConnection,
    PipeSocket,
    Wait,
    pipe_os_error,
    timeout_ms,
)
from agent.platform.unix_sockets import UnixHTTPConnection
from agent.platform.windows import LOCAL_SYSTEM_SID, PipeClient, WindowsNameError
from agent.platform.windows_control import (
    CONTROL_CLIENT_FLAGS,
    control_pipe_address,
    control_server_problem,
    local_pipe_name,
)

SID = "S-1-5-21-3623811015-3361044348-30300820-1013"
OTHER = "S-1-5-21-3623811015-3361044348-30300820-1014"
PIPE = windows.control_pipe(SID)

# ------------------------------------------------------------------ addresses


def test_the_users_own_control_pipe_is_the_only_candidate_on_windows() -> None:
    assert control_candidates(SID, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == [Path(PIPE)]
    assert str(control_candidates(SID, {})[0]) == "\\\\.\\pipe\\pullgate_control_" + SID
    with pytest.raises(WindowsNameError):
        control_candidates("S-1-5-21-1-2\\..\\x", {})


@pytest.mark.parametrize(
    ("address", "pipe"),
    [
        (PIPE, PIPE),
        ("\\\\.\\PIPE\\pullgate_control_" + SID, PIPE),
        ("//./pipe/pullgate_control_" + SID, PIPE),
        ("//./pipe/a/b", "\\\\.\\pipe\\a\\b"),
        ("\\\\server\\pipe\\pullgate_control_" + SID, None),  # another machine's
        ("\\\\?\\pipe\\x", None),
        ("\\\\.\\pipe\\", None),
        ("\\\\.\\pipe\\a\0b", None),
        ("\\\\.\\pipe\\" + "x" * 247, "\\\\.\\pipe\\" + "x" * 247),  # 256 in all
        ("\\\\.\\pipe\\" + "x" * 248, None),
        ("/run/pullgate/control.sock", None),
        ("C:\\ProgramData\\Pullgate\\control", None),
        ("", None),
    ],
)
def test_which_addresses_name_a_local_pipe(address: str, pipe: str | None) -> None:
    assert local_pipe_name(address) == pipe


def test_a_control_address_that_is_no_pipe_says_what_to_pass() -> None:
    assert control_pipe_address(PIPE) == PIPE
    with pytest.raises(WindowsNameError, match=r"pullgate_control_<SID>.*\\\\\.\\pipe\\NAME"):
        control_pipe_address("/run/pullgate/control.sock")


def test_the_control_pipe_is_opened_overlapped_for_identification_only() -> None:
    assert CONTROL_CLIENT_FLAGS & windows.FILE_FLAG_OVERLAPPED
    assert CONTROL_CLIENT_FLAGS & windows.SECURITY_SQOS_PRESENT
    # The impersonation level is the two bits above SQOS_PRESENT's: Identification (1),
    # not Impersonation (2) or Delegation (3).
    assert (CONTROL_CLIENT_FLAGS >> 16) & 0b11 == 1
    assert CONTROL_CLIENT_FLAGS == windows.UPSTREAM_FLAGS


# ------------------------------------------------------------------ is it the agent?


def test_a_pipe_served_by_local_system_is_the_agents() -> None:
    assert control_server_problem(PIPE, PipeClient(700, LOCAL_SYSTEM_SID), service_pid=None) is None
    assert control_server_problem(PIPE, PipeClient(700, LOCAL_SYSTEM_SID), service_pid=9) is None


def test_an_unreadable_token_is_the_agent_only_as_the_service_process() -> None:
    """A user cannot read LocalSystem's token: the Service Control Manager's word on the
    service's process decides."""
    assert control_server_problem(PIPE, PipeClient(700, None), service_pid=700) is None
    refused = control_server_problem(PIPE, PipeClient(701, None), service_pid=700)
    assert refused is not None
    assert "process 701" in refused and "whose process is 700" in refused
    stopped = control_server_problem(PIPE, PipeClient(701, None), service_pid=None)
    assert stopped is not None and "not running or could not be asked" in stopped
    assert control_server_problem(PIPE, PipeClient(0, None), service_pid=0) is not None


@pytest.mark.parametrize("squatter", [SID, OTHER, "S-1-5-19", "S-1-5-32-544"])
def test_a_pipe_served_by_anyone_else_is_refused_naming_them(squatter: str) -> None:
    """The user's own process, another user's, LocalService, a group SID: none is the
    agent, even when its pid is the service's (a token that can be read decides)."""
    problem = control_server_problem(PIPE, PipeClient(4242, squatter), service_pid=4242)
    assert problem is not None
    assert problem.startswith(f"pullgate: refusing {PIPE}: it is served by {squatter} (pid 4242)")
    assert "nothing was sent to it" in problem and "PullgateAgent" in problem


# ------------------------------------------------------------------ errors as a user meets them


@pytest.mark.parametrize(
    ("winerror", "kind", "words"),
    [
        (ERROR_FILE_NOT_FOUND, FileNotFoundError, "Get-Service PullgateAgent"),
        (ERROR_ACCESS_DENIED, PermissionError, "admits only the user"),
        (ERROR_SEM_TIMEOUT, TimeoutError, "stayed busy"),
        (ERROR_BROKEN_PIPE, BrokenPipeError, "The pipe has been ended (Windows error 109)"),
        (1450, OSError, "Insufficient system resources (Windows error 1450)"),
    ],
)
def test_windows_errors_become_the_oserror_a_socket_would_raise(
    winerror: int, kind: type[OSError], words: str
) -> None:
    strerror = {109: "The pipe has been ended.", 1450: "Insufficient system resources."}
    error = pipe_os_error(winerror, strerror.get(winerror, "x"), PIPE)
    assert type(error) is kind
    assert words in str(error.strerror) and error.filename == PIPE


def test_the_tray_names_why_a_pipe_is_out_of_reach() -> None:
    """``ui.stream.unreachable`` judges the cause by errno, so pipes read like sockets."""
    from ui.stream import unreachable

    def cause(error: OSError) -> str:
        try:
            raise ControlError("x") from error
        except ControlError as e:
            return unreachable(e)

    assert cause(pipe_os_error(ERROR_FILE_NOT_FOUND, "", PIPE)) == "missing"
    assert cause(pipe_os_error(ERROR_ACCESS_DENIED, "", PIPE)) == "denied"
    assert cause(pipe_os_error(ERROR_SEM_TIMEOUT, "", PIPE)) == "timeout"
    assert cause(pipe_os_error(ERROR_PIPE_BUSY, "All pipe instances are busy.", PIPE)) == "other"


@pytest.mark.parametrize(
    ("timeout", "ms"),
    [(None, INFINITE), (0, 0), (-1, 0), (0.0001, 1), (45, 45_000), (1e12, INFINITE - 1)],
)
def test_timeouts_in_milliseconds(timeout: float | None, ms: int) -> None:
    assert timeout_ms(timeout) == ms


# ------------------------------------------------------------------ overlapped I/O, scripted


@dataclass
class Scripted:
    """A started operation whose wait, result and data a test decides."""

    outcome: Wait
    result_: int | PipeCallError
    payload: bytes = b""
    waited_ms: list[int] = field(default_factory=list)
    cancelled: bool = False
    settled: bool = False

    def wait(self, timeout_ms: int) -> Wait:
        self.waited_ms.append(timeout_ms)
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True

    def result(self) -> int:
        self.settled = True
        if isinstance(self.result_, PipeCallError):
            raise self.result_
        return self.result_

    def data(self, count: int) -> bytes:
        assert self.settled, "a read's bytes before it settled"
        return self.payload[:count]


@dataclass
class ScriptedOps:
    """Hands out the scripted operations in order; records writes, stops and closes."""

    ops: list[Scripted | PipeCallError]
    writes: list[bytes] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    stops: int = 0
    closes: int = 0

    def _next(self) -> Scripted:
        op = self.ops.pop(0)
        if isinstance(op, PipeCallError):
            raise op
        return op

    def start_read(self, size: int) -> Scripted:
        self.reads.append(size)
        return self._next()

    def start_write(self, data: bytes) -> Scripted:
        self.writes.append(data)
        return self._next()

    def stop(self) -> None:
        self.stops += 1

    def close(self) -> None:
        self.closes += 1


def read(channel: PipeChannel, size: int = 100, timeout: float | None = 5) -> bytes:
    buffer = bytearray(size)
    count = channel.read_into(memoryview(buffer), timeout)
    return bytes(buffer[:count])


ABORTED = PipeCallError(ERROR_OPERATION_ABORTED, "The I/O operation has been aborted.")
ENDED = PipeCallError(ERROR_BROKEN_PIPE, "The pipe has been ended.")


def test_a_finished_read_hands_over_its_bytes() -> None:
    op = Scripted(Wait.DONE, 5, b"hello")
    channel = PipeChannel(ScriptedOps([op]), PIPE)
    assert read(channel, timeout=45) == b"hello"
    assert not op.cancelled and 44_000 < op.waited_ms[0] <= 45_000


def test_a_read_asks_at_most_what_the_caller_can_take() -> None:
    ops = ScriptedOps([Scripted(Wait.DONE, 3, b"abc"), Scripted(Wait.DONE, 1, b"z")])
    channel = PipeChannel(ops, PIPE)
    read(channel, size=3 * MAX_IO)
    read(channel, size=7)
    assert ops.reads == [MAX_IO, 7]


def test_a_silent_pipe_times_out_after_the_read_is_cancelled_and_settled() -> None:
    op = Scripted(Wait.TIMED_OUT, ABORTED)
    channel = PipeChannel(ScriptedOps([op]), PIPE)
    with pytest.raises(TimeoutError) as caught:
        read(channel, timeout=0.3)
    assert op.cancelled and op.settled and op.waited_ms == [300]
    assert caught.value.errno == errno.ETIMEDOUT and caught.value.filename == PIPE


def test_bytes_that_arrived_while_the_read_was_cancelled_are_kept() -> None:
    op = Scripted(Wait.TIMED_OUT, 4, b"late")
    assert read(PipeChannel(ScriptedOps([op]), PIPE)) == b"late"
    assert op.cancelled


def test_a_stop_from_another_thread_ends_the_stream() -> None:
    op = Scripted(Wait.STOPPED, ABORTED)
    channel = PipeChannel(ScriptedOps([op]), PIPE)
    assert read(channel) == b""
    assert op.cancelled and op.settled


def test_the_server_closing_its_end_is_the_end_of_the_stream() -> None:
    assert read(PipeChannel(ScriptedOps([Scripted(Wait.DONE, ENDED)]), PIPE)) == b""
    assert read(PipeChannel(ScriptedOps([ENDED]), PIPE)) == b""  # ReadFile failed at once


def test_a_read_failing_otherwise_is_an_oserror() -> None:
    with pytest.raises(PermissionError):
        read(PipeChannel(ScriptedOps([PipeCallError(ERROR_ACCESS_DENIED, "")]), PIPE))
    # Cancelled by someone else while it finished as far as the wait could tell.
    with pytest.raises(OSError) as caught:
        read(PipeChannel(ScriptedOps([Scripted(Wait.DONE, ABORTED)]), PIPE))
    assert caught.value.errno == errno.ECANCELED


def test_a_zero_length_message_is_not_the_end_of_the_stream() -> None:
    ops = ScriptedOps([Scripted(Wait.DONE, 0), Scripted(Wait.DONE, 2, b"ok")])
    assert read(PipeChannel(ops, PIPE)) == b"ok"


def test_writes_report_what_they_wrote_and_fail_when_the_pipe_ended() -> None:
    ops = ScriptedOps([Scripted(Wait.DONE, 3), Scripted(Wait.DONE, ENDED)])
    channel = PipeChannel(ops, PIPE)
    assert channel.write(memoryview(b"abc"), 5) == 3
    with pytest.raises(BrokenPipeError):
        channel.write(memoryview(b"def"), 5)
    assert ops.writes == [b"abc", b"def"]
    with pytest.raises(TimeoutError):
        PipeChannel(ScriptedOps([Scripted(Wait.TIMED_OUT, ABORTED)]), PIPE).write(
            memoryview(b"x"), 0.1
        )


def test_after_an_interrupt_reads_end_and_writes_fail_without_touching_the_pipe() -> None:
    ops = ScriptedOps([])
    channel = PipeChannel(ops, PIPE)
    channel.interrupt()
    assert ops.stops == 1
    assert read(channel) == b""
    with pytest.raises(BrokenPipeError):
        channel.write(memoryview(b"x"), 1)
    assert ops.reads == [] and ops.writes == []


def test_an_interrupt_after_close_does_nothing() -> None:
    """Its handles are closed (their numbers may be reused): ``EventStream.close`` from
    another thread can come after the reader released the stream."""
    ops = ScriptedOps([])
    channel = PipeChannel(ops, PIPE)
    channel.close()
    channel.close()
    channel.interrupt()
    assert (ops.closes, ops.stops) == (1, 0)


def test_sendall_writes_everything_within_one_timeout() -> None:
    ops = ScriptedOps([Scripted(Wait.DONE, 2), Scripted(Wait.DONE, 3)])
    sock = PipeSocket(PipeChannel(ops, PIPE), 10)
    sock.sendall(b"hello")
    assert ops.writes == [b"hello", b"llo"]


def test_closing_the_socket_keeps_an_open_reader_working() -> None:
    """http.client closes the connection once an answer with ``Connection: close`` has
    its head, then reads the body: the pipe closes with the last of the two."""
    ops = ScriptedOps([Scripted(Wait.DONE, 4, b"body")])
    sock = PipeSocket(PipeChannel(ops, PIPE), 10)
    reader = sock.makefile("rb")
    sock.close()
    assert ops.closes == 0
    assert reader.read1(100) == b"body"
    reader.close()
    assert ops.closes == 1
    with pytest.raises(ValueError):
        sock.makefile("wb")


# ------------------------------------------------------------------ HTTP over a pipe-like channel


class SocketPipeOps:
    """``PipeOps`` over one end of a socketpair, behaving as Windows does for the pipe:
    a wait ends when the operation can finish, the stop event is set (a stop loses to a
    finished operation, as ``WaitForMultipleObjects`` names the first), or the time is up;
    a cancelled operation that could not finish fails with ERROR_OPERATION_ABORTED; the
    peer closing its end is ERROR_BROKEN_PIPE, never an empty read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._stop_r, self._stop_w = os.pipe()
        self.closed = False

    def start_read(self, size: int) -> _SocketPending:
        return _SocketPending(self, bytearray(size), None)

    def start_write(self, data: bytes) -> _SocketPending:
        return _SocketPending(self, None, data)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class _SocketPending:
    def __init__(self, ops: SocketPipeOps, buffer: bytearray | None, data: bytes | None) -> None:
        self.ops = ops
        self.buffer = buffer
        self.payload = data
        self.cancelled = False

    def _ready(self, timeout: float | None) -> bool:
        sock = self.ops.sock
        readers, writers, _ = select.select(
            [sock] if self.buffer is not None else [],
            [sock] if self.payload is not None else [],
            [],
            timeout,
        )
        return bool(readers or writers)

    def wait(self, timeout_ms: int) -> Wait:
        seconds = None if timeout_ms == INFINITE else timeout_ms / 1000
        sock, stop = self.ops.sock, self.ops._stop_r
        want: list[socket.socket | int] = [sock] if self.buffer is not None else []
        readers, writers, _ = select.select(
            [*want, stop], [sock] if self.payload is not None else [], [], seconds
        )
        if sock in readers or sock in writers:
            return Wait.DONE
        return Wait.STOPPED if stop in readers else Wait.TIMED_OUT

    def cancel(self) -> None:
        self.cancelled = True

    def result(self) -> int:
        if self.cancelled and not self._ready(0):
            raise PipeCallError(ERROR_OPERATION_ABORTED, "The I/O operation has been aborted.")
        try:
            if self.buffer is not None:
                count = self.ops.sock.recv_into(self.buffer)
                if count == 0:
                    raise PipeCallError(ERROR_BROKEN_PIPE, "The pipe has been ended.")
                return count
            assert self.payload is not None
            return self.ops.sock.send(self.payload)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PipeCallError(ERROR_BROKEN_PIPE, "The pipe has been ended.") from e

    def data(self, count: int) -> bytes:
        assert self.buffer is not None
        return bytes(self.buffer[:count])


Handler = Callable[[socket.socket, bytes, bytes], None]


@dataclass
class FakeAgentPipe:
    """Each open of the pipe is a socketpair: the client's end goes into a ``PipeChannel``
    over ``SocketPipeOps``, a thread serves the other end with ``handler(sock, head,
    body)``. ``opened`` records (pipe, timeout); ``refuse`` makes the open fail."""

    handler: Handler
    opened: list[tuple[str, float | None]] = field(default_factory=list)
    channels: list[PipeChannel] = field(default_factory=list)
    refuse: OSError | None = None
    release: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def open(self, pipe: str, timeout: float | None) -> PipeChannel:
        self.opened.append((pipe, timeout))
        if self.refuse is not None:
            raise self.refuse
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        self._threads.append(thread)
        thread.start()
        channel = PipeChannel(SocketPipeOps(ours), pipe)
        self.channels.append(channel)
        return channel

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += sock.recv(65536)
            with contextlib.suppress(OSError):
                self.handler(sock, head, body)

    def stop(self) -> None:
        self.release.set()
        for thread in self._threads:
            thread.join(5)


def answer(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


@pytest.fixture
def on_windows(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Handler], FakeAgentPipe]]:
    """The client as it runs on Windows (its ``sys.platform`` checks are at call time),
    with the caller's SID and the pipe's open (pywin32's, in pipe_client) stood in for."""
    fakes: list[FakeAgentPipe] = []

    def serve(handler: Handler) -> FakeAgentPipe:
        fake = FakeAgentPipe(handler)
        fakes.append(fake)
        monkeypatch.setattr(client, "_open_pipe", fake.open)
        return fake

    monkeypatch.setattr(client, "current_principal", lambda: SID)
    monkeypatch.setattr(sys, "platform", "win32")
    yield serve
    for fake in fakes:
        fake.stop()


def test_first_answer_reaches_the_agent_on_the_users_pipe(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    asked: list[bytes] = []

    def status(sock: socket.socket, head: bytes, body: bytes) -> None:
        asked.append(head.split(b"\r\n", 1)[0])
        sock.sendall(answer(200, {"mode": "enforce", "agent": {"pid": 700}}))

    fake = on_windows(status)
    path, code, body = first_answer(None, "GET", "/v1/status", timeout=7.5)
    assert (str(path), code, body["mode"]) == (PIPE, 200, "enforce")
    assert fake.opened == [(PIPE, 7.5)] and asked == [b"GET /v1/status HTTP/1.1"]
    assert all(c._closed for c in fake.channels)


def test_a_request_body_and_a_large_answer_cross_the_pipe_whole(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    got: list[bytes] = []
    big = {"decisions": ["x" * 1000] * 1000}  # about 1 MB: many reads of MAX_IO

    def identity(sock: socket.socket, head: bytes, body: bytes) -> None:
        got.append(body)
        sock.sendall(answer(200, big))

    on_windows(identity)
    token = {"id_token": "a." + "b" * 100_000 + ".c"}
    code, body = control_request(Path(PIPE), "PUT", "/v1/identity", body=token)
    assert code == 200 and body == big
    assert json.loads(got[0]) == token


def test_a_refusing_agent_answers_as_over_a_socket(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    on_windows(lambda sock, head, body: sock.sendall(answer(429, {"message": "once a minute"})))
    assert control_request(Path(PIPE), "POST", "/v1/policy/refresh") == (
        429,
        {"message": "once a minute"},
    )


def test_a_squatted_pipe_is_a_control_error_naming_who_serves_it(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    fake = on_windows(lambda sock, head, body: None)
    problem = control_server_problem(PIPE, PipeClient(4242, OTHER), service_pid=700)
    assert problem is not None
    fake.refuse = PermissionError(errno.EACCES, problem, PIPE)  # what pipe_client raises
    with pytest.raises(ControlError, match=f"served by {OTHER} \\(pid 4242\\)") as caught:
        first_answer(None, "GET", "/v1/status")
    assert str(caught.value).startswith(f"cannot reach the agent at {PIPE}: pullgate: refusing")


def test_a_silent_agent_times_out_the_request(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    def silent(sock: socket.socket, head: bytes, body: bytes) -> None:
        fake.release.wait(10)

    fake = on_windows(silent)
    started = time.monotonic()
    with pytest.raises(ControlError, match=r"the pipe was silent for 0\.3 s"):
        control_request(Path(PIPE), "GET", "/v1/status", timeout=0.3)
    assert time.monotonic() - started < 3


def test_control_on_windows_takes_a_pipe_name_only(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    fake = on_windows(lambda sock, head, body: sock.sendall(answer(200, {})))
    with pytest.raises(ControlError, match="is not a named pipe of this machine"):
        first_answer("/run/pullgate/control.sock", "GET", "/v1/status")
    first_answer("\\\\.\\PIPE\\pullgate_control_" + SID, "GET", "/v1/status")
    assert fake.opened == [(PIPE, 10.0)]


def test_the_event_stream_over_the_pipe_and_its_keep_alive_timeout(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    def events(sock: socket.socket, head: bytes, body: bytes) -> None:
        sock.sendall(SSE_HEAD + b': keep-alive\n\nevent: decision\ndata: {"a": 1}\n\n')
        sock.sendall(b"event: policy\ndata: {}\n\n")
        fake.release.wait(10)  # then nothing, not even a keep-alive

    fake = on_windows(events)
    (path,) = client.control_paths(None)
    stream = EventStream(path, timeout=0.3)
    stream.open()
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(ControlError, match="sent nothing for 0 s"):
        for event in stream.events():
            got.append(event.event)
    assert got == ["decision", "policy"] and stream.parser.comments == 1
    assert 0.25 < time.monotonic() - started < 3
    assert fake.opened == [(PIPE, 0.3)] and fake.channels[0]._closed


def test_closing_the_event_stream_from_another_thread_ends_a_blocked_read(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    def silent(sock: socket.socket, head: bytes, body: bytes) -> None:
        sock.sendall(SSE_HEAD)
        fake.release.wait(10)

    fake = on_windows(silent)
    stream = EventStream(Path(PIPE), timeout=30)
    stream.open()
    threading.Timer(0.2, stream.close).start()
    started = time.monotonic()
    assert list(stream.events()) == []
    assert time.monotonic() - started < 5
    assert fake.channels[0]._closed


def test_a_refused_event_stream_says_why(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    on_windows(lambda sock, head, body: sock.sendall(answer(503, {"message": "too many"})))
    with pytest.raises(ControlError, match="refused the event stream: HTTP 503: too many"):
        EventStream(Path(PIPE), timeout=5).open()


def test_linux_keeps_its_unix_socket_and_uid() -> None:
    conn = client._connection(Path("/run/pullgate/control.sock"), 5.0)
    assert type(conn) is UnixHTTPConnection
    assert client.current_principal() == os.geteuid()
    with pytest.raises(OSError) as caught:
        client._open_pipe(PIPE, 1.0)
    assert caught.value.errno == errno.EAFNOSUPPORT


def test_the_pipe_connection_is_http_clients(
    on_windows: Callable[[Handler], FakeAgentPipe],
) -> None:
    on_windows(lambda sock, head, body: None)
    conn = client._connection(Path(PIPE), 5.0)
    assert isinstance(conn, PipeHTTPConnection) and conn.pipe == PIPE


# ------------------------------------------------------------------ the CLI on Windows


SHIM = windows.shim_pipe(SID)


def test_the_shims_docker_host_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_url(Path("/run/pullgate/docker.sock")) == "unix:///run/pullgate/docker.sock"
    monkeypatch.setattr(sys, "platform", "win32")
    assert host_url(Path(SHIM)) == "npipe:////./pipe/pullgate_docker_" + SID
    with pytest.raises(ContextError, match="on Windows the shim is a named pipe"):
        host_url(Path("/run/pullgate/docker.sock"))


@pytest.mark.parametrize(
    ("url", "through"),
    [
        ("npipe:////./pipe/pullgate_docker_" + SID, True),
        ("npipe:///./pipe/PULLGATE_DOCKER_" + SID.lower(), True),  # names ignore case
        ("npipe:////./pipe/docker_engine", False),
        ("npipe:////server/pipe/pullgate_docker_" + SID, False),
        ("unix:///run/pullgate/docker.sock", False),
        (None, False),
    ],
)
def test_docker_points_at_the_shims_pipe(url: str | None, through: bool) -> None:
    assert points_at(url, Path(SHIM)) is through


def test_context_install_on_windows_points_docker_at_the_users_pipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(context_cmd, "current_principal", lambda: SID)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    args = argparse.Namespace(name="pullgate", listen=None, config=None, json=True)
    assert context_cmd.run_install(args) == context_cmd.EXIT_OK
    meta = json.loads((context_meta_dir(tmp_path, "pullgate") / "meta.json").read_text())
    assert meta["Endpoints"]["docker"]["Host"] == "npipe:////./pipe/pullgate_docker_" + SID
    capsys.readouterr()
    assert context_cmd.run_status(args) == context_cmd.EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["through_shim"] and status["shim"] == "npipe:////./pipe/pullgate_docker_" + SID


WINDOWS_STATUS = {
    "agent": {"pid": 700, "uid": None, "version": "0.1.0", "uptime_seconds": 5},
    "mode": "enforce",
    "org": "acme",
    "policy": {"state": "fresh", "enforcing": "acme serial 3", "source": "https://p"},
    "listen": windows.shim_pipe_pattern(),
    "upstream": windows.DESKTOP_ENGINE_PIPE,
    "upstream_source": "enforcement: desktop",
    "audit": None,
    "identity": {"configured": False},
    "desktop": {
        "users_dir": None,
        "running": True,
        "failing": False,
        "endpoints": [
            {
                "sid": SID,
                "user": "alice",
                "listen": SHIM,
                "control": PIPE,
                "upstream": windows.DESKTOP_ENGINE_PIPE,
                "upstream_problem": None,
                "context": "installed",
                "context_error": None,
                "bypass_monitor": None,
            }
        ],
    },
    "clock_behind": False,
}


def test_status_shows_a_windows_agents_pipes_as_docker_spells_them() -> None:
    text = status_cmd.format_status(Path(PIPE), WINDOWS_STATUS)
    assert f"control {PIPE}" in text
    assert "npipe:////./pipe/docker_engine (enforcement: desktop)" in text
    assert f"npipe:////./pipe/pullgate_docker_{SID} -> npipe:////./pipe/docker_engine" in text
    assert "unix://" not in text


def test_doctor_on_windows_checks_the_callers_own_endpoint(
    on_windows: Callable[[Handler], FakeAgentPipe],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    on_windows(lambda sock, head, body: sock.sendall(answer(200, WINDOWS_STATUS)))
    monkeypatch.setattr(status_cmd, "current_principal", lambda: SID)
    env = {"DOCKER_HOST": "npipe:////./pipe/pullgate_docker_" + SID}
    checks = {c.name: c for c in status_cmd.diagnose(None, env, tmp_path)}
    assert checks["agent reachable"].result == status_cmd.OK
    assert PIPE in checks["agent reachable"].detail
    assert checks["desktop endpoints"].detail == f"enforcement: desktop; serving alice ({SID})"
    ping = checks[f"Docker Desktop of alice ({SID})"]
    assert ping.result == status_cmd.SKIP and "not pinged from here on Windows" in ping.detail
    assert checks["docker uses the shim"].result == status_cmd.OK
    assert "your endpoint" not in checks

    monkeypatch.setattr(status_cmd, "current_principal", lambda: OTHER)
    theirs = {c.name: c for c in status_cmd.diagnose(None, env, tmp_path)}
    assert theirs["your endpoint"].result == status_cmd.FAIL
    assert f"no endpoint for {OTHER}" in theirs["your endpoint"].detail


def test_doctor_on_windows_without_the_agent_says_to_start_its_service(
    on_windows: Callable[[Handler], FakeAgentPipe],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake = on_windows(lambda sock, head, body: None)
    fake.refuse = pipe_os_error(ERROR_FILE_NOT_FOUND, "", PIPE)
    monkeypatch.setattr(status_cmd, "current_principal", lambda: SID)
    env = {"DOCKER_HOST": "npipe:////./pipe/docker_engine"}
    checks = {c.name: c for c in status_cmd.diagnose(None, env, tmp_path)}
    reach = checks["agent reachable"]
    assert reach.result == status_cmd.FAIL and "no such pipe" in reach.detail
    assert reach.fix is not None and "Start-Service PullgateAgent" in reach.fix
    target = checks["docker uses the shim"]
    assert target.result == status_cmd.FAIL
    assert f"not the shim npipe:////./pipe/pullgate_docker_{SID}" in target.detail
    assert target.fix is not None
    assert f'$env:DOCKER_HOST="npipe:////./pipe/pullgate_docker_{SID}"' in target.fix


def test_policy_refresh_on_windows_goes_through_the_control_pipe_only(
    on_windows: Callable[[Handler], FakeAgentPipe],
    capsys: pytest.CaptureFixture[str],
) -> None:
    refreshed: list[bytes] = []

    def refresh(sock: socket.socket, head: bytes, body: bytes) -> None:
        refreshed.append(head.split(b"\r\n", 1)[0])
        sock.sendall(answer(200, {"result": "accepted serial 4"}))

    fake = on_windows(refresh)
    args = argparse.Namespace(control=None, timeout=30.0, state_dir=None)
    assert policy_cmd.run_refresh(args) == policy_cmd.EXIT_OK
    assert refreshed == [b"POST /v1/policy/refresh HTTP/1.1"]
    assert "accepted serial 4" in capsys.readouterr().out

    fake.refuse = pipe_os_error(ERROR_FILE_NOT_FOUND, "", PIPE)
    assert policy_cmd.run_refresh(args) == policy_cmd.EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "the agent is not reachable" in err and "Restart-Service PullgateAgent" in err


def test_policy_status_on_windows_trusts_the_service_manager_for_the_agents_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "agent.pid").write_text("700\n")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(policy_cmd, "_scm_agent_pid", lambda: 700)
    assert policy_cmd._agent_pid(tmp_path) == 700
    monkeypatch.setattr(policy_cmd, "_scm_agent_pid", lambda: 701)  # a stale pid file
    assert policy_cmd._agent_pid(tmp_path) is None
    monkeypatch.setattr(policy_cmd, "_scm_agent_pid", lambda: None)  # the service is stopped
    assert policy_cmd._agent_pid(tmp_path) is None
