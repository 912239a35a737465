"""Docker Desktop mode's holder check: who holds the connection the agent opened to a
user's Desktop socket, and the socket listening there.

``SO_PEERCRED`` names the process that called ``listen()``; one that hands the socket to
a child and then execs Desktop's program passes the listener rule. First the pure parts:
sock_diag's bytes (``agent.platform.unix_diag``) and the holder rule
(``agent.core.desktop.socket_holders_problem``); then ``peer.check_holders`` and the
bypass monitor's re-check on real sockets and processes. The end-to-end attack, through
the Desktop mode rig, is in ``tests/test_redteam_desktop.py``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.core.desktop import (
    FileFacts,
    ListenerProgram,
    SocketHolder,
    executable_dir_groups,
    socket_holders_problem,
)
from agent.core.events import Event
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger, BypassMonitor
from agent.platform import unix_diag
from agent.platform.peer import ListenerError, check_holders

EXE = "/opt/docker-desktop/bin/com.docker.backend"
LINUX = executable_dir_groups("linux")
SYSTEM_PYTHON = "/usr/bin/python3"
USER = 1000

# --------------------------------------------------------------------- sock_diag's bytes


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(inode: int, state: int, *attrs: bytes, kind: int = 20) -> bytes:
    body = struct.pack("=BBBBIII", socket.AF_UNIX, 1, state, 0, inode, 7, 7) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def _done() -> bytes:
    return struct.pack("=IHHII", 20, unix_diag.NLMSG_DONE, 2, 1, 0) + b"\0" * 4


def _error(code: int) -> bytes:
    return (
        struct.pack("=IHHII", 36, unix_diag.NLMSG_ERROR, 0, 1, 0)
        + struct.pack("=i", code)
        + b"\0" * 16
    )


def test_a_dump_request_asks_for_every_socket_in_the_states() -> None:
    request = unix_diag.diag_request(show=unix_diag.SHOW_VFS, states=1 << unix_diag.STATE_LISTEN)
    length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind) == (len(request), unix_diag.SOCK_DIAG_BY_FAMILY)
    assert flags == unix_diag.NLM_F_REQUEST | unix_diag.NLM_F_DUMP
    family, _proto, _pad, states, inode, show, *cookie = struct.unpack_from(
        "=BBHIIIII", request, 16
    )
    assert (family, states, inode, show) == (socket.AF_UNIX, 1 << 10, 0, unix_diag.SHOW_VFS)
    assert cookie == [0xFFFFFFFF, 0xFFFFFFFF]


def test_an_exact_request_names_one_inode_and_is_no_dump() -> None:
    request = unix_diag.diag_request(show=unix_diag.SHOW_PEER, inode=4242)
    _length, _kind, flags, _seq, _pid = struct.unpack_from("=IHHII", request)
    assert flags == unix_diag.NLM_F_REQUEST
    assert struct.unpack_from("=BBHIIIII", request, 16)[4] == 4242


def test_replies_are_parsed_with_name_peer_and_the_bound_file() -> None:
    data = (
        _message(
            11,
            unix_diag.STATE_ESTABLISHED,
            _attr(0, b"/home/a/.docker/desktop/docker.sock\0"),
            _attr(2, struct.pack("=I", 12)),
            _attr(1, struct.pack("=II", 99, (8 << 20) | 1)),
        )
        + _message(13, unix_diag.STATE_LISTEN, _attr(0, b"\0abstract"))
        + _done()
    )
    sockets, done = unix_diag.parse_diag_replies(data)
    assert done
    assert sockets == [
        unix_diag.UnixSocket(11, 1, "/home/a/.docker/desktop/docker.sock", 12, 99, (8 << 20) | 1),
        unix_diag.UnixSocket(13, 10, "\0abstract"),
    ]


def test_a_reply_without_done_is_not_complete_and_a_short_attribute_ends_parsing() -> None:
    sockets, done = unix_diag.parse_diag_replies(_message(5, 1, struct.pack("=HH", 2, 1)))
    assert (sockets, done) == ([unix_diag.UnixSocket(5, 1)], False)


def test_the_kernels_error_is_an_oserror_and_an_ack_is_the_end() -> None:
    with pytest.raises(OSError) as caught:
        unix_diag.parse_diag_replies(_error(-errno.ENOENT))
    assert caught.value.errno == errno.ENOENT
    assert unix_diag.parse_diag_replies(_error(0)) == ([], True)


# --------------------------------------------------------------------- the holder rule


def _dir(path: str) -> FileFacts:
    return FileFacts(path, stat.S_IFDIR | 0o755, 0, 0, dev=1, ino=len(path))


def _program(pid: int, path: str = EXE) -> ListenerProgram:
    running = FileFacts(path, stat.S_IFREG | 0o755, 0, 0, dev=1, ino=4242)
    parents = tuple(_dir(str(p)) for p in Path(path).parents)
    return ListenerProgram(pid=pid, path=path, running=running, at_path=running, parents=parents)


def _holder(pid: int, path: str = EXE, uid: int = USER) -> SocketHolder:
    return SocketHolder(_program(pid, path), frozenset({uid}))


def _problem(*holders: SocketHolder, unexamined: tuple[tuple[int, str], ...] = ()) -> str | None:
    return socket_holders_problem(
        "the connection", holders, USER, [EXE], LINUX, unexamined=unexamined
    )


def test_one_holder_running_desktops_program_is_fine() -> None:
    assert _problem(_holder(77)) is None
    assert _problem(_holder(77), _holder(78)) is None  # Desktop's own processes, all listed


def test_a_second_holder_running_another_program_is_refused() -> None:
    problem = _problem(_holder(77), _holder(4242, "/usr/bin/python3.11"))
    assert problem == (
        f"/usr/bin/python3.11 (pid 4242), which is not Docker Desktop (desktop_executables: "
        f"{EXE}); it holds the connection"
    )


def test_no_holder_is_refused() -> None:
    problem = _problem()
    assert problem is not None and "none holds the connection" in problem


def test_a_holder_of_another_uid_is_refused_even_running_desktops_program() -> None:
    problem = _problem(_holder(77), _holder(78, uid=0))
    assert problem is not None
    assert "pid 78 (uid 0), not a process of uid 1000's, holding the connection" in problem
    mixed = SocketHolder(_program(79), frozenset({USER, 0}))  # a setuid program's
    assert _problem(mixed) is not None
    assert _problem(SocketHolder(_program(80))) is not None  # uids not read


def test_a_holder_that_cannot_be_identified_is_refused() -> None:
    gone = SocketHolder(
        ListenerProgram(pid=81, unreadable="the process has exited"), frozenset({USER})
    )
    problem = _problem(gone)
    assert problem is not None and "cannot identify (the process has exited)" in problem


def test_processes_that_could_not_be_examined_are_refused() -> None:
    problem = _problem(_holder(77), unexamined=((90, "EACCES"),))
    assert problem is not None and "could not examine (pid 90: EACCES)" in problem


def test_a_replaced_program_file_is_refused_for_a_holder_too() -> None:
    holder = _holder(77)
    spoiled = replace(holder, program=replace(holder.program, deleted=True))
    problem = _problem(spoiled)
    assert problem is not None and "deleted or replaced" in problem


# --------------------------------------------------------------------- real sockets (Linux)

linux_root = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="reads other processes' /proc/PID/fd and installs a program only root may change",
)

_SERVER = r"""
import socket, subprocess, sys, threading
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
held = []
def serve():
    while True:
        c, _ = s.accept()
        c.recv(65536)  # a request, answered with a stream that says nothing
        held.append(c)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    fds = [c.fileno() for c in held] + ([s.fileno()] if line.strip() == "listener" else [])
    child = subprocess.Popen([sys.argv[2], "300"], pass_fds=fds)
    print(child.pid, flush=True)
"""


@dataclass
class Desktop:
    """A stand-in Desktop run from a listed program only root can change (``exe``),
    serving a silent ``/events`` on ``path``; each line sent hands what it holds over
    to a ``sleep`` of its own, whose pid is read back (killed by the fixture)."""

    exe: Path
    path: Path
    proc: subprocess.Popen[str]
    children: list[int]

    def hand_over(self, what: str = "connections") -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.children.append(pid)
        return pid


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Desktop]:
    sleep = shutil.which("sleep")
    if not os.access(SYSTEM_PYTHON, os.X_OK) or sleep is None:
        pytest.skip("needs the system's python3 and sleep(1)")
    directory = tmp_path / "desktop" / "bin"
    directory.mkdir(parents=True)
    for each in (tmp_path, directory.parent, directory):
        each.chmod(0o755)
    exe = directory / "com.docker.backend"
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), exe)
    exe.chmod(0o755)
    path = tmp_path / "docker.sock"
    proc = subprocess.Popen(
        [str(exe), "-c", _SERVER, str(path), os.path.realpath(sleep)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    served = Desktop(exe, path, proc, [])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield served
    finally:
        for pid in served.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        proc.kill()
        proc.wait(timeout=5)


def _asked(path: Path) -> socket.socket:
    """A connection whose request the server has answered (so it has accepted it)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.sendall(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 200")
    return client


@linux_root
def test_the_agents_connection_and_the_listener_held_by_desktop_alone_pass(
    desktop: Desktop,
) -> None:
    with _asked(desktop.path) as client:
        check_holders(client, desktop.path, 0, [str(desktop.exe)])


@linux_root
@pytest.mark.parametrize("what", ["connections", "listener"])
def test_a_connection_or_listener_handed_to_another_program_is_refused(
    desktop: Desktop, what: str
) -> None:
    with _asked(desktop.path) as client:
        child = desktop.hand_over(what)  # the server's end (and the listener) to sleep(1)
        with pytest.raises(ListenerError) as caught:
            check_holders(client, desktop.path, 0, [str(desktop.exe)])
    assert caught.value.held
    assert caught.value.listener is not None and f"(pid {child})" in caught.value.listener
    assert "which is not Docker Desktop" in caught.value.listener
    assert str(caught.value).startswith(f"pullgate: refusing to forward to unix://{desktop.path}")
    if what == "listener":  # a later connection: the listener's holders too
        with _asked(desktop.path) as later, pytest.raises(ListenerError, match="listening there"):
            check_holders(later, desktop.path, 0, [str(desktop.exe)])


@linux_root
def test_holders_of_another_uid_than_the_endpoints_are_refused(desktop: Desktop) -> None:
    with _asked(desktop.path) as client, pytest.raises(ListenerError, match="not a process of"):
        check_holders(client, desktop.path, 4242, [str(desktop.exe)])


@linux_root
def test_the_monitor_rechecks_a_followed_stream_and_stops_following_a_handover(
    desktop: Desktop, tmp_path: Path
) -> None:
    """Passed at the connect; the server's end handed to another program afterwards is
    found by the periodic re-check: not followed, said in status and a notice."""
    events: list[Event] = []

    async def scenario() -> None:
        sink = DecisionSink()
        sink.subscribe(events.append)
        monitor = BypassMonitor(
            desktop.path,
            sink,
            shim_listen=tmp_path / "shim.sock",
            approved=ApprovalLedger(),
            interval=3600.0,
            request_timeout=2.0,
            upstream_uid=0,
            upstream_executables=(str(desktop.exe),),
            holder_interval=0.2,
        )
        await monitor.start()
        try:
            await asyncio.wait_for(monitor.connected.wait(), 10.0)
            assert monitor.status()["listener_problem"] is None
            child = await asyncio.to_thread(desktop.hand_over)
            deadline = time.monotonic() + 10.0
            while monitor.held_problem is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert monitor.held_problem is not None and f"(pid {child})" in monitor.held_problem
            status = monitor.status()
            assert not status["following_events"]
            assert f"(pid {child})" in str(status["listener_problem"])
        finally:
            await monitor.close()

    asyncio.run(scenario())
    notices = [e for e in events if getattr(e, "action", None) == "bypass-suspected"]
    assert any("does not follow the daemon's events" in str(n.reason) for n in notices)
