"""Named pipes for asyncio on Windows: one user's pipe, its ACL and its clients; and the
agent's own connection to Docker Desktop's pipe.

``NamedPipeServer`` is to a pipe what ``loop.create_unix_server`` is to a unix socket:
each client gets a protocol from the factory (the shim's ``ClientConnection``), or
asyncio streams with ``NamedPipeServer.for_streams`` (the control API's
``start_unix_server`` shape), so both can serve pipes with the code they serve sockets
with. ``open_upstream`` connects to ``docker_engine`` without lending the
server the agent's SYSTEM identity, and only if the user's own Desktop serves it. The
values (names, SDDL, flags, whom a client is attributed to) come from
``agent.platform.windows`` and are tested on Linux; this module only hands them to
Windows.

It follows asyncio's own pipe server (``asyncio.windows_events``: ``PipeServer`` and
``ProactorEventLoop.start_serving_pipe``), which cannot be used as it is: it creates
every instance with the default security descriptor (Everyone may read) and message
mode. The differences:

- each instance is created with ``win32pipe.CreateNamedPipe`` and the user's security
  descriptor (``pipe_sddl``: SYSTEM and Administrators full, the user read/write, no one
  else), in byte mode, remote clients rejected;
- the first instance carries FILE_FLAG_FIRST_PIPE_INSTANCE: a name someone already
  serves fails with ``PipeSquattedError`` instead of the agent serving beside a squatter;
- the next instance exists before a connected client is handed on, so a client never
  finds the name missing (ERROR_FILE_NOT_FOUND) between two connections;
- each client is identified (``GetNamedPipeClientProcessId``, then the process's token)
  and judged (``judge_client``) before it is served; the result travels with the
  transport as ``get_extra_info("pipe_client")``.

The overlapped ``ConnectNamedPipe`` and the transport are the Proactor's (``accept_pipe``,
``_make_duplex_pipe_transport``), as in asyncio's own server; the agent must run on a
``ProactorEventLoop`` (asyncio's default on Windows).

Windows only, never imported elsewhere; type-checked with mypy ``--platform win32`` and
never run here (docs/deploy/windows.md).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import asyncio
import contextlib
from asyncio import windows_utils
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import pywintypes
import win32api
import win32file
import win32pipe
import win32security
import winerror

from agent.platform.windows import (
    ADMINISTRATORS_SID,
    GENERIC_READ,
    GENERIC_WRITE,
    OPEN_EXISTING,
    PIPE_UNLIMITED_INSTANCES,
    PROCESS_QUERY_LIMITED_INFORMATION,
    SDDL_REVISION_1,
    TOKEN_QUERY,
    UPSTREAM_FLAGS,
    ClientVerdict,
    PipeClient,
    PipeSpec,
    has_enabled_group,
    judge_client,
    upstream_server_problem,
)

__all__ = [
    "ClientConnected",
    "NamedPipeError",
    "NamedPipeServer",
    "PipeSquattedError",
    "UpstreamRefusedError",
    "open_upstream",
    "read_client",
]

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
ProtocolFactory = Callable[[], asyncio.BaseProtocol]
StrangerSeen = Callable[[PipeClient], None]
_STREAM_LIMIT = 2**16
_BUSY_RETRIES = 20  # ERROR_PIPE_BUSY: every instance taken; asyncio's connect_pipe retries too


class NamedPipeError(OSError):
    """A pipe could not be created or served."""


class PipeSquattedError(NamedPipeError):
    """Someone else already serves the pipe's name (FILE_FLAG_FIRST_PIPE_INSTANCE)."""


class UpstreamRefusedError(NamedPipeError):
    """Docker Desktop's pipe is served by someone the user's requests must not reach;
    the message is the one for the client (``upstream_server_problem``)."""


class _Proactor(Protocol):
    def accept_pipe(self, pipe: windows_utils.PipeHandle) -> asyncio.Future[Any]: ...


class _PipeLoop(Protocol):
    """What this module uses of ``asyncio.ProactorEventLoop``, private parts included
    (as asyncio's own ``start_serving_pipe`` does)."""

    _proactor: _Proactor

    def _make_duplex_pipe_transport(
        self,
        sock: windows_utils.PipeHandle,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> asyncio.Transport: ...


def _create_instance(spec: PipeSpec) -> windows_utils.PipeHandle:
    attributes = win32security.SECURITY_ATTRIBUTES()
    # pywin32 makes handles inheritable by default: a process the service starts with
    # inheritance (the docker CLI as a user) must never receive a user's pipe.
    attributes.bInheritHandle = 0
    attributes.SECURITY_DESCRIPTOR = (
        win32security.ConvertStringSecurityDescriptorToSecurityDescriptor(
            spec.sddl, SDDL_REVISION_1
        )
    )
    try:
        raw: object = win32pipe.CreateNamedPipe(
            spec.name,
            spec.open_mode,
            spec.pipe_mode,
            PIPE_UNLIMITED_INSTANCES,
            spec.buffer_size,
            spec.buffer_size,
            0,
            attributes,
        )
    except pywintypes.error as e:
        if spec.first and e.winerror == winerror.ERROR_ACCESS_DENIED:
            raise PipeSquattedError(
                e.winerror,
                f"{spec.name}: another process already serves this name; the agent will "
                f"not serve beside it (find it with `handle.exe -a {spec.name}` or Process "
                "Explorer)",
            ) from e
        raise NamedPipeError(e.winerror, f"{spec.name}: CreateNamedPipe: {e.strerror}") from e
    # pywin32's PyHANDLE closes on collection: the PipeHandle owns it from here on.
    detach = getattr(raw, "Detach", None)
    handle = int(detach()) if callable(detach) else int(cast(int, raw))
    return windows_utils.PipeHandle(handle)


def _process_identity(pid: int) -> tuple[str | None, bool]:
    """The SID of process ``pid``'s token and whether it is an enabled administrator's;
    (None, False) if the process is gone or its token cannot be read."""
    try:
        process = win32api.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        token = win32security.OpenProcessToken(process, TOKEN_QUERY)
        user, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
        groups = win32security.GetTokenInformation(token, win32security.TokenGroups)
    except pywintypes.error:
        return None, False
    named = [(win32security.ConvertSidToStringSid(g), int(a)) for g, a in groups]
    return win32security.ConvertSidToStringSid(user), has_enabled_group(named, ADMINISTRATORS_SID)


def read_client(handle: int) -> tuple[PipeClient, bool]:
    """The client process of a connected instance and whether its token is an enabled
    administrator's. The process may have exited already: then its SID is None."""
    pid = int(win32pipe.GetNamedPipeClientProcessId(handle))
    session: int | None
    try:
        session = int(win32pipe.GetNamedPipeClientSessionId(handle))
    except pywintypes.error:
        session = None
    sid, admin = _process_identity(pid)
    return PipeClient(pid=pid, sid=sid, session_id=session), admin


async def open_upstream(
    pipe: str, endpoint_sid: str, protocol_factory: ProtocolFactory
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Connect to Docker Desktop's ``pipe`` for the user ``endpoint_sid``: like
    ``loop.create_pipe_connection``, but opened with ``UPSTREAM_FLAGS`` (the server may
    identify the agent, never impersonate it) and refused with ``UpstreamRefusedError``
    unless the serving process is the user's own or a system service's."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.ProactorEventLoop):
        raise NamedPipeError(0, f"{pipe}: named pipes need asyncio's ProactorEventLoop")
    for attempt in range(_BUSY_RETRIES):
        try:
            raw = win32file.CreateFile(
                pipe,
                GENERIC_READ | GENERIC_WRITE,
                0,
                None,
                OPEN_EXISTING,
                UPSTREAM_FLAGS,
                None,
            )
            break
        except pywintypes.error as e:
            if e.winerror != winerror.ERROR_PIPE_BUSY or attempt == _BUSY_RETRIES - 1:
                raise NamedPipeError(e.winerror, f"{pipe}: {e.strerror}") from e
            await asyncio.sleep(0.05)
    handle = windows_utils.PipeHandle(int(raw.Detach()))
    try:
        pid = int(win32pipe.GetNamedPipeServerProcessId(handle.handle))
        sid, _admin = _process_identity(pid)
        problem = upstream_server_problem(pipe, endpoint_sid, PipeClient(pid=pid, sid=sid))
        if problem is not None:
            raise UpstreamRefusedError(winerror.ERROR_ACCESS_DENIED, problem)
    except BaseException:
        handle.close()
        raise
    protocol = protocol_factory()
    # As asyncio's create_pipe_connection: return once connection_made has run, so the
    # caller finds the protocol connected (the shim writes through protocol.transport).
    waiter: asyncio.Future[Any] = loop.create_future()
    transport = cast(_PipeLoop, loop)._make_duplex_pipe_transport(
        handle, protocol, waiter, extra={"addr": pipe}
    )
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


class NamedPipeServer:
    """Serves ``name`` to the user ``user_sid`` (and SYSTEM and Administrators): each
    client gets a protocol from ``protocol_factory``."""

    def __init__(
        self,
        name: str,
        user_sid: str,
        protocol_factory: ProtocolFactory,
        *,
        on_stranger: StrangerSeen | None = None,
    ) -> None:
        self.name = name
        self.user_sid = user_sid
        self.protocol_factory = protocol_factory
        self.on_stranger = on_stranger
        self._pending: windows_utils.PipeHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._transports: set[asyncio.Transport] = set()

    @classmethod
    def for_streams(
        cls,
        name: str,
        user_sid: str,
        client_connected: ClientConnected,
        *,
        on_stranger: StrangerSeen | None = None,
    ) -> NamedPipeServer:
        """Each client as asyncio streams, like ``asyncio.start_unix_server``."""

        def factory() -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=_STREAM_LIMIT)
            return asyncio.StreamReaderProtocol(reader, client_connected)

        return cls(name, user_sid, factory, on_stranger=on_stranger)

    async def start(self) -> None:
        """Create the first instance (``PipeSquattedError`` if the name is taken) and
        start accepting."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, asyncio.ProactorEventLoop):
            raise NamedPipeError(0, f"{self.name}: named pipes need asyncio's ProactorEventLoop")
        self._pending = _create_instance(PipeSpec.for_user(self.name, self.user_sid, first=True))
        self._task = loop.create_task(self._accept(cast(_PipeLoop, loop)), name=self.name)

    async def _accept(self, loop: _PipeLoop) -> None:
        while self._pending is not None:
            pipe = self._pending
            try:
                await loop._proactor.accept_pipe(pipe)
            except OSError as e:  # BrokenPipeError: the client left before it was accepted
                pipe.close()
                if not isinstance(e, BrokenPipeError):
                    print(f"pullgate agent: {self.name}: {e}", file=sys.stderr, flush=True)
                self._pending = await self._next_instance()
                continue
            # The next instance first: a client arriving now must find the name.
            self._pending = await self._next_instance()
            self._serve(loop, pipe)

    async def _next_instance(self) -> windows_utils.PipeHandle:
        """Another instance of the pipe; retried each second while Windows refuses (out
        of resources), saying so, since without one no client can connect."""
        while True:
            try:
                return _create_instance(PipeSpec.for_user(self.name, self.user_sid, first=False))
            except NamedPipeError as e:
                print(f"pullgate agent: {e}; retrying in 1 s", file=sys.stderr, flush=True)
                await asyncio.sleep(1.0)

    def _serve(self, loop: _PipeLoop, pipe: windows_utils.PipeHandle) -> None:
        try:
            client, admin = read_client(pipe.handle)
        except pywintypes.error:  # gone already: nobody to serve
            pipe.close()
            return
        verdict = judge_client(self.user_sid, client, client_is_admin=admin)
        if verdict is ClientVerdict.STRANGER:
            pipe.close()
            if self.on_stranger is not None:
                self.on_stranger(client)
            return
        protocol = self.protocol_factory()
        transport = loop._make_duplex_pipe_transport(
            pipe,
            protocol,
            extra={"addr": self.name, "pipe_client": client, "pipe_verdict": verdict},
        )
        self._transports.add(transport)
        # The transport calls connection_lost when the client goes; forget it then.
        lost = protocol.connection_lost

        def forget(exc: Exception | None) -> None:
            self._transports.discard(transport)
            lost(exc)

        protocol.connection_lost = forget  # type: ignore[method-assign]

    async def close(self) -> None:
        """Stop accepting, close the waiting instance and every client's transport."""
        pending, self._pending = self._pending, None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if pending is not None:
            pending.close()
        for transport in list(self._transports):
            transport.close()
        self._transports.clear()
