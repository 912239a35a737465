"""Docker Desktop mode on Windows, run on Linux: the user's docker context (read back and
selected by the same rule as on macOS and Linux) and a bypass monitor per signed-in user.

``agent.daemon.windows_endpoints`` holds everything but the calls into Windows; here it
gets a ``WindowsMachine`` over unix sockets: each user's "Desktop pipe" is a fake daemon
of their own (answers pulls, streams ``/events``), their docker CLI a script of answers.
The pure parts (``agent.core.desktop_context``, ``agent.platform.windows``) are tested
with the CLI's real output. What pywin32 does (``agent.daemon.windows_desktop``: the
pipes, ``CreateProcessAsUserW`` with the output pipes) is type-checked for win32 by
tests/test_windows_platform.py and runs only on a Windows runner.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config.keys import DesktopContext
from agent.core.desktop_context import (
    CappedOutput,
    CliResult,
    ContextOutputError,
    choose_context,
    parse_context_host,
    parse_context_show,
    valid_context_name,
)
from agent.core.events import DecisionEvent, Event, NoticeEvent
from agent.core.peer import PeerInfo
from agent.core.policy.default import default_policy
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger, container_socket_mounts
from agent.daemon.desktop_common import EndpointSink
from agent.daemon.shim import ProtocolFactory
from agent.daemon.windows_endpoints import ClientConnected, StreamPair, WindowsDesktopEndpoints
from agent.platform import docker_api, windows
from agent.platform.peer import ListenerError
from agent.platform.windows import WindowsSession

ALICE = "S-1-5-21-3623811015-3361044348-30300820-1013"
BOB = "S-1-5-21-3623811015-3361044348-30300820-1014"
OURS = "npipe:////./pipe/pullgate_docker_"

# ------------------------------------------------------------------ the CLI's answers


def _inspect(name: str, host: str | None) -> bytes:
    """What ``docker context inspect NAME`` prints (docker 28, trimmed paths)."""
    endpoints = {} if host is None else {"docker": {"Host": host, "SkipTLSVerify": False}}
    context = {
        "Name": name,
        "Metadata": {"Description": "x"},
        "Endpoints": endpoints,
        "TLSMaterial": {},
        "Storage": {"MetadataPath": "C:\\Users\\a\\.docker\\contexts\\meta\\f", "TLSPath": "t"},
    }
    return (json.dumps([context], indent=4) + "\n").encode()


def test_the_context_host_is_read_from_the_clis_json() -> None:
    assert parse_context_host(_inspect("remote", "ssh://ci"), "remote") == "ssh://ci"
    assert parse_context_host(_inspect("bare", None), "bare") is None
    for bad, why in (
        (b"[]\n", "one context"),  # what `inspect` prints for a context that is gone
        (b"npipe:////./pipe/x\n", "JSON"),  # a --format answer, not JSON
        (_inspect("other", "ssh://x"), "another context"),
        (b'[{"Name": "a", "Name": "b"}]', "JSON"),  # duplicate keys: strict_json
        (b'[{"Name": "remote", "Endpoints": {"docker": {"Host": 7}}}]', "not a string"),
        (b"[" * 5000, "JSON"),  # nesting bounded, no RecursionError
    ):
        with pytest.raises(ContextOutputError, match=why):
            parse_context_host(bad, "remote")


def test_the_current_context_is_one_name_or_none() -> None:
    assert parse_context_show(b"desktop-linux\r\n") == "desktop-linux"
    assert parse_context_show(b"") is None
    assert parse_context_show(b"a\nb\n") is None
    assert valid_context_name("desktop-linux") and valid_context_name("a+b.c_d")
    for name in ("a", "-x", "--format={{.}}", "a b", "", "default\n"):
        assert not valid_context_name(name), name


def test_cli_output_is_kept_up_to_its_limit_and_the_rest_counted() -> None:
    out = CappedOutput(limit=4)
    out.feed(b"abc")
    out.feed(b"defg")
    out.feed(b"h")
    assert (out.value, out.dropped) == (b"abcd", 4)
    assert CliResult(1, stderr=b"one\nerror: no such context\n").last_error_line() == (
        "error: no such context"
    )
    assert CliResult(1).last_error_line() == "no message"


@pytest.mark.parametrize(
    ("current", "host", "select", "status"),
    [
        (None, None, True, "selected (was default)"),
        ("desktop-linux", None, True, "selected (was desktop-linux)"),
        ("pullgate", None, False, "selected"),
        ("mine", "npipe:////./pipe/docker_engine", True, "selected (was mine)"),
        (
            "remote",
            "ssh://ci",
            False,
            "installed; the user's own context 'remote' (ssh://ci) is kept",
        ),
    ],
)
def test_the_context_rule_and_its_words(
    current: str | None, host: str | None, select: bool, status: str
) -> None:
    choice = choose_context(
        install_only=False,
        current=current,
        current_host=host,
        desktop_host="npipe:////./pipe/docker_engine",
        ours="pullgate",
    )
    assert (choice.select, choice.status) == (select, status)
    install = choose_context(
        install_only=True, current=current, current_host=host, desktop_host="x", ours="pullgate"
    )
    assert not install.select and install.status.endswith("(not changed: install)")


def test_the_context_is_created_updated_or_left_as_it_is() -> None:
    ours = OURS + ALICE
    (create,) = windows.docker_context_commands(ALICE, exists=False)
    assert create == windows.docker_context_create_args(ALICE)
    (update,) = windows.docker_context_commands(ALICE, exists=True, host="npipe:////./pipe/x")
    assert update == ("context", "update", "pullgate", "--docker", f"host={ours}")
    assert windows.docker_context_commands(ALICE, exists=True) == (update,)  # host unread
    assert windows.docker_context_commands(ALICE, exists=True, host=ours) == ()
    assert windows.context_use_args() == ("context", "use", "pullgate")
    assert windows.context_inspect_args("remote") == ("context", "inspect", "remote")


@pytest.mark.parametrize(
    ("host", "seen"),
    [
        ("npipe:////./pipe/docker_engine", "npipe:////./pipe/docker_engine"),
        ("npipe:///./pipe/Docker_Engine", "npipe:////./pipe/docker_engine"),
        ("npipe:////./pipe/dockerDesktopLinuxEngine", "npipe:////./pipe/docker_engine"),
        ("npipe:////./pipe/dockerDesktopWindowsEngine", "npipe:////./pipe/docker_engine"),
        ("npipe:////./pipe/pullgate_docker_" + ALICE, "npipe:////./pipe/pullgate_docker_" + ALICE),
        ("npipe://ci/pipe/docker_engine", "npipe://ci/pipe/docker_engine"),  # another machine
        ("ssh://ci", "ssh://ci"),
        (None, None),
    ],
)
def test_any_spelling_of_desktops_pipes_is_desktop(host: str | None, seen: str | None) -> None:
    assert windows.desktop_host(host) == seen


def test_the_cli_is_started_hidden_inheriting_only_its_own_handles() -> None:
    """The SDK's values (winbase.h, winnt.h): a wrong bit here is a visible console, an
    environment read as ANSI, or every inheritable handle of the service in the user's
    process."""
    assert windows.CLI_CREATION_FLAGS == 0x08000000 | 0x00000400 | 0x00080000
    assert windows.PROC_THREAD_ATTRIBUTE_HANDLE_LIST == 0x00020002
    assert (windows.STARTF_USESTDHANDLES, windows.HANDLE_FLAG_INHERIT) == (0x100, 1)
    assert windows.USER_DESKTOP == "winsta0\\default"


def test_a_bypass_notice_tells_a_windows_user_what_to_run() -> None:
    fix = windows.bypass_fix(ALICE)
    assert f"({OURS}{ALICE})" in fix and "`docker context use pullgate`" in fix
    assert "unix://" not in fix and "pullgate context install" not in fix


def test_a_pipe_mount_is_matched_as_written_never_resolved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolving ``\\\\.\\pipe\\docker_engine`` as LocalSystem would open it (a client the
    pipe's server could impersonate): a Windows monitor compares names as written."""

    def no_resolving(path: object) -> str:
        raise AssertionError(f"resolved {path}")

    monkeypatch.setattr(os.path, "realpath", no_resolving)
    pipe = Path(windows.DESKTOP_ENGINE_PIPE)
    container = {
        "Mounts": [
            {"Type": "npipe", "Source": windows.DESKTOP_ENGINE_PIPE, "Destination": "p"},
            {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "s"},
            {"Type": "bind", "Source": "/var/run", "Destination": "d"},
            {"Type": "volume", "Source": windows.DESKTOP_ENGINE_PIPE, "Destination": "v"},
            {"Type": "bind", "Source": "C:\\src", "Destination": "/src"},
        ]
    }
    found = container_socket_mounts(container, pipe, resolve=False)
    assert [m["destination"] for m in found] == ["p", "s", "d"]


def test_an_endpoints_approvals_are_its_own() -> None:
    """Desktop mode (unix and Windows): what one user's endpoint let through is in that
    endpoint's ledger only, and every event still reaches the agent's sink."""
    agent_sink, seen = DecisionSink(), list[Event]()
    agent_sink.subscribe(seen.append)
    alice, bob = ApprovalLedger(), ApprovalLedger()
    alices = EndpointSink(agent_sink, alice)
    EndpointSink(agent_sink, bob)
    now = time.time()
    pulled = _decision("docker.io/library/alpine:3.20", now)
    alices.emit(pulled)
    assert seen == [pulled]
    assert alice.was_approved("alpine:3.20", now + 1)
    assert not bob.was_approved("alpine:3.20", now + 1)


def _decision(image: str, at: float, verdict: str = "allow") -> DecisionEvent:
    return DecisionEvent(
        action="image-pull",
        decision=verdict,
        image=image,
        input=image,
        category="official",
        rule="official",
        reason="test",
        policy="built-in",
        policy_serial=0,
        endpoint="POST /images/create",
        peer=PeerInfo(user=ALICE),
        time=at,
    )


# ------------------------------------------------------------------ a machine on unix sockets


class FakeDaemon:
    """One user's Docker Desktop: answers pulls and pings, lists no containers, and
    streams the events it is told to (one ``GET /events`` stream at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[str] = []
        self.events: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def close(self) -> None:
        for writer in self.events:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def pulled(self, ref: str) -> None:
        """The daemon reports a pull of ``ref`` to every events stream."""
        now = time.time()
        event = {
            "Type": "image",
            "Action": "pull",
            "Actor": {"ID": ref, "Attributes": {"name": ref.split(":", maxsplit=1)[0]}},
            "time": int(now),
            "timeNano": int(now * 1e9),
        }
        data = json.dumps(event).encode() + b"\n"
        for writer in self.events:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        target = line.split(" ")[1]
        if "/events" in target:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            self.events.append(writer)
            return
        body = b"[]" if "/containers/json" in target else b'{"status":"done"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()


class _Closing:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class SocketTransport:
    """A ``UserTransport`` over unix sockets: the user's pipe is ``listen``, their
    Desktop ``daemon``; ``refuse`` plays a Desktop pipe served by someone else."""

    def __init__(self, sid: str, listen: Path, daemon: Path) -> None:
        self.sid, self.listen, self.daemon = sid, listen, daemon
        self.refuse: str | None = None
        self.opened = 0
        self.squatted = False

    async def serve(self, factory: ProtocolFactory) -> _Closing:
        if self.squatted:
            raise OSError(5, f"{windows.shim_pipe(self.sid)}: another process serves it")
        loop = asyncio.get_running_loop()
        return _Closing(await loop.create_unix_server(factory, str(self.listen)))

    async def connect(self, factory: ProtocolFactory) -> asyncio.BaseProtocol:
        if self.refuse is not None:
            raise ListenerError(self.refuse)
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_unix_connection(factory, str(self.daemon))
        return protocol

    def peer(self, transport: asyncio.BaseTransport) -> PeerInfo:
        return PeerInfo(pid=4242, user=self.sid)

    async def open_streams(self) -> StreamPair:
        self.opened += 1
        if self.refuse is not None:
            raise ListenerError(self.refuse)
        return await asyncio.open_unix_connection(str(self.daemon))

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        return await docker_api.request_over(self.open_streams, method, target, timeout=timeout)


class FakeMachine:
    """``WindowsMachine`` for the test: who is signed in, their transports, and a docker
    CLI per user that answers from ``contexts`` (name -> host) and ``current``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.signed_in: list[WindowsSession] = []
        self.transports: dict[str, SocketTransport] = {}
        self.daemons: dict[str, FakeDaemon] = {}
        self.contexts: dict[str, dict[str, str]] = {}
        self.current: dict[str, str | None] = {}
        self.cli_calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail: tuple[str, ...] | None = None
        self.squat: set[str] = set()
        # Answers that replace the script's (a CLI that prints something else).
        self.override: dict[tuple[str, ...], CliResult] = {}

    def sign_in(self, sid: str, session_id: int) -> None:
        self.signed_in.append(WindowsSession(session_id, windows.WTS_ACTIVE, sid, f"u{sid[-4:]}"))
        self.contexts.setdefault(
            sid, {"desktop-linux": "npipe:////./pipe/dockerDesktopLinuxEngine"}
        )
        self.current.setdefault(sid, "desktop-linux")

    def sessions(self) -> list[WindowsSession]:
        return list(self.signed_in)

    def transport(self, sid: str, sink: DecisionSink) -> SocketTransport:
        transport = SocketTransport(sid, self.tmp / f"{sid[-4:]}.pipe", self.daemons[sid].path)
        transport.squatted = sid in self.squat
        self.transports[sid] = transport
        return transport

    def control_pipe(self, sid: str, client_connected: ClientConnected) -> Any:
        raise AssertionError("no control server in these tests")

    def run_cli(self, session_id: int, cli: str, args: tuple[str, ...]) -> CliResult:
        sid = next(s.sid for s in self.signed_in if s.session_id == session_id)
        assert sid is not None
        self.cli_calls.append((sid, args))
        if args == self.fail:
            return CliResult(1, stderr=b"error: the disk is full\n")
        if args in self.override:
            return self.override[args]
        contexts = self.contexts[sid]
        match args:
            case ("context", "inspect", name):
                if name not in contexts:
                    return CliResult(1, b"[]\n", b'context "x": context not found\n')
                return CliResult(0, _inspect(name, contexts[name]))
            case ("context", "create", name, "--description", _, "--docker", host):
                contexts[name] = host.removeprefix("host=")
                return CliResult(0, stderr=f'Successfully created context "{name}"\n'.encode())
            case ("context", "update", name, "--docker", host):
                contexts[name] = host.removeprefix("host=")
                return CliResult(0, b"pullgate\n")
            case ("context", "show"):
                return CliResult(0, f"{self.current[sid] or 'default'}\n".encode())
            case ("context", "use", name):
                self.current[sid] = name
                return CliResult(0, b"pullgate\n")
        raise AssertionError(f"unexpected docker {args}")


Scenario = Callable[[WindowsDesktopEndpoints, FakeMachine, list[Event]], Awaitable[None]]


def _run(
    users: list[str],
    scenario: Scenario,
    setup: Callable[[FakeMachine], None] = lambda machine: None,
    **options: Any,
) -> list[Event]:
    """``scenario`` against endpoints for ``users`` (signed in from the start, then
    ``setup``), each with a fake Desktop of their own; every event the agent emitted."""
    events: list[Event] = []
    tmp = Path(tempfile.mkdtemp(prefix="pgwin-", dir="/tmp"))  # short: socket paths
    cli = tmp / "docker.exe"
    cli.write_text("")

    async def main() -> None:
        machine = FakeMachine(tmp)
        for number, sid in enumerate(users, start=1):
            machine.daemons[sid] = FakeDaemon(tmp / f"desktop-{number}.sock")
            await machine.daemons[sid].start()
            machine.sign_in(sid, number)
        setup(machine)
        sink = DecisionSink()
        sink.subscribe(events.append)
        endpoints = WindowsDesktopEndpoints(
            machine=machine,
            policy=default_policy,
            sink=sink,
            control=None,
            interval=0.1,
            **{"docker_cli": str(cli), **options},
        )
        await endpoints.start()
        try:
            await scenario(endpoints, machine, events)
        finally:
            await endpoints.close()
            for daemon in machine.daemons.values():
                await daemon.close()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return events


async def _until(what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return got


def _endpoint(endpoints: WindowsDesktopEndpoints, sid: str) -> dict[str, Any] | None:
    return next((e for e in endpoints.status()["endpoints"] if e["sid"] == sid), None)


async def _pull(listen: Path, image: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(listen))
    writer.write(
        f"POST /v1.47/images/create?fromImage={image}&tag=latest HTTP/1.1\r\n"
        "Host: docker\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def _bypasses(events: list[Event]) -> list[NoticeEvent]:
    return [e for e in events if isinstance(e, NoticeEvent) and e.action == "bypass-suspected"]


def test_each_user_gets_a_monitor_that_reports_only_what_did_not_go_through_their_pipe() -> None:
    """Alice pulls alpine through her pipe; both Desktops then report a pull of alpine.
    Alice's monitor finds it approved; Bob's, whose own pipe approved nothing, reports
    it, with the fix in a Windows user's terms. Bob signing out stops his monitor."""
    seen: dict[str, Any] = {}

    def _following(sid: str) -> bool:
        endpoint = _endpoint(seen["endpoints"], sid)
        return endpoint is not None and bool(endpoint["bypass_monitor"]["following_events"])

    async def scenario(
        endpoints: WindowsDesktopEndpoints, machine: FakeMachine, events: list[Event]
    ) -> None:
        seen["endpoints"] = endpoints
        for sid in (ALICE, BOB):
            await _until(f"{sid}'s monitor to follow events", functools.partial(_following, sid))
        answer = await _pull(machine.transports[ALICE].listen, "alpine")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert any("/images/create" in r for r in machine.daemons[ALICE].requests)
        for sid in (ALICE, BOB):
            machine.daemons[sid].pulled("alpine:latest")
        await _until("Bob's bypass notice", lambda: _bypasses(events), timeout=15)
        await asyncio.sleep(0.5)  # Alice's would be judged at the same time
        seen["status"] = endpoints.status()
        bob_monitor = endpoints.endpoints[BOB].monitor
        assert bob_monitor is not None
        machine.signed_in = [s for s in machine.signed_in if s.sid != BOB]
        await _until("Bob's endpoint to go", lambda: _endpoint(endpoints, BOB) is None)
        seen["bob_after"] = bob_monitor.status()

    events = _run([ALICE, BOB], scenario, watch=True)
    (notice,) = _bypasses(events)
    assert notice.details["upstream"] == windows.DESKTOP_ENGINE_PIPE
    assert notice.details["shim"] == windows.shim_pipe(BOB)
    assert notice.details["image"] == "alpine:latest"
    assert notice.details["fix"] == windows.bypass_fix(BOB)
    monitors = {e["sid"]: e["bypass_monitor"] for e in seen["status"]["endpoints"]}
    assert monitors[ALICE]["running"] and monitors[BOB]["running"]
    assert monitors[ALICE]["errors"] == monitors[BOB]["errors"] == 0
    assert seen["bob_after"]["running"] is False
    decisions = [e for e in events if isinstance(e, DecisionEvent)]
    assert [(d.decision, d.peer.user) for d in decisions] == [("allow", ALICE)]


def test_the_monitor_connects_only_through_the_users_checked_transport() -> None:
    """A Desktop pipe served by someone else (``open_upstream``'s refusal) is never
    followed: the monitor keeps asking through the transport, and follows once the
    user's own Desktop serves it again."""

    async def scenario(
        endpoints: WindowsDesktopEndpoints, machine: FakeMachine, events: list[Event]
    ) -> None:
        transport = machine.transports[ALICE]
        await _until(
            "the monitor to follow", lambda: transport.opened and machine.daemons[ALICE].events
        )
        for writer in machine.daemons[ALICE].events:
            writer.close()
        transport.refuse = "pullgate: refusing to forward to \\\\.\\pipe\\docker_engine"
        machine.daemons[ALICE].events.clear()
        opened = transport.opened
        await _until("a refused reconnect", lambda: transport.opened > opened + 1)
        monitor = _endpoint(endpoints, ALICE)
        assert monitor is not None
        assert monitor["bypass_monitor"]["following_events"] is False
        assert monitor["bypass_monitor"]["running"] is True
        assert not machine.daemons[ALICE].events
        transport.refuse = None
        await _until("following again", lambda: machine.daemons[ALICE].events, timeout=15)

    _run([ALICE], scenario, watch=True)


def test_without_watch_no_monitor_runs() -> None:
    async def scenario(
        endpoints: WindowsDesktopEndpoints, machine: FakeMachine, events: list[Event]
    ) -> None:
        endpoint = _endpoint(endpoints, ALICE)
        assert endpoint is not None and endpoint["bypass_monitor"] is None
        assert machine.transports[ALICE].opened == 0

    _run([ALICE], scenario, watch=False)


def test_a_squatted_pipe_refuses_that_user_only() -> None:
    async def scenario(
        endpoints: WindowsDesktopEndpoints, machine: FakeMachine, events: list[Event]
    ) -> None:
        status = endpoints.status()
        assert [e["sid"] for e in status["endpoints"]] == [ALICE]
        assert "another process serves it" in status["refused"][BOB]
        assert status["running"] and not status["failing"]
        await asyncio.sleep(0.35)  # rescans: reported once
        refused = [
            e
            for e in events
            if isinstance(e, NoticeEvent)
            and e.action == "desktop-endpoint"
            and e.outcome == "failure"
        ]
        assert len(refused) == 1 and refused[0].details == {"sid": BOB}

    _run([ALICE, BOB], scenario, lambda machine: machine.squat.add(BOB))


# ------------------------------------------------------------------ the context, as the user


def _context_run(
    setup: Callable[[FakeMachine], None] = lambda machine: None, **options: Any
) -> tuple[dict[str, Any], FakeMachine, list[Event]]:
    """Alice signs in (her CLI's state set by ``setup``); her endpoint's status once the
    context task is done, her machine and the agent's events."""
    out: dict[str, Any] = {}

    async def scenario(
        endpoints: WindowsDesktopEndpoints, machine: FakeMachine, events: list[Event]
    ) -> None:
        out["machine"] = machine
        task = endpoints.endpoints[ALICE].context_task
        assert task is not None
        await asyncio.wait_for(task, 10)  # never raises: the outcome is in status
        out["endpoint"] = _endpoint(endpoints, ALICE)

    events = _run([ALICE], scenario, setup, **options)
    return out["endpoint"], out["machine"], events


def test_a_new_users_context_is_created_and_selected_over_desktops() -> None:
    endpoint, machine, _ = _context_run()
    assert endpoint["context"] == "selected (was desktop-linux)"
    assert endpoint["context_error"] is None
    assert machine.current[ALICE] == "pullgate"
    assert machine.contexts[ALICE]["pullgate"] == OURS + ALICE
    assert [args[:2] + args[2:3] for _, args in machine.cli_calls] == [
        ("context", "inspect", "pullgate"),
        ("context", "create", "pullgate"),
        ("context", "show"),
        ("context", "inspect", "desktop-linux"),  # as on unix; Desktop's own either way
        ("context", "use", "pullgate"),
    ]


def test_a_context_already_ours_is_left_as_it_is() -> None:
    def ours(machine: FakeMachine) -> None:
        machine.contexts[ALICE]["pullgate"] = OURS + ALICE
        machine.current[ALICE] = "pullgate"

    endpoint, machine, _ = _context_run(ours)
    assert endpoint["context"] == "selected"
    assert [args for _, args in machine.cli_calls] == [
        ("context", "inspect", "pullgate"),
        ("context", "show"),
    ]


def test_a_context_repointed_is_updated() -> None:
    def repointed(machine: FakeMachine) -> None:
        machine.contexts[ALICE]["pullgate"] = "npipe:////./pipe/docker_engine"

    endpoint, machine, _ = _context_run(repointed)
    assert machine.contexts[ALICE]["pullgate"] == OURS + ALICE
    assert ("context", "update", "pullgate", "--docker", f"host={OURS}{ALICE}") in [
        args for _, args in machine.cli_calls
    ]
    assert endpoint["context"] == "selected (was desktop-linux)"


@pytest.mark.parametrize(
    ("host", "selected"),
    [
        ("npipe:///./pipe/Docker_Engine", True),  # straight to Desktop, spelled otherwise
        ("npipe:////./pipe/dockerDesktopLinuxEngine", True),
        ("ssh://builder.example", False),  # another engine: the user's choice
        ("tcp://ci.example:2376", False),
    ],
)
def test_the_users_own_context_is_replaced_only_if_it_leads_to_desktop(
    host: str, selected: bool
) -> None:
    def mine(machine: FakeMachine) -> None:
        machine.contexts[ALICE]["mine"] = host
        machine.current[ALICE] = "mine"

    endpoint, machine, _ = _context_run(mine)
    assert ("context", "inspect", "mine") in [args for _, args in machine.cli_calls]
    if selected:
        assert endpoint["context"] == "selected (was mine)"
        assert machine.current[ALICE] == "pullgate"
    else:
        assert endpoint["context"] == f"installed; the user's own context 'mine' ({host}) is kept"
        assert machine.current[ALICE] == "mine"
        assert ("context", "use", "pullgate") not in [args for _, args in machine.cli_calls]


def test_a_current_context_docker_would_not_name_is_never_passed_to_it() -> None:
    def odd(machine: FakeMachine) -> None:
        machine.current[ALICE] = "--format=remote"

    endpoint, machine, _ = _context_run(odd)
    assert all(not arg.startswith("--format") for _, args in machine.cli_calls for arg in args)
    assert endpoint["context"] == "selected (was --format=remote)"


def test_install_mode_never_selects() -> None:
    endpoint, machine, _ = _context_run(context_mode=DesktopContext.INSTALL)
    assert endpoint["context"] == "installed; current context: desktop-linux (not changed: install)"
    assert machine.current[ALICE] == "desktop-linux"
    assert [args[:2] for _, args in machine.cli_calls] == [
        ("context", "inspect"),
        ("context", "create"),
        ("context", "show"),
    ]


def test_a_failing_cli_is_reported_with_what_the_user_can_run() -> None:
    def failing(machine: FakeMachine) -> None:
        machine.fail = ("context", "use", "pullgate")

    endpoint, _, events = _context_run(failing)
    error = endpoint["context_error"]
    assert error.startswith(f"the docker context for u{ALICE[-4:]} could not be set: `docker ")
    assert "context use pullgate` as the user exited with 1: error: the disk is full" in error
    assert error.endswith(windows.context_instructions(ALICE))
    assert endpoint["context"] == "not installed yet"
    notices = [e for e in events if isinstance(e, NoticeEvent) and e.action == "desktop-context"]
    assert len(notices) == 1 and notices[0].reason == f"pullgate: {error}"


def test_unreadable_cli_output_is_an_error_not_a_guess() -> None:
    endpoint, machine, _ = _context_run(docker_cli="/nowhere/docker.exe")
    assert "no docker CLI at" in endpoint["context_error"]
    assert machine.cli_calls == []

    def garbled(machine: FakeMachine) -> None:
        machine.contexts[ALICE]["mine"] = "ssh://x"
        machine.current[ALICE] = "mine"
        machine.override[("context", "inspect", "mine")] = CliResult(0, b"ssh://x\n")

    endpoint, machine, _ = _context_run(garbled)
    assert "did not answer JSON" in endpoint["context_error"]
    assert machine.current[ALICE] == "mine"
