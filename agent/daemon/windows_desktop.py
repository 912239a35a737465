"""Docker Desktop mode on Windows: for each signed-in user, a shim on their own named pipe
in front of Docker Desktop's ``\\\\.\\pipe\\docker_engine``, and the control API on their
control pipe.

The agent is the LocalSystem service ``PullgateAgent``. Every few seconds it looks at who
is signed in (``windows_sessions.signed_in_sessions``, ``windows.users_to_serve``) and
applies the difference, as ``agent.daemon.desktop`` does with unix sockets on macOS and
Linux:

- the shim: a :class:`~agent.daemon.shim.Shim` whose transport is :class:`PipeEndpoint`:
  it serves ``\\\\.\\pipe\\pullgate_docker_<SID>`` (``NamedPipeServer``: the user's security
  descriptor, the first instance flag, each client identified by its process's token
  and a stranger cut off), connects to ``docker_engine`` with ``open_upstream`` (no
  impersonation of the agent; only the user's own Desktop or a system service may serve
  it), and names each client by its SID (``PeerInfo.user``, ``uid`` None), which is also
  the key of their sign-in;
- the control API: ``\\\\.\\pipe\\pullgate_control_<SID>``, each client handed to the one
  ``ControlServer`` with its SID as the caller;
- the user's ``pullgate`` docker context, created (or updated) by running Docker
  Desktop's docker CLI as the user in their session (``CreateProcessAsUser`` with their
  session's token), never selected for them.

Windows only, never imported elsewhere; type-checked with mypy ``--platform win32``,
never run here (docs/deploy/windows.md says what a Windows runner must try first).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pywintypes
import win32api
import win32event
import win32process
import win32profile
import win32security
import win32ts

from agent.config.keys import DesktopContext
from agent.core.events import NoticeEvent
from agent.core.peer import PeerInfo
from agent.core.policy.document import Policy
from agent.daemon.bus import DecisionSink
from agent.daemon.control_server import ControlServer
from agent.daemon.shim import IdentitySource, ProtocolFactory, Shim, ShimConfig
from agent.platform import docker_api
from agent.platform.named_pipe_server import (
    NamedPipeError,
    NamedPipeServer,
    UpstreamRefusedError,
    open_upstream,
)
from agent.platform.peer import ListenerError, describe_peer
from agent.platform.windows import (
    CONTEXT_NAME,
    DESKTOP_ENGINE_PIPE,
    DOCKER_CLI,
    PipeClient,
    WindowsSession,
    attributed_sid,
    context_instructions,
    control_pipe,
    docker_context_commands,
    shim_pipe,
    users_to_serve,
)
from agent.platform.windows_sessions import signed_in_sessions

__all__ = ["RESCAN_INTERVAL", "PipeEndpoint", "WindowsDesktopEndpoints"]

RESCAN_INTERVAL = 2.0
CLI_TIMEOUT_MS = 20_000
_STREAM_LIMIT = 2**16


class PipeEndpoint:
    """A user's shim transport (``agent.daemon.shim.EndpointTransport``): their pipe in
    front of Docker Desktop's."""

    def __init__(self, sid: str, sink: DecisionSink, upstream: str = DESKTOP_ENGINE_PIPE) -> None:
        self.sid = sid
        self.sink = sink
        self.pipe = shim_pipe(sid)
        self.upstream = upstream

    async def serve(self, factory: ProtocolFactory) -> NamedPipeServer:
        server = NamedPipeServer(self.pipe, self.sid, factory, on_stranger=self._stranger)
        await server.start()
        return server

    async def connect(self, factory: ProtocolFactory) -> asyncio.BaseProtocol:
        try:
            _transport, protocol = await open_upstream(self.upstream, self.sid, factory)
        except UpstreamRefusedError as e:  # the shim reports it as a refused listener
            raise ListenerError(e.strerror) from e
        return protocol

    def peer(self, transport: asyncio.BaseTransport) -> PeerInfo:
        client = transport.get_extra_info("pipe_client")
        if not isinstance(client, PipeClient):  # pragma: no cover - every pipe carries one
            return PeerInfo(user=self.sid)
        # psutil's name, executable and command line, as for a unix client; no uid.
        return replace(describe_peer(client.pid, None, None), user=attributed_sid(self.sid, client))

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=_STREAM_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await open_upstream(self.upstream, self.sid, lambda: protocol)
            return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

        try:
            return await docker_api.request_over(connect, method, target, timeout=timeout)
        except UpstreamRefusedError as e:
            raise ListenerError(e.strerror) from e

    def _stranger(self, client: PipeClient) -> None:
        self.sink.emit(
            NoticeEvent(
                action="pipe-stranger",
                outcome="failure",
                severity="warning",
                reason=f"pullgate: refused a client on {self.pipe}: process {client.pid} runs "
                f"as {client.sid}, not as {self.sid}, LocalSystem or an administrator",
                details={"pipe": self.pipe, "pid": client.pid, "sid": client.sid},
            )
        )


@dataclass
class _Endpoint:
    session: WindowsSession
    shim: Shim
    control: NamedPipeServer | None
    added_at: float = field(default_factory=time.time)
    context: str = "not installed yet"
    context_error: str | None = None
    context_task: asyncio.Task[None] | None = None


class WindowsDesktopEndpoints:
    """Each signed-in user's pipes, kept in step with who is signed in (a ``Service``)."""

    def __init__(
        self,
        *,
        policy: Callable[[], Policy],
        sink: DecisionSink,
        control: ControlServer | None,
        audit_gate: Callable[[], str | Awaitable[str | None] | None] | None = None,
        identities: IdentitySource | None = None,
        context_mode: DesktopContext = DesktopContext.ENFORCE,
        protected: tuple[Path, ...] = (),
        interval: float = RESCAN_INTERVAL,
        sessions: Callable[[], list[WindowsSession]] = signed_in_sessions,
        docker_cli: str = DOCKER_CLI,
    ) -> None:
        self.policy = policy
        self.sink = sink
        self.control = control
        self.audit_gate = audit_gate
        self.identities = identities
        self.context_mode = context_mode
        self.protected = protected
        self.interval = interval
        self.sessions = sessions
        self.docker_cli = docker_cli
        self.endpoints: dict[str, _Endpoint] = {}
        self.refused: dict[str, str] = {}  # SID -> why its pipes could not be made
        self.task: asyncio.Task[None] | None = None
        self.scans = 0
        self.errors = 0
        self.last_error: str | None = None
        self.failing = False

    # -- the service --------------------------------------------------------------------

    async def start(self) -> None:
        await self._rescan_reported()  # those signed in now are served before "ready"
        self.task = asyncio.get_running_loop().create_task(self._run(), name="desktop-rescan")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for sid in list(self.endpoints):
            await self._remove(sid, "agent stopping")

    def status(self) -> dict[str, Any]:
        running = self.task is not None and not self.task.done()
        return {
            "users_dir": None,
            "running": running,
            "scans": self.scans,
            "errors": self.errors,
            "failing": self.failing,
            "last_error": self.last_error,
            "docker_cli": self.docker_cli,
            "context_mode": str(self.context_mode),
            "endpoints": [
                {
                    "sid": sid,
                    "user": e.session.user or sid,
                    "session": e.session.session_id,
                    "listen": shim_pipe(sid),
                    "control": control_pipe(sid),
                    "upstream": DESKTOP_ENGINE_PIPE,
                    "upstream_problem": e.shim.upstream_problem,
                    "context": e.context,
                    "context_error": e.context_error,
                    "bypass_monitor": None,  # not on Windows yet (docs/deploy/windows.md)
                }
                for sid, e in sorted(self.endpoints.items())
            ],
            "refused": dict(self.refused),
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._rescan_reported()

    async def _rescan_reported(self) -> None:
        """One rescan; an error is counted and reported, never raised (as on unix)."""
        try:
            await self.rescan()
            self.failing = False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.errors += 1
            self.failing = True
            message = f"{type(e).__name__}: {e}"
            if message != self.last_error:
                self.sink.emit(
                    NoticeEvent(
                        action="desktop-failure",
                        outcome="failure",
                        severity="warning",
                        reason=f"pullgate: Docker Desktop mode's rescan failed: {message}",
                    )
                )
            self.last_error = message

    # -- one pass -------------------------------------------------------------------------

    async def rescan(self) -> None:
        users = users_to_serve(await asyncio.to_thread(self.sessions))
        for sid in [sid for sid in self.endpoints if sid not in users]:
            await self._remove(sid, "signed out")
        for sid in [sid for sid in self.refused if sid not in users]:
            del self.refused[sid]
        for sid, session in users.items():
            if sid not in self.endpoints:
                await self._add(sid, session)
        self.scans += 1

    async def _add(self, sid: str, session: WindowsSession) -> None:
        shim = Shim(
            ShimConfig(
                listen=Path(shim_pipe(sid)),
                upstream=Path(DESKTOP_ENGINE_PIPE),
                protected=self.protected,
            ),
            self.policy,
            self.sink,
            audit_gate=self.audit_gate,
            identities=self.identities,
            transport=PipeEndpoint(sid, self.sink),
        )
        control: NamedPipeServer | None = None
        try:
            await shim.start()
            if self.control is not None:
                control = NamedPipeServer.for_streams(
                    control_pipe(sid), sid, functools.partial(self._control_client, sid)
                )
                await control.start()
        except NamedPipeError as e:  # a squatter (PipeSquattedError) or no resources
            await shim.close()
            message = str(e)
            if self.refused.get(sid) != message:  # once, not every rescan
                self.sink.emit(
                    NoticeEvent(
                        action="desktop-endpoint",
                        outcome="failure",
                        severity="warning",
                        reason=f"pullgate: cannot serve {session.user or sid}: {message}",
                        details={"sid": sid},
                    )
                )
            self.refused[sid] = message
            return
        self.refused.pop(sid, None)
        endpoint = _Endpoint(session, shim, control)
        self.endpoints[sid] = endpoint
        self.sink.emit(
            NoticeEvent(
                action="desktop-endpoint",
                outcome="success",
                reason=f"serving {session.user or sid} on {shim_pipe(sid)}, in front of "
                f"Docker Desktop at {DESKTOP_ENGINE_PIPE}",
                details={"sid": sid, "listen": shim_pipe(sid), "upstream": DESKTOP_ENGINE_PIPE},
            )
        )
        endpoint.context_task = asyncio.get_running_loop().create_task(
            self._install_context(sid, endpoint), name=f"desktop-context-{sid}"
        )

    async def _remove(self, sid: str, why: str) -> None:
        endpoint = self.endpoints.pop(sid, None)
        if endpoint is None:
            return
        if endpoint.context_task is not None:
            endpoint.context_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.context_task
        if endpoint.control is not None:
            await endpoint.control.close()
        await endpoint.shim.close()
        self.sink.emit(
            NoticeEvent(
                action="desktop-endpoint",
                outcome="success",
                reason=f"stopped serving {endpoint.session.user or sid}: {why}",
                details={"sid": sid, "listen": shim_pipe(sid)},
            )
        )

    async def _control_client(
        self, sid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self.control is not None
        client = writer.get_extra_info("pipe_client")
        if not isinstance(client, PipeClient):  # pragma: no cover - every pipe carries one
            writer.close()
            return
        await self.control.serve_client(
            reader, writer, (client.pid, attributed_sid(sid, client), None)
        )

    # -- the user's docker context --------------------------------------------------------

    async def _install_context(self, sid: str, endpoint: _Endpoint) -> None:
        """Create or update the ``pullgate`` context as the user; never raises."""
        try:
            endpoint.context = await asyncio.to_thread(
                self._apply_context, sid, endpoint.session.session_id
            )
            endpoint.context_error = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # pywintypes.error, OSError, a timeout, a bug
            message = (
                f"the docker context for {endpoint.session.user or sid} could not be set: "
                f"{e}; the user can run: {context_instructions(sid)}"
            )
            self.sink.emit(
                NoticeEvent(
                    action="desktop-context",
                    outcome="failure",
                    severity="warning",
                    reason=f"pullgate: {message}",
                    details={"sid": sid},
                )
            )
            endpoint.context_error = message

    def _apply_context(self, sid: str, session_id: int) -> str:
        if not os.path.isfile(self.docker_cli):
            raise FileNotFoundError(f"no docker CLI at {self.docker_cli}")
        exists = self._docker_as_user(session_id, ("context", "inspect", CONTEXT_NAME)) == 0
        for args in docker_context_commands(sid, exists=exists):
            code = self._docker_as_user(session_id, args)
            if code != 0:
                raise RuntimeError(f"`docker {' '.join(args)}` as the user exited with {code}")
        return f"installed (not selected: the user runs `docker context use {CONTEXT_NAME}`)"

    def _docker_as_user(self, session_id: int, args: tuple[str, ...]) -> int:
        """Run the docker CLI in ``session_id`` with its user's token and environment
        (their ``%USERPROFILE%\\.docker``), hidden; its exit code. Nothing of the user's
        is written with the service's rights."""
        token = win32ts.WTSQueryUserToken(session_id)
        try:
            environment = win32profile.CreateEnvironmentBlock(token, False)
            profile = win32profile.GetUserProfileDirectory(token)
            startup = win32process.STARTUPINFO()
            command = subprocess.list2cmdline([self.docker_cli, *args])
            process, thread, _pid, _tid = win32process.CreateProcessAsUser(
                token,
                self.docker_cli,
                command,
                win32security.SECURITY_ATTRIBUTES(),
                win32security.SECURITY_ATTRIBUTES(),
                False,
                win32process.CREATE_NO_WINDOW | win32process.CREATE_UNICODE_ENVIRONMENT,
                environment,
                profile,
                startup,
            )
        finally:
            with contextlib.suppress(pywintypes.error):
                win32api.CloseHandle(token)
        try:
            if win32event.WaitForSingleObject(process, CLI_TIMEOUT_MS) != win32event.WAIT_OBJECT_0:
                win32process.TerminateProcess(process, 1)
                raise TimeoutError(f"`docker {' '.join(args)}` took over {CLI_TIMEOUT_MS} ms")
            return int(win32process.GetExitCodeProcess(process))
        finally:
            for handle in (process, thread):
                with contextlib.suppress(pywintypes.error):
                    win32api.CloseHandle(handle)
