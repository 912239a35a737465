"""Docker Desktop mode on Windows, the calls into Windows: each user's pipes
(:class:`PipeEndpoint`, ``NamedPipeServer``), who is signed in, and the docker CLI run as
a user with its output read back (:func:`run_as_session_user`). What is done with them
(the rescan, the endpoints, the bypass monitors, the context rule) is
``agent.daemon.windows_endpoints``, which runs and is tested on Linux
(``run_agent`` gives it :class:`PipeMachine`).

- :class:`PipeEndpoint` is a user's shim transport: it serves
  ``\\\\.\\pipe\\pullgate_docker_<SID>`` (``NamedPipeServer``: the user's security
  descriptor, the first instance flag, each client identified by its process's token and
  a stranger cut off), connects to ``docker_engine`` with ``open_upstream`` (no
  impersonation of the agent; only the user's own Desktop or a system service may serve
  it) for the shim and the bypass monitor alike, and names each client by its SID;
- :func:`run_as_session_user` runs Docker Desktop's docker CLI in the user's session with
  their token (``WTSQueryUserToken``, ``CreateProcessAsUserW``) and environment, so
  nothing in their profile is written with the service's rights; its stdout and stderr
  come back through two anonymous pipes, the only handles it inherits.

Windows only, never imported elsewhere; type-checked with mypy ``--platform win32``,
never run here (docs/deploy/windows.md says what a Windows runner must try first).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import asyncio
import contextlib
import ctypes
import subprocess
import threading
import time
from ctypes import wintypes
from dataclasses import replace
from typing import Any, cast

import pywintypes
import win32api
import win32event
import win32file
import win32pipe
import win32process
import win32profile
import win32security
import win32ts
import winerror

from agent.core.desktop_context import MAX_CLI_OUTPUT, CappedOutput, CliResult
from agent.core.events import NoticeEvent
from agent.core.peer import PeerInfo
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import ProtocolFactory
from agent.daemon.windows_endpoints import ClientConnected, StreamPair
from agent.platform import docker_api
from agent.platform.named_pipe_server import (
    NamedPipeServer,
    UpstreamRefusedError,
    open_upstream,
)
from agent.platform.peer import ListenerError, describe_peer
from agent.platform.windows import (
    CLI_CREATION_FLAGS,
    DESKTOP_ENGINE_PIPE,
    GENERIC_READ,
    HANDLE_FLAG_INHERIT,
    OPEN_EXISTING,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
    STARTF_USESTDHANDLES,
    USER_DESKTOP,
    PipeClient,
    WindowsSession,
    attributed_sid,
    control_pipe,
    shim_pipe,
)
from agent.platform.windows_sessions import signed_in_sessions

__all__ = [
    "CLI_TIMEOUT",
    "PipeEndpoint",
    "PipeMachine",
    "run_as_session_user",
]

CLI_TIMEOUT = 20.0
_STREAM_LIMIT = 2**16
_POLL_MS = 20
_READ = 1 << 16
_FILE_SHARE_READ_WRITE = 0x1 | 0x2


class PipeEndpoint:
    """A user's shim transport (``agent.daemon.shim.EndpointTransport``, and
    ``windows_endpoints.UserTransport`` for the bypass monitor): their pipe in front of
    Docker Desktop's."""

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

    async def open_streams(self) -> StreamPair:
        """A connection to Docker Desktop as streams, through ``open_upstream``'s check
        (``ListenerError`` when refused): the shim's own requests, the bypass monitor's."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STREAM_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await open_upstream(self.upstream, self.sid, lambda: protocol)
        except UpstreamRefusedError as e:
            raise ListenerError(e.strerror) from e
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        return await docker_api.request_over(self.open_streams, method, target, timeout=timeout)

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


class PipeMachine:
    """``windows_endpoints.WindowsMachine`` on Windows itself."""

    def sessions(self) -> list[WindowsSession]:
        return signed_in_sessions()

    def transport(self, sid: str, sink: DecisionSink) -> PipeEndpoint:
        return PipeEndpoint(sid, sink)

    def control_pipe(self, sid: str, client_connected: ClientConnected) -> NamedPipeServer:
        return NamedPipeServer.for_streams(control_pipe(sid), sid, client_connected)

    def run_cli(self, session_id: int, cli: str, args: tuple[str, ...]) -> CliResult:
        return run_as_session_user(session_id, cli, args, timeout=CLI_TIMEOUT)


# ------------------------------------------------------------------ the CLI as the user


class _StartupInfoW(ctypes.Structure):
    _fields_ = [
        ("cb", wintypes.DWORD),
        ("lpReserved", wintypes.LPWSTR),
        ("lpDesktop", wintypes.LPWSTR),
        ("lpTitle", wintypes.LPWSTR),
        ("dwX", wintypes.DWORD),
        ("dwY", wintypes.DWORD),
        ("dwXSize", wintypes.DWORD),
        ("dwYSize", wintypes.DWORD),
        ("dwXCountChars", wintypes.DWORD),
        ("dwYCountChars", wintypes.DWORD),
        ("dwFillAttribute", wintypes.DWORD),
        ("dwFlags", wintypes.DWORD),
        ("wShowWindow", wintypes.WORD),
        ("cbReserved2", wintypes.WORD),
        ("lpReserved2", ctypes.c_void_p),
        ("hStdInput", wintypes.HANDLE),
        ("hStdOutput", wintypes.HANDLE),
        ("hStdError", wintypes.HANDLE),
    ]


class _StartupInfoExW(ctypes.Structure):
    _fields_ = [("StartupInfo", _StartupInfoW), ("lpAttributeList", ctypes.c_void_p)]


class _ProcessInformation(ctypes.Structure):
    _fields_ = [
        ("hProcess", wintypes.HANDLE),
        ("hThread", wintypes.HANDLE),
        ("dwProcessId", wintypes.DWORD),
        ("dwThreadId", wintypes.DWORD),
    ]


_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
_userenv = ctypes.WinDLL("userenv", use_last_error=True)

_InitializeProcThreadAttributeList = _kernel32.InitializeProcThreadAttributeList
_InitializeProcThreadAttributeList.argtypes = [
    ctypes.c_void_p,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.POINTER(ctypes.c_size_t),
]
_InitializeProcThreadAttributeList.restype = wintypes.BOOL
_UpdateProcThreadAttribute = _kernel32.UpdateProcThreadAttribute
_UpdateProcThreadAttribute.argtypes = [
    ctypes.c_void_p,
    wintypes.DWORD,
    ctypes.c_size_t,  # DWORD_PTR
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
]
_UpdateProcThreadAttribute.restype = wintypes.BOOL
_DeleteProcThreadAttributeList = _kernel32.DeleteProcThreadAttributeList
_DeleteProcThreadAttributeList.argtypes = [ctypes.c_void_p]
_DeleteProcThreadAttributeList.restype = None
_CreateProcessAsUserW = _advapi32.CreateProcessAsUserW
_CreateProcessAsUserW.argtypes = [
    wintypes.HANDLE,
    wintypes.LPCWSTR,
    wintypes.LPWSTR,
    ctypes.c_void_p,
    ctypes.c_void_p,
    wintypes.BOOL,
    wintypes.DWORD,
    ctypes.c_void_p,
    wintypes.LPCWSTR,
    ctypes.POINTER(_StartupInfoExW),
    ctypes.POINTER(_ProcessInformation),
]
_CreateProcessAsUserW.restype = wintypes.BOOL
_CreateEnvironmentBlock = _userenv.CreateEnvironmentBlock
_CreateEnvironmentBlock.argtypes = [ctypes.POINTER(ctypes.c_void_p), wintypes.HANDLE, wintypes.BOOL]
_CreateEnvironmentBlock.restype = wintypes.BOOL
_DestroyEnvironmentBlock = _userenv.DestroyEnvironmentBlock
_DestroyEnvironmentBlock.argtypes = [ctypes.c_void_p]
_DestroyEnvironmentBlock.restype = wintypes.BOOL

_SPAWN_LOCK = threading.Lock()
"""Held from making a child's handles inheritable to closing the service's copies. Each
child's handle list already keeps two users' runs (each in its own thread) from
inheriting each other's pipes; the lock keeps at most one set of inheritable handles in
the service at any time, for as short as a process start."""


def _check(ok: object, what: str) -> None:
    if not ok:
        raise ctypes.WinError(ctypes.get_last_error(), f"{what} failed")


def _no_inherit() -> Any:
    attributes = win32security.SECURITY_ATTRIBUTES()
    attributes.bInheritHandle = 0  # pywin32's default is inheritable
    return attributes


def _owned(handle: object) -> int:
    """A pywin32 handle as a plain number this module closes (``CloseHandle``) itself,
    so the object's own close on collection cannot close it again."""
    detach = getattr(handle, "Detach", None)
    return int(detach()) if callable(detach) else int(cast(int, handle))


def _close(*handles: int) -> None:
    """Close each handle; -1 stands for one never made."""
    for handle in handles:
        if handle != -1:
            with contextlib.suppress(pywintypes.error):
                win32api.CloseHandle(handle)


def run_as_session_user(
    session_id: int,
    cli: str,
    args: tuple[str, ...],
    *,
    timeout: float = CLI_TIMEOUT,
    limit: int = MAX_CLI_OUTPUT,
) -> CliResult:
    """Run ``cli args`` in ``session_id`` with its user's token, environment and profile
    directory, hidden; its exit code and output (each stream kept up to ``limit`` bytes,
    the rest read and dropped). Past ``timeout`` seconds the process is ended and
    ``TimeoutError`` raised. Blocking: run it in a thread."""
    token = win32ts.WTSQueryUserToken(session_id)
    try:
        profile = win32profile.GetUserProfileDirectory(token)
        process, thread, out_read, err_read = _spawn(int(token), cli, args, profile)
    finally:
        with contextlib.suppress(pywintypes.error):
            win32api.CloseHandle(token)
    stdout, stderr = CappedOutput(limit), CappedOutput(limit)
    try:
        code = _wait_reading(process, [(out_read, stdout), (err_read, stderr)], timeout, args)
    finally:
        _close(process, thread, out_read, err_read)
    return CliResult(
        code, stdout.value, stderr.value, truncated=bool(stdout.dropped or stderr.dropped)
    )


def _spawn(token: int, cli: str, args: tuple[str, ...], cwd: str) -> tuple[int, int, int, int]:
    """Create the process: (process, thread, stdout's read end, stderr's read end). The
    child inherits exactly NUL as its stdin and the pipes' write ends; the service's
    copies of those are closed before this returns."""
    out_read = out_write = err_read = err_write = null = -1
    environment = ctypes.c_void_p()
    try:
        out_read, out_write = (_owned(h) for h in win32pipe.CreatePipe(_no_inherit(), 0))
        err_read, err_write = (_owned(h) for h in win32pipe.CreatePipe(_no_inherit(), 0))
        null = _owned(
            win32file.CreateFile(
                "NUL", GENERIC_READ, _FILE_SHARE_READ_WRITE, _no_inherit(), OPEN_EXISTING, 0, None
            )
        )
        _check(
            _CreateEnvironmentBlock(ctypes.byref(environment), token, False),
            "CreateEnvironmentBlock",
        )
        child = (null, out_write, err_write)
        with _SPAWN_LOCK:
            try:
                for handle in child:
                    win32api.SetHandleInformation(handle, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT)
                info = _create_process(
                    token, cli, args, cwd=cwd, environment=environment, handles=child
                )
            finally:
                _close(*child)  # the child has its own copies
                out_write = err_write = null = -1
    except BaseException:
        _close(out_read, err_read)
        raise
    finally:
        _close(out_write, err_write, null)
        if environment.value:
            _DestroyEnvironmentBlock(environment)
    return int(info.hProcess), int(info.hThread), out_read, err_read


def _create_process(
    token: int,
    cli: str,
    args: tuple[str, ...],
    *,
    cwd: str,
    environment: ctypes.c_void_p,
    handles: tuple[int, int, int],
) -> _ProcessInformation:
    """``CreateProcessAsUserW`` with a STARTUPINFOEX that limits inheritance to
    ``handles`` (stdin, stdout, stderr)."""
    size = ctypes.c_size_t(0)
    _InitializeProcThreadAttributeList(None, 1, 0, ctypes.byref(size))  # asks the size
    attributes = ctypes.create_string_buffer(size.value)
    _check(
        _InitializeProcThreadAttributeList(attributes, 1, 0, ctypes.byref(size)),
        "InitializeProcThreadAttributeList",
    )
    try:
        inherited = (wintypes.HANDLE * len(handles))(*handles)
        _check(
            _UpdateProcThreadAttribute(
                attributes,
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
                ctypes.addressof(inherited),
                ctypes.sizeof(inherited),
                None,
                None,
            ),
            "UpdateProcThreadAttribute",
        )
        startup = _StartupInfoExW()
        startup.StartupInfo.cb = ctypes.sizeof(_StartupInfoExW)
        startup.StartupInfo.lpDesktop = USER_DESKTOP
        startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES
        startup.StartupInfo.hStdInput, startup.StartupInfo.hStdOutput = handles[0], handles[1]
        startup.StartupInfo.hStdError = handles[2]
        startup.lpAttributeList = ctypes.cast(attributes, ctypes.c_void_p)
        info = _ProcessInformation()
        command = ctypes.create_unicode_buffer(subprocess.list2cmdline([cli, *args]))
        _check(
            _CreateProcessAsUserW(
                token,
                cli,
                command,
                None,
                None,
                True,
                CLI_CREATION_FLAGS,
                environment,
                cwd,
                ctypes.byref(startup),
                ctypes.byref(info),
            ),
            f"CreateProcessAsUser({cli})",
        )
        return info
    finally:
        _DeleteProcThreadAttributeList(attributes)


def _wait_reading(
    process: int,
    streams: list[tuple[int, CappedOutput]],
    timeout: float,
    args: tuple[str, ...],
) -> int:
    """Read the child's output as it comes (only what is there: never a blocking read,
    so a grandchild holding a pipe open cannot hang the agent) until it exits; its exit
    code. Ended and ``TimeoutError`` past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    reading = list(streams)
    while True:
        reading = [(pipe, output) for pipe, output in reading if _read_available(pipe, output)]
        if win32event.WaitForSingleObject(process, _POLL_MS) == win32event.WAIT_OBJECT_0:
            for pipe, output in reading:  # what it wrote before it exited
                _read_available(pipe, output)
            return int(win32process.GetExitCodeProcess(process))
        if time.monotonic() > deadline:
            with contextlib.suppress(pywintypes.error):
                win32process.TerminateProcess(process, 1)
            raise TimeoutError(f"`docker {' '.join(args)}` took over {timeout:g} s")


def _read_available(pipe: int, output: CappedOutput) -> bool:
    """Read what is waiting in ``pipe``; False once its writers closed it and it is empty."""
    while True:
        try:
            _data, available, _left = win32pipe.PeekNamedPipe(pipe, 0)
            if not available:
                return True
            _result, chunk = win32file.ReadFile(pipe, min(int(available), _READ))
        except pywintypes.error as e:
            if e.winerror == winerror.ERROR_BROKEN_PIPE:
                return False
            raise
        output.feed(bytes(chunk))
