"""Docker Desktop mode on Windows, all but the calls into Windows: for each signed-in user,
a shim on their own named pipe in front of Docker Desktop's ``\\\\.\\pipe\\docker_engine``,
the control API on their control pipe, a bypass monitor on Desktop's pipe, and their
``pullgate`` docker context.

The agent is the LocalSystem service ``PullgateAgent``. Every few seconds it looks at who
is signed in (``WindowsMachine.sessions``, ``windows.users_to_serve``) and applies the
difference, as ``agent.daemon.desktop`` does with unix sockets on macOS and Linux (the
same supervised rescan, ``desktop_common.RescanLoop``):

- the shim: a :class:`~agent.daemon.shim.Shim` whose transport (``WindowsMachine.
  transport``: ``windows_desktop.PipeEndpoint``) serves ``\\\\.\\pipe\\pullgate_docker_<SID>``
  and connects to ``docker_engine`` only when the user's own Desktop (or a system
  service) serves it; each client is named by its SID, the key of their sign-in;
- the control API: ``\\\\.\\pipe\\pullgate_control_<SID>``, each client handed to the one
  ``ControlServer`` with its SID as the caller;
- the bypass monitor: a ``BypassMonitor`` per user on ``docker_engine`` through the same
  checked connection (``UserTransport.open_streams``), judging the daemon's image events
  against the approvals of that user's endpoint only (``desktop_common.EndpointSink``);
- the user's ``pullgate`` docker context, created or updated by running Docker Desktop's
  docker CLI as the user in their session (``WindowsMachine.run_cli``), and selected
  by the same rule as on macOS and Linux (``agent.core.desktop_context``).

Nothing here calls Windows: ``agent.daemon.windows_desktop`` gives the real
``WindowsMachine`` (pywin32), and tests give one over unix sockets, so this runs and is
tested on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.config.keys import DesktopContext
from agent.core.desktop_context import (
    CliResult,
    choose_context,
    needs_current_host,
    parse_context_host,
    parse_context_show,
    valid_context_name,
)
from agent.core.events import NoticeEvent
from agent.core.policy.document import Policy
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger, BypassMonitor
from agent.daemon.control_server import ControlServer
from agent.daemon.desktop_common import EndpointSink, RescanLoop
from agent.daemon.shim import EndpointTransport, IdentitySource, Shim, ShimConfig
from agent.platform.windows import (
    CONTEXT_NAME,
    CONTEXT_SHOW_ARGS,
    DESKTOP_ENGINE_PIPE,
    DOCKER_CLI,
    PipeClient,
    WindowsSession,
    attributed_sid,
    bypass_fix,
    context_inspect_args,
    context_instructions,
    context_use_args,
    control_pipe,
    desktop_host,
    docker_context_commands,
    docker_host,
    shim_pipe,
    users_to_serve,
)

__all__ = [
    "RESCAN_INTERVAL",
    "PipeService",
    "UserTransport",
    "WindowsDesktopEndpoints",
    "WindowsMachine",
]

RESCAN_INTERVAL = 2.0

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class UserTransport(EndpointTransport, Protocol):
    """A user's shim transport that also opens plain streams to their Docker Desktop,
    with the same check of who serves it (``peer.ListenerError`` when refused): the
    bypass monitor's connection."""

    async def open_streams(self) -> StreamPair: ...


class PipeService(Protocol):
    """A served pipe (``NamedPipeServer``): the user's control pipe."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class WindowsMachine(Protocol):
    """What Docker Desktop mode needs of Windows (``windows_desktop.PipeMachine``)."""

    def sessions(self) -> list[WindowsSession]:
        """Every session and its user (blocking; run in a thread)."""
        ...

    def transport(self, sid: str, sink: DecisionSink) -> UserTransport:
        """The user's shim pipe in front of Docker Desktop's (strangers reported to
        ``sink``)."""
        ...

    def control_pipe(self, sid: str, client_connected: ClientConnected) -> PipeService:
        """The user's control pipe, each client as streams."""
        ...

    def run_cli(self, session_id: int, cli: str, args: tuple[str, ...]) -> CliResult:
        """``cli args`` as the user of ``session_id``, in their session, with their
        token and environment; its exit code and bounded output (blocking; a timeout
        ends the process and raises ``TimeoutError``)."""
        ...


@dataclass
class _Endpoint:
    session: WindowsSession
    shim: Shim
    control: PipeService | None
    monitor: BypassMonitor | None
    added_at: float = field(default_factory=time.time)
    context: str = "not installed yet"
    context_error: str | None = None
    context_task: asyncio.Task[None] | None = None


class WindowsDesktopEndpoints:
    """Each signed-in user's pipes, kept in step with who is signed in (a ``Service``)."""

    def __init__(
        self,
        *,
        machine: WindowsMachine,
        policy: Callable[[], Policy],
        sink: DecisionSink,
        control: ControlServer | None,
        audit_gate: Callable[[], str | Awaitable[str | None] | None] | None = None,
        identities: IdentitySource | None = None,
        context_mode: DesktopContext = DesktopContext.ENFORCE,
        protected: tuple[Path, ...] = (),
        interval: float = RESCAN_INTERVAL,
        watch: bool = False,
        docker_cli: str = DOCKER_CLI,
    ) -> None:
        self.machine = machine
        self.policy = policy
        self.sink = sink
        self.control = control
        self.audit_gate = audit_gate
        self.identities = identities
        self.context_mode = context_mode
        self.protected = protected
        self.watch = watch  # a bypass monitor per user, with their endpoint's own approvals
        self.docker_cli = docker_cli
        self.endpoints: dict[str, _Endpoint] = {}
        self.refused: dict[str, str] = {}  # SID -> why its pipes could not be made
        self.rescans = RescanLoop(self.rescan, sink, interval=interval)

    # -- the service --------------------------------------------------------------------

    async def start(self) -> None:
        await self.rescans.start()  # those signed in now are served before "ready"

    async def close(self) -> None:
        await self.rescans.stop()
        for sid in list(self.endpoints):
            await self._remove(sid, "agent stopping")

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/status`` (``desktop``), in the unix endpoints' terms."""
        return {
            "users_dir": None,
            **self.rescans.status(),
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
                    "bypass_monitor": e.monitor.status() if e.monitor is not None else None,
                }
                for sid, e in sorted(self.endpoints.items())
            ],
            "refused": dict(self.refused),
        }

    # -- one pass -------------------------------------------------------------------------

    async def rescan(self) -> None:
        users = users_to_serve(await asyncio.to_thread(self.machine.sessions))
        for sid in [sid for sid in self.endpoints if sid not in users]:
            await self._remove(sid, "signed out")
        for sid in [sid for sid in self.refused if sid not in users]:
            del self.refused[sid]
        for sid, session in users.items():
            if sid not in self.endpoints:
                await self._add(sid, session)

    async def _add(self, sid: str, session: WindowsSession) -> None:
        # The monitor's approvals are what went through this user's pipe (EndpointSink).
        ledger = ApprovalLedger() if self.watch else None
        transport = self.machine.transport(sid, self.sink)
        shim = Shim(
            ShimConfig(
                listen=Path(shim_pipe(sid)),
                upstream=Path(DESKTOP_ENGINE_PIPE),
                protected=self.protected,
            ),
            self.policy,
            self.sink if ledger is None else EndpointSink(self.sink, ledger),
            audit_gate=self.audit_gate,
            identities=self.identities,
            transport=transport,
        )
        control: PipeService | None = None
        try:
            await shim.start()
            if self.control is not None:
                control = self.machine.control_pipe(
                    sid, functools.partial(self._control_client, sid)
                )
                await control.start()
        except OSError as e:  # a squatter (PipeSquattedError), no resources: this user only
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
        monitor = None
        if ledger is not None:
            monitor = BypassMonitor(
                Path(DESKTOP_ENGINE_PIPE),
                self.sink,
                shim_listen=Path(shim_pipe(sid)),
                approved=ledger,
                connect=transport.open_streams,
                fix=bypass_fix(sid),
            )
            await monitor.start()
        endpoint = _Endpoint(session, shim, control, monitor)
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
        if endpoint.monitor is not None:
            await endpoint.monitor.close()
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
        """Create or update the ``pullgate`` context as the user and select it by the
        ``desktop_context`` rule; never raises (the outcome is kept for status)."""
        try:
            endpoint.context = await asyncio.to_thread(
                self._apply_context, sid, endpoint.session.session_id
            )
            endpoint.context_error = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the CLI's RuntimeError, OSError, a timeout, its output, a bug
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
        """The conversation with the user's docker CLI (blocking): where ``pullgate``
        leads, create or update it, which context is current and where that leads, then
        ``context use pullgate`` if the rule says so. The status line."""
        if not os.path.isfile(self.docker_cli):
            raise FileNotFoundError(f"no docker CLI at {self.docker_cli}")

        def run(args: tuple[str, ...], *, check: bool = False) -> CliResult:
            result = self.machine.run_cli(session_id, self.docker_cli, args)
            if check and result.code != 0:
                raise RuntimeError(
                    f"`docker {' '.join(args)}` as the user exited with {result.code}: "
                    + result.last_error_line()
                )
            return result

        have = run(context_inspect_args(CONTEXT_NAME))
        host = parse_context_host(have.stdout, CONTEXT_NAME) if have.code == 0 else None
        for args in docker_context_commands(sid, exists=have.code == 0, host=host):
            run(args, check=True)
        shown = run(CONTEXT_SHOW_ARGS)
        current = parse_context_show(shown.stdout) if shown.code == 0 else None
        install_only = self.context_mode is DesktopContext.INSTALL
        current_host = None
        if (
            not install_only
            and current is not None
            and needs_current_host(current, CONTEXT_NAME)
            and valid_context_name(current)  # else unknown: treated as Desktop's
        ):
            inspected = run(context_inspect_args(current))
            if inspected.code == 0:
                current_host = parse_context_host(inspected.stdout, current)
        choice = choose_context(
            install_only=install_only,
            current=current,
            current_host=desktop_host(current_host),
            desktop_host=docker_host(DESKTOP_ENGINE_PIPE),
            ours=CONTEXT_NAME,
        )
        if choice.select:
            run(context_use_args(), check=True)
        return choice.status
