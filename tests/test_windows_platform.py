"""Windows (issue 16), through its pure parts, on Linux: paths, pipe names, security
descriptors, pipe flags, client attribution, the service's status reports, the stop
handle (with a real agent), the ``pullgate service`` wiring, and mypy for win32 and darwin.

Nothing here runs Windows code: there is no Windows machine. What pywin32 does with these
values (agent.daemon.winservice, agent.platform.named_pipe_server) is type-checked for
win32 here and runs only on a Windows runner (docs/deploy/windows.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path, PureWindowsPath

import pytest

from agent.cli import service_cmd
from agent.cli.main import COMMANDS, build_parser
from agent.control.contract import visible_to
from agent.core.decision import Identity
from agent.core.events import DecisionEvent
from agent.core.peer import PeerInfo, principal_of
from agent.core.policy.default import default_policy
from agent.daemon.audit_log import default_audit_dir
from agent.daemon.bus import DecisionSink
from agent.daemon.handle import AgentHandle
from agent.daemon.main import AgentOptions, run_agent
from agent.daemon.shim import ProtocolFactory, Shim, ShimConfig
from agent.platform import docker_api, windows
from agent.platform.peer import ListenerError
from agent.platform.service_output import OutputTail, open_service_log
from agent.platform.service_status import (
    ERROR_SERVICE_SPECIFIC_ERROR,
    SERVICE_ACCEPT_SHUTDOWN,
    SERVICE_ACCEPT_STOP,
    IllegalServiceMoveError,
    ServiceLifecycle,
    ServiceState,
    exit_message,
)
from agent.platform.windows import ClientVerdict, PipeClient, PipeSpec, WindowsNameError

ROOT = Path(__file__).resolve().parent.parent
SID = "S-1-5-21-3623811015-3361044348-30300820-1013"

# ------------------------------------------------------------------ paths


def test_windows_paths_live_under_program_data() -> None:
    env = {"ProgramData": r"D:\Data"}
    assert windows.state_dir(env) == PureWindowsPath(r"D:\Data\Pullgate\State")
    assert windows.audit_dir(env) == PureWindowsPath(r"D:\Data\Pullgate\Logs")
    assert windows.agent_log_path(env) == PureWindowsPath(r"D:\Data\Pullgate\Logs\agent.log")
    # The audit log's own default (agent.daemon.audit_log) is the same folder.
    assert str(default_audit_dir(platform="win32", environ=env)).replace("/", "\\") == str(
        windows.audit_dir(env)
    )


@pytest.mark.parametrize("value", ["", "relative\\dir", "Data"])
def test_program_data_falls_back_when_unset_or_relative(value: str) -> None:
    assert windows.program_data({"ProgramData": value}) == PureWindowsPath(r"C:\ProgramData")
    assert windows.program_data({}) == PureWindowsPath(r"C:\ProgramData")
    assert windows.program_data({"PROGRAMDATA": r"E:\PD"}) == PureWindowsPath(r"E:\PD")


# ------------------------------------------------------------------ SIDs and pipe names


def test_pipe_names_are_per_user_and_docker_can_name_them() -> None:
    shim = windows.shim_pipe(SID)
    assert shim == r"\\.\pipe\pullgate_docker_" + SID
    assert windows.control_pipe(SID) == r"\\.\pipe\pullgate_control_" + SID
    assert windows.shim_pipe("S-1-5-21-1-2-3-1001") != windows.shim_pipe("S-1-5-21-1-2-3-1002")
    url = windows.docker_host(shim)
    assert url == "npipe:////./pipe/pullgate_docker_" + SID
    assert windows.pipe_from_docker_host(url) == shim
    assert windows.pipe_from_docker_host("npipe:///./pipe/docker_engine") == (
        windows.DESKTOP_ENGINE_PIPE
    )
    assert windows.DESKTOP_ENGINE_PIPE == r"\\.\pipe\docker_engine"


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "S-1-5",  # no sub-authority
        "s-1-5-18",  # ConvertSidToStringSid writes upper case S
        "S-1-5-18\\..\\docker_engine",
        "S-1-5-21-1-2-3-*",
        "S-1-5-21-01-2",  # leading zero: not the canonical form
        "S-1-5-21-4294967296-1",  # a sub-authority is 32 bits
        "S-1-5-" + "-".join(["1"] * 16),  # at most 15 sub-authorities
        "S-1-5-18 ",
        "NT AUTHORITY\\SYSTEM",
    ],
)
def test_only_a_sid_names_a_pipe(sid: str) -> None:
    with pytest.raises(WindowsNameError):
        windows.shim_pipe(sid)
    with pytest.raises(WindowsNameError):
        windows.pipe_sddl(sid)


@pytest.mark.parametrize(
    "url",
    [
        "npipe://server/pipe/docker_engine",  # a remote machine
        "npipe:////./pipe/",
        "npipe:////./pipe/a/b",
        "unix:///var/run/docker.sock",
        "npipe:////./pipe/a\\b",
    ],
)
def test_only_a_local_pipe_url_is_a_pipe(url: str) -> None:
    with pytest.raises(WindowsNameError):
        windows.pipe_from_docker_host(url)


def test_docker_host_refuses_anything_but_a_local_pipe() -> None:
    for pipe in (r"\\server\pipe\x", r"\\.\pipe\a\b", "docker_engine", r"\\.\pipe\a/b"):
        with pytest.raises(WindowsNameError):
            windows.docker_host(pipe)


# ------------------------------------------------------------------ security descriptor


def _aces(sddl: str) -> list[tuple[str, str, str]]:
    """(type, rights, trustee) of each ACE of a DACL in SDDL."""
    dacl = sddl.split("D:", 1)[1]
    assert dacl.startswith("P("), "a protected DACL: nothing inherited"
    out = []
    for ace in dacl[2:-1].split(")("):
        kind, _flags, rights, _object, _inherit, trustee = ace.split(";")
        out.append((kind, rights, trustee))
    return out


def test_a_users_pipe_admits_the_user_system_and_administrators_only() -> None:
    sddl = windows.pipe_sddl(SID)
    assert sddl.startswith("O:SYG:SY")  # owned by LocalSystem: the user cannot rewrite it
    aces = _aces(sddl)
    assert aces[0] == ("D", "GA", "NU")  # network logons first: a deny wins when first
    assert set(aces[1:]) == {("A", "GA", "SY"), ("A", "GA", "BA"), ("A", "GRGW", SID)}
    trustees = {trustee for _, _, trustee in aces}
    assert not trustees & {"WD", "AU", "BU", "IU", "AN", "CO"}  # no one else, ever


def test_the_first_instance_refuses_a_squatter_and_remote_clients() -> None:
    first = PipeSpec.for_user(windows.shim_pipe(SID), SID, first=True)
    later = PipeSpec.for_user(windows.shim_pipe(SID), SID, first=False)
    assert first.open_mode & windows.FILE_FLAG_FIRST_PIPE_INSTANCE
    assert not later.open_mode & windows.FILE_FLAG_FIRST_PIPE_INSTANCE
    for spec in (first, later):
        assert spec.open_mode & windows.PIPE_ACCESS_DUPLEX == windows.PIPE_ACCESS_DUPLEX
        assert spec.open_mode & windows.FILE_FLAG_OVERLAPPED  # the Proactor's completion port
        assert spec.pipe_mode & windows.PIPE_REJECT_REMOTE_CLIENTS
        assert spec.pipe_mode & 0x4 == 0  # PIPE_TYPE_MESSAGE: no, a byte stream like a socket
        assert spec.sddl == windows.pipe_sddl(SID)
    # The values are winbase.h's.
    assert (windows.FILE_FLAG_FIRST_PIPE_INSTANCE, windows.PIPE_REJECT_REMOTE_CLIENTS) == (
        0x00080000,
        0x00000008,
    )


# ------------------------------------------------------------------ who is connected


@pytest.mark.parametrize(
    ("client", "admin", "verdict"),
    [
        (PipeClient(pid=100, sid=SID), False, ClientVerdict.OWNER),
        (PipeClient(pid=100, sid=SID.lower().replace("s-", "S-", 1)), False, ClientVerdict.OWNER),
        (PipeClient(pid=4, sid="S-1-5-18"), False, ClientVerdict.PRIVILEGED),
        (PipeClient(pid=7, sid="S-1-5-21-1-2-3-500"), True, ClientVerdict.PRIVILEGED),
        (PipeClient(pid=8, sid=None), False, ClientVerdict.UNVERIFIED),
        # The ACL admitted only the user; a token of someone else means a handle passed on
        # or a process id reused after the client exited: never attributed to the user.
        (PipeClient(pid=9, sid="S-1-5-21-1-2-3-1014"), False, ClientVerdict.STRANGER),
    ],
)
def test_a_client_is_attributed_by_its_token_never_guessed(
    client: PipeClient, admin: bool, verdict: ClientVerdict
) -> None:
    assert windows.judge_client(SID, client, client_is_admin=admin) is verdict


def test_an_administrator_is_one_whose_token_has_the_group_enabled() -> None:
    admins = windows.ADMINISTRATORS_SID
    enabled = windows.SE_GROUP_ENABLED | 0x1 | 0x2  # mandatory, enabled by default
    assert windows.has_enabled_group([("S-1-1-0", 7), (admins, enabled)], admins)
    # UAC's filtered token: Administrators for deny only, so not an administrator.
    deny_only = windows.SE_GROUP_USE_FOR_DENY_ONLY
    assert not windows.has_enabled_group([(admins, deny_only)], admins)
    assert not windows.has_enabled_group([(admins, enabled | deny_only)], admins)
    assert not windows.has_enabled_group([(admins, 0)], admins)
    assert not windows.has_enabled_group([("S-1-5-32-545", enabled)], admins)


# ------------------------------------------------------------------ signed-in users

ENTRA = "S-1-12-1-1234567890-1234567890-1234567890-123456789"


@pytest.mark.parametrize(
    ("sid", "person"),
    [
        (SID, True),  # a local or Active Directory user
        (ENTRA, True),  # Microsoft Entra ID (Intune's Entra-joined laptops)
        ("S-1-5-18", False),  # LocalSystem
        ("S-1-5-19", False),  # LocalService
        ("S-1-5-90-0-1", False),  # the desktop window manager's virtual account
        ("S-1-5-96-0-1", False),  # the font driver host's
        ("S-1-5-32-544", False),  # a group, Administrators
        ("S-1-5-21-1-2-3", False),  # a domain, not an account in it
    ],
)
def test_only_people_get_pipes(sid: str, person: bool) -> None:
    assert windows.is_user_sid(sid) is person


def test_users_to_serve_one_pair_of_pipes_per_signed_in_person() -> None:
    session = windows.WindowsSession
    sessions = [
        session(0, windows.WTS_DISCONNECTED, "S-1-5-18"),  # services
        session(3, windows.WTS_ACTIVE, SID, "dev"),  # the console
        session(1, windows.WTS_ACTIVE, "S-1-5-90-0-1"),  # DWM of the console
        session(5, windows.WTS_ACTIVE, SID, "dev"),  # the same person over RDP as well
        session(2, windows.WTS_DISCONNECTED, ENTRA, "alice"),  # switched away: Desktop still runs
        session(7, 6, "S-1-5-21-1-2-3-1005", "gone"),  # WTSDown
        session(8, windows.WTS_CONNECTED, None),  # the sign-in screen
    ]
    users = windows.users_to_serve(sessions)
    assert list(users) == [ENTRA, SID]  # by session id: Entra's session 2, then 3
    assert users[SID].session_id == 3


# ------------------------------------------------------------------ Docker Desktop's pipe


def test_the_agent_connects_upstream_without_lending_its_identity() -> None:
    flags = windows.UPSTREAM_FLAGS
    assert flags & windows.SECURITY_SQOS_PRESENT  # without it, the server may impersonate
    assert flags & 0x00030000 == windows.SECURITY_IDENTIFICATION  # identify, never more
    assert flags & windows.FILE_FLAG_OVERLAPPED


def test_docker_desktop_pipe_must_be_the_users_own_or_the_systems() -> None:
    pipe = windows.DESKTOP_ENGINE_PIPE
    assert windows.upstream_server_problem(pipe, SID, PipeClient(10, SID)) is None
    assert windows.upstream_server_problem(pipe, SID, PipeClient(11, "S-1-5-18")) is None
    other = windows.upstream_server_problem(pipe, SID, PipeClient(12, "S-1-5-21-1-2-3-1014"))
    assert other is not None and other.startswith("pullgate: refusing to forward to")
    assert "S-1-5-21-1-2-3-1014 (pid 12)" in other and SID in other
    gone = windows.upstream_server_problem(pipe, SID, PipeClient(13, None))
    assert gone is not None and "an unknown process" in gone


def test_each_users_docker_context_points_at_their_pipe() -> None:
    args = windows.docker_context_create_args(SID)
    assert args[:3] == ("context", "create", windows.CONTEXT_NAME)
    assert args[-2:] == ("--docker", "host=npipe:////./pipe/pullgate_docker_" + SID)
    with pytest.raises(WindowsNameError):
        windows.docker_context_create_args("S-1-5-18 --docker host=tcp://evil")


def test_the_context_is_created_once_then_updated() -> None:
    host = "host=npipe:////./pipe/pullgate_docker_" + SID
    (create,) = windows.docker_context_commands(SID, exists=False)
    assert create == windows.docker_context_create_args(SID)
    (update,) = windows.docker_context_commands(SID, exists=True)
    assert update == ("context", "update", windows.CONTEXT_NAME, "--docker", host)
    every = (*windows.docker_context_commands(SID, exists=False), update)
    # Selecting it is a decision of its own (tests/test_windows_desktop_monitor.py).
    assert not any("use" in args for args in every)


def test_the_users_own_commands_are_shell_ready() -> None:
    text = windows.context_instructions(SID)
    assert text.startswith('docker context create pullgate --description "Docker Desktop')
    assert f"host=npipe:////./pipe/pullgate_docker_{SID}" in text
    assert text.endswith("; docker context use pullgate")


def test_status_names_the_pipes_by_pattern() -> None:
    assert windows.shim_pipe_pattern() == "\\\\.\\pipe\\pullgate_docker_<SID>"
    assert windows.control_pipe_pattern() == "\\\\.\\pipe\\pullgate_control_<SID>"


def test_a_pipe_client_is_named_by_its_tokens_sid_else_the_pipes_user() -> None:
    other = "S-1-5-21-1-2-3-500"
    assert windows.attributed_sid(SID, PipeClient(7, SID)) == SID
    assert windows.attributed_sid(SID, PipeClient(7, other)) == other  # an administrator
    assert windows.attributed_sid(SID, PipeClient(7, None)) == SID  # unverified: the pipe's


def test_a_principal_is_the_uid_where_there_is_one_else_the_sid() -> None:
    assert principal_of(PeerInfo(pid=1, uid=1000, user="alice")) == 1000
    assert principal_of(PeerInfo(pid=1, uid=0, user="root")) == 0
    assert principal_of(PeerInfo(pid=1, uid=None, user=SID)) == SID
    assert principal_of(PeerInfo(pid=1)) is None  # unix, credentials unknown: as before


def test_a_windows_caller_sees_their_own_decisions_by_sid() -> None:
    mine = _decision(PeerInfo(pid=5, user=SID))
    theirs = _decision(PeerInfo(pid=6, user="S-1-5-21-1-2-3-1014"))
    assert visible_to(mine, SID) and not visible_to(theirs, SID)
    assert visible_to(theirs, 0)  # root's view, unchanged
    unix = _decision(PeerInfo(pid=7, uid=1000, user="alice"))
    assert visible_to(unix, 1000) and not visible_to(unix, SID) and not visible_to(unix, 1001)


def _decision(peer: PeerInfo) -> DecisionEvent:
    return DecisionEvent(
        action="pull",
        decision="allow",
        image="docker.io/library/alpine:3.20",
        input="alpine:3.20",
        category="official",
        rule="official",
        reason="test",
        policy="built-in",
        policy_serial=0,
        endpoint="/images/create",
        peer=peer,
    )


# ------------------------------------------------------------------ the shim on a transport
#
# A Windows endpoint is the shim with an EndpointTransport (agent.daemon.windows_desktop's
# PipeEndpoint). The same seam over unix sockets shows, here, what the shim does with any
# transport: serve its clients, forward to the daemon it connects, name the client as
# the transport does (a SID, no uid), look up the sign-in by that SID, and report a
# refused daemon.


class _SocketTransport:
    """An EndpointTransport over unix sockets, naming every client ``sid``."""

    def __init__(self, listen: Path, upstream: Path, sid: str) -> None:
        self.listen, self.upstream, self.sid = listen, upstream, sid
        self.refuse: str | None = None
        self.requests: list[str] = []

    async def serve(self, factory: ProtocolFactory) -> _Closing:
        server = await asyncio.get_running_loop().create_unix_server(factory, str(self.listen))
        return _Closing(server)

    async def connect(self, factory: ProtocolFactory) -> asyncio.BaseProtocol:
        if self.refuse is not None:
            raise ListenerError(self.refuse)
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_unix_connection(factory, str(self.upstream))
        return protocol

    def peer(self, transport: asyncio.BaseTransport) -> PeerInfo:
        return PeerInfo(pid=4242, user=self.sid)

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        self.requests.append(f"{method} {target}")
        return await docker_api.request_over(
            lambda: asyncio.open_unix_connection(str(self.upstream)),
            method,
            target,
            timeout=timeout,
        )


class _Closing:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class _Identities:
    def __init__(self) -> None:
        self.asked: list[object] = []

    def identity_for(self, uid: int | str | None) -> Identity | None:
        self.asked.append(uid)
        return None


async def _fake_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK")
    await writer.drain()
    writer.close()


async def _ask(path: Path, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    return head + body


def test_the_shim_serves_forwards_and_names_clients_through_its_transport(
    tmp_path: Path,
) -> None:
    events: list[object] = []

    async def scenario() -> None:
        upstream, listen = tmp_path / "daemon.sock", tmp_path / "shim.sock"
        daemon = await asyncio.start_unix_server(_fake_daemon, str(upstream))
        sink = DecisionSink()
        sink.subscribe(events.append)
        via = _SocketTransport(listen, upstream, SID)
        identities = _Identities()
        shim = Shim(
            ShimConfig(listen=Path(windows.shim_pipe(SID)), upstream=upstream),
            default_policy,
            sink,
            identities=identities,
            transport=via,
        )
        await shim.start()
        try:
            ping = await _ask(listen, b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            assert ping.startswith(b"HTTP/1.1 200") and ping.endswith(b"OK")
            refused = await _ask(
                listen,
                b"POST /v1.43/images/create?fromImage=someone%2Ftool&tag=1 HTTP/1.1\r\n"
                b"Host: docker\r\nContent-Length: 0\r\n\r\n",
            )
            assert refused.startswith(b"HTTP/1.1 403"), refused
            assert identities.asked == [SID]  # the sign-in is looked up by the SID
            via.refuse = "pullgate: refusing to forward to docker_engine: it is someone else's"
            answer = await _ask(listen, b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 502") and b"someone else" in answer
            assert shim.upstream_problem == via.refuse
        finally:
            await shim.close()
            daemon.close()
            await daemon.wait_closed()

    asyncio.run(scenario())
    (decision,) = [e for e in events if isinstance(e, DecisionEvent)]
    assert decision.decision == "deny"
    assert decision.peer.uid is None and decision.peer.user == SID and decision.peer.pid == 4242


# ------------------------------------------------------------------ the service's reports


def test_service_reports_start_pending_then_running_then_stop() -> None:
    life = ServiceLifecycle()
    first = life.start_pending()
    again = life.start_pending()
    assert (first.state, first.checkpoint, first.controls_accepted) == (
        ServiceState.START_PENDING,
        1,
        0,  # nothing to stop yet
    )
    assert again.checkpoint == 2 and first.wait_hint_ms >= 10_000
    running = life.running()
    assert running.checkpoint == 0 and running.wait_hint_ms == 0
    assert running.controls_accepted == SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN
    stopping = life.request_stop()
    assert stopping is not None and stopping.state is ServiceState.STOP_PENDING
    assert stopping.controls_accepted == 0 and stopping.checkpoint == 1
    assert life.request_stop() is None  # shutdown after stop: once is enough
    done = life.stopped(0)
    assert done.as_tuple() == (0x10, 1, 0, 0, 0, 0, 0)
    with pytest.raises(IllegalServiceMoveError, match="STOPPED -> RUNNING"):
        life.running()


def test_a_failed_agent_stops_the_service_with_its_exit_code() -> None:
    life = ServiceLifecycle()
    life.start_pending()
    status = life.stopped(2)
    assert status.win32_exit_code == ERROR_SERVICE_SPECIFIC_ERROR
    assert status.service_exit_code == 2


def test_illegal_service_moves_are_our_bug() -> None:
    with pytest.raises(IllegalServiceMoveError, match="nothing reported -> RUNNING"):
        ServiceLifecycle().running()
    life = ServiceLifecycle()
    life.start_pending()
    life.running()
    with pytest.raises(IllegalServiceMoveError, match="RUNNING -> START_PENDING"):
        life.start_pending()


def test_the_event_log_message_says_what_failed_and_where_to_look() -> None:
    text = exit_message(
        "PullgateAgent",
        2,
        [f"line {i}\n" for i in range(30)] + ["pullgate agent: policy_url: not https"],
        r"C:\ProgramData\Pullgate\Logs\agent.log",
    )
    assert text.startswith("PullgateAgent could not start: the configuration cannot be used")
    assert "(exit code 2)" in text and "pullgate agent: policy_url: not https" in text
    assert "line 20" not in text  # the last ten lines only
    assert text.endswith(r"C:\ProgramData\Pullgate\Logs\agent.log")


def test_the_services_output_goes_to_its_log_and_keeps_the_last_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "Logs" / "agent.log"  # the directory is made if missing
    with open_service_log(log_path) as target:
        out = OutputTail(target, keep=3)
        print("pullgate agent: ready", file=out)
        out.write("partial ")
        assert list(out.lines) == ["pullgate agent: ready"]
        out.write("line\nlast\n")
        for i in range(5):
            print(f"n{i}", file=out)
        assert list(out.lines) == ["n2", "n3", "n4"]
        assert out.fileno() == target.fileno()
    text = log_path.read_text()
    assert text.startswith("pullgate agent: ready\npartial line\nlast\nn0\n")


def test_the_services_log_is_kept_once_when_large(tmp_path: Path) -> None:
    log_path = tmp_path / "agent.log"
    log_path.write_text("x" * 100)
    with open_service_log(log_path, rotate_bytes=50) as f:
        f.write("new\n")
    assert (tmp_path / "agent.log.1").read_text() == "x" * 100
    assert log_path.read_text() == "new\n"
    (tmp_path / "blocked").write_text("a file where the directory should be")
    with open_service_log(tmp_path / "blocked" / "agent.log") as f:
        assert f.name == os.devnull  # the service starts all the same


# ------------------------------------------------------------------ the stop handle


def _agent_options(tmp_path: Path, handle: AgentHandle) -> AgentOptions:
    return AgentOptions(
        listen=tmp_path / "docker.sock",
        upstream=f"unix://{tmp_path / 'upstream.sock'}",
        control=tmp_path / "control.sock",
        state_dir=tmp_path / "state",
        audit_dir=tmp_path / "audit",
        watch=False,
        handle=handle,
    )


def test_another_thread_stops_a_running_agent(tmp_path: Path) -> None:
    """The Windows service's path, with a real agent: the SCM's control thread asks, the
    agent's loop on the main thread stops cleanly (exit 0) after it was ready."""
    stopper: list[threading.Thread] = []

    def on_ready() -> None:
        assert (tmp_path / "docker.sock").exists()  # serving when called ready
        thread = threading.Thread(target=handle.request_stop)
        stopper.append(thread)
        thread.start()

    handle = AgentHandle(on_ready=on_ready)
    assert run_agent(_agent_options(tmp_path, handle)) == 0
    assert handle.ready.is_set() and handle.stop_requested
    stopper[0].join(5)
    assert not (tmp_path / "docker.sock").exists()
    handle.request_stop()  # after the loop closed: nothing to do, no error


def test_a_stop_asked_before_the_loop_runs_is_kept(tmp_path: Path) -> None:
    handle = AgentHandle()
    handle.request_stop()  # the SCM stopped the service while it was starting
    assert run_agent(_agent_options(tmp_path, handle)) == 0


# ------------------------------------------------------------------ `pullgate service`


def test_pullgate_service_is_a_subcommand_passing_agent_arguments() -> None:
    assert COMMANDS["service"] == "agent.cli.service_cmd"
    argv = ["service", "--", "--config", r"C:\pullgate.json", "--no-watch"]
    args = build_parser(argv).parse_args(argv)
    assert args.run is service_cmd.run
    agent_args = service_cmd.agent_arguments(args)
    assert agent_args == ["--config", r"C:\pullgate.json", "--no-watch"]
    bare = build_parser(["service"]).parse_args(["service"])
    assert service_cmd.agent_arguments(bare) == []  # what the MSI's service runs
    # The agent parses them as its own once the service runs.
    agent_argv = ["agent", *agent_args]
    parsed = build_parser(agent_argv).parse_args(agent_argv)
    assert parsed.config == r"C:\pullgate.json" and parsed.no_watch


def test_pullgate_service_imports_nothing_heavy() -> None:
    """So that on Windows an agent that cannot be imported is reported by the running
    service (Event Log, failed start), not a process that never answered the SCM."""
    code = (
        "import sys; from agent.cli.main import build_parser;"
        "build_parser(['service']).parse_args(['service']);"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('agent.daemon'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    assert out == ""


def test_pullgate_service_off_windows_says_what_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert service_cmd.run(argparse.Namespace(agent_args=[])) == service_cmd.EXIT_NOT_WINDOWS
    assert "pullgate agent" in capsys.readouterr().err


def test_the_agent_imports_without_posix_only_modules() -> None:
    """As on Windows, where pwd, grp, fcntl, resource, termios and syslog do not exist:
    every module of the agent imports (so ``pullgate service`` reaches the agent, and the
    CLI's status and doctor load), the Windows-only ones aside."""
    code = """
import importlib, pkgutil, sys
for name in ("pwd", "grp", "fcntl", "resource", "termios", "syslog"):
    sys.modules[name] = None
import agent
failed = []
for info in pkgutil.walk_packages(agent.__path__, "agent."):
    if info.name.endswith("__main__"):  # runs a command when imported
        continue
    try:
        importlib.import_module(info.name)
    except AssertionError:  # assert sys.platform == "win32": Windows-only
        pass
    except Exception as e:
        failed.append(f"{info.name}: {e!r}")
print("\\n".join(failed))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    assert out == ""


def test_windows_only_modules_are_never_imported_here() -> None:
    for name in (
        "agent.daemon.winservice",
        "agent.daemon.windows_desktop",
        "agent.platform.named_pipe_server",
        "agent.platform.pipe_client",
        "agent.platform.windows_eventlog",
        "agent.platform.windows_sessions",
    ):
        with pytest.raises(AssertionError):
            importlib.import_module(name)
        sys.modules.pop(name, None)


# ------------------------------------------------------------------ mypy per platform


def test_the_win32_type_check_covers_the_whole_agent_and_tray() -> None:
    """scripts/mypy-platforms.sh checks every module of the agent and the tray for win32,
    none left out: the CLI commands that talk to the agent (``status``, ``doctor``,
    ``context``, ``policy``), their client and the tray reach it there through the control
    pipe (``agent.platform.pipe_client``)."""
    script = (ROOT / "scripts" / "mypy-platforms.sh").read_text()
    (win32,) = re.findall(r"^WIN32=\(([^)]*)\)$", script, re.MULTILINE)
    assert win32.split() == ["agent", "ui"]
    assert "--exclude" not in script


def test_the_service_imports_none_of_the_control_clients_code() -> None:
    """The service (``pullgate service`` -> ``pullgate agent`` -> run_agent, and the
    Windows Desktop endpoints) serves the control API and loads none of its client side:
    ``agent.control.client`` and its pipe transport are the CLI's and the tray's."""
    code = (
        "import sys\n"
        "from agent.cli.main import build_parser\n"
        "from agent.cli import agent_cmd, service_cmd\n"
        "import agent.daemon.main, agent.daemon.identities\n"
        "build_parser(['agent']).parse_args(['agent'])\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('agent'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    # What windows_desktop imports besides (it cannot be imported here).
    windows_desktop = (ROOT / "agent" / "daemon" / "windows_desktop.py").read_text()
    imported = re.findall(r"^from (agent\.[\w.]+) import", windows_desktop, re.MULTILINE)
    modules = {*out, *imported}
    assert {"agent.daemon.main", "agent.daemon.shim", "agent.control.contract"} <= modules
    client_side = {
        "agent.control.client",
        "agent.platform.pipe_client",
        "agent.platform.pipe_stream",
        "agent.platform.windows_control",
    }
    assert not modules & client_side


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_platform_code_type_checks_for(platform: str) -> None:
    """What scripts/test.sh runs (mypy --platform), so a change that breaks the Windows or
    macOS code fails here too."""
    out = subprocess.run(
        ["bash", "scripts/mypy-platforms.sh", platform],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PULLGATE_VENV": str(Path(sys.executable).parent.parent)},
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
