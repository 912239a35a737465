"""The CLI's and the tray's connection to the agent on Windows: the user's control pipe,
``\\\\.\\pipe\\pullgate_control_<their SID>``, opened with pywin32 and checked before a
byte is written.

- ``open_control_pipe`` opens it (``CONTROL_CLIENT_FLAGS``: overlapped, identification
  only, so the server may learn who the client is but never act as them), waits for a
  free instance (ERROR_PIPE_BUSY, ``WaitNamedPipe``) within the timeout, then checks who
  serves it: the serving process (``GetNamedPipeServerProcessId``) must be LocalSystem by
  its token or, when the token cannot be read (a user may not read LocalSystem's), the
  ``PullgateAgent`` service's process as the Service Control Manager reports it
  (``windows_control.control_server_problem``). Anyone else (a user who created the name first)
  is refused, with nothing sent.
- Reads and writes are overlapped and wait on the operation's event and a stop event
  (``WaitForMultipleObjects``) for at most their timeout; then the operation is cancelled
  with ``CancelIo`` from the thread that started it (pywin32 has no ``CancelIoEx``; a
  stop requested by another thread, ``EventStream.close``, sets the stop event instead, so
  the cancel is always the starter's own) and waited for. What is decided around these
  calls (``agent.platform.pipe_stream.PipeChannel``) runs and is tested on Linux.
- ``current_user_sid``: whose control pipe to open (the process token's user).

Windows only, never imported elsewhere; type-checked with mypy ``--platform win32`` and
never run here (docs/deploy/windows.md).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import contextlib
import errno
import time
from typing import Any

import pywintypes
import win32api
import win32event
import win32file
import win32pipe
import win32security
import win32service

from agent.platform.pipe_stream import (
    ERROR_FILE_NOT_FOUND,
    ERROR_PIPE_BUSY,
    ERROR_SEM_TIMEOUT,
    PipeCallError,
    PipeChannel,
    Wait,
    pipe_os_error,
    timeout_ms,
)
from agent.platform.windows import (
    GENERIC_READ,
    GENERIC_WRITE,
    OPEN_EXISTING,
    PROCESS_QUERY_LIMITED_INFORMATION,
    SERVICE_NAME,
    TOKEN_QUERY,
    PipeClient,
)
from agent.platform.windows_control import (
    CONTROL_CLIENT_FLAGS,
    control_pipe_address,
    control_server_problem,
)

__all__ = [
    "ControlPipeRefusedError",
    "agent_service_pid",
    "current_user_sid",
    "open_control_pipe",
    "process_sid",
]


class ControlPipeRefusedError(PermissionError):
    """The pipe is served by someone other than the agent; the message says who."""


def _detach(handle: object) -> int:
    """A pywin32 handle as a plain number this module closes itself (a PyHANDLE closes
    on collection; the stubs type some of them as int)."""
    detach = getattr(handle, "Detach", None)
    return int(detach()) if callable(detach) else int(handle)  # type: ignore[call-overload]


def current_user_sid() -> str:
    """The SID of this process's user (its token's ``TokenUser``): whose control pipe to
    open. An elevated administrator is still themselves; LocalSystem has no pipe."""
    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), TOKEN_QUERY)
    user, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
    return win32security.ConvertSidToStringSid(user)


def process_sid(pid: int) -> str | None:
    """The user of process ``pid``'s token; None when it cannot be read (gone, protected,
    or LocalSystem's as seen by a user)."""
    try:
        process = win32api.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        token = win32security.OpenProcessToken(process, TOKEN_QUERY)
        user, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
    except pywintypes.error:
        return None
    return win32security.ConvertSidToStringSid(user)


def agent_service_pid() -> int | None:
    """The process id of the ``PullgateAgent`` service as the Service Control Manager
    reports it (any user may ask: SERVICE_QUERY_STATUS); None when it is not running or
    cannot be asked."""
    try:
        manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_CONNECT)
        try:
            service = win32service.OpenService(
                manager, SERVICE_NAME, win32service.SERVICE_QUERY_STATUS
            )
            try:
                # pywin32 returns a dict (ServiceType, CurrentState, ..., ProcessId); the
                # stubs type it as a sequence.
                status: Any = win32service.QueryServiceStatusEx(service)
            finally:
                win32service.CloseServiceHandle(service)
        finally:
            win32service.CloseServiceHandle(manager)
    except pywintypes.error:
        return None
    pid = int(status["ProcessId"])
    return pid if pid > 0 else None


class _Pending:
    """One started ReadFile or WriteFile (``pipe_stream.PendingIO``)."""

    def __init__(self, ops: _Win32PipeOps, overlapped: Any, buffer: Any) -> None:
        self._ops = ops
        self._overlapped = overlapped
        self._buffer = buffer  # the read's buffer or the write's bytes: alive until settled

    def wait(self, timeout_ms: int) -> Wait:
        which = win32event.WaitForMultipleObjects(
            [self._overlapped.hEvent, self._ops.stop_event], False, timeout_ms
        )
        if which == win32event.WAIT_OBJECT_0:
            return Wait.DONE
        if which == win32event.WAIT_OBJECT_0 + 1:
            return Wait.STOPPED
        if which == win32event.WAIT_TIMEOUT:
            return Wait.TIMED_OUT
        raise PipeCallError(int(win32api.GetLastError()), "WaitForMultipleObjects failed")

    def cancel(self) -> None:
        with contextlib.suppress(pywintypes.error):  # finished meanwhile: result() tells
            win32file.CancelIo(self._ops.handle)

    def result(self) -> int:
        try:
            return int(win32file.GetOverlappedResult(self._ops.handle, self._overlapped, True))
        except pywintypes.error as e:
            raise PipeCallError(e.winerror, e.strerror) from e

    def data(self, count: int) -> bytes:
        return bytes(self._buffer[:count])


class _Win32PipeOps:
    """pywin32's calls on one open pipe handle (``pipe_stream.PipeOps``): one
    OVERLAPPED and event per direction, a stop event for ``interrupt``."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.stop_event = _detach(win32event.CreateEvent(None, True, False, None))
        self._events: list[int] = [self.stop_event]
        self._read = self._overlapped()
        self._write = self._overlapped()

    def _overlapped(self) -> Any:
        overlapped = pywintypes.OVERLAPPED()
        event = _detach(win32event.CreateEvent(None, True, False, None))
        self._events.append(event)
        overlapped.hEvent = event
        return overlapped

    def start_read(self, size: int) -> _Pending:
        buffer = win32file.AllocateReadBuffer(size)
        try:
            win32file.ReadFile(self.handle, buffer, self._read)
        except pywintypes.error as e:
            raise PipeCallError(e.winerror, e.strerror) from e
        return _Pending(self, self._read, buffer)

    def start_write(self, data: bytes) -> _Pending:
        try:
            win32file.WriteFile(self.handle, data, self._write)
        except pywintypes.error as e:
            raise PipeCallError(e.winerror, e.strerror) from e
        return _Pending(self, self._write, data)

    def stop(self) -> None:
        with contextlib.suppress(pywintypes.error):
            win32event.SetEvent(self.stop_event)

    def close(self) -> None:
        for handle in (self.handle, *self._events):
            with contextlib.suppress(pywintypes.error):
                win32api.CloseHandle(handle)
        self._events = []


def _create(pipe: str, deadline: float | None) -> int:
    """The pipe opened for reading and writing, waiting for a free instance until the
    deadline; an ``OSError`` as a socket's connect would raise."""
    while True:
        try:
            raw = win32file.CreateFile(
                pipe,
                GENERIC_READ | GENERIC_WRITE,
                0,
                None,
                OPEN_EXISTING,
                CONTROL_CLIENT_FLAGS,
                None,
            )
            return int(raw.Detach())
        except pywintypes.error as e:
            if e.winerror != ERROR_PIPE_BUSY:
                raise pipe_os_error(e.winerror, e.strerror, pipe) from e
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise pipe_os_error(ERROR_SEM_TIMEOUT, "", pipe)
        try:
            win32pipe.WaitNamedPipe(pipe, max(1, timeout_ms(left)))
        except pywintypes.error as e:
            if e.winerror == ERROR_FILE_NOT_FOUND:
                continue  # gone between the two calls: CreateFile says so
            raise pipe_os_error(e.winerror, e.strerror, pipe) from e


def open_control_pipe(pipe: str, timeout: float | None) -> PipeChannel:
    """Connect to the control pipe ``pipe`` if the agent serves it; the channel's reads
    and writes then honour their own timeouts. ``ControlPipeRefusedError`` (EACCES) when
    someone else serves it, other ``OSError``s as a socket's connect."""
    try:
        name = control_pipe_address(pipe)
    except ValueError as e:
        raise OSError(errno.EINVAL, str(e), pipe) from e
    handle = _create(name, None if timeout is None else time.monotonic() + timeout)
    try:
        pid = int(win32pipe.GetNamedPipeServerProcessId(handle))
        sid = process_sid(pid)
        service = agent_service_pid() if sid is None else None
        problem = control_server_problem(name, PipeClient(pid=pid, sid=sid), service_pid=service)
        if problem is not None:
            raise ControlPipeRefusedError(errno.EACCES, problem, name)
        return PipeChannel(_Win32PipeOps(handle), name)
    except BaseException:
        win32api.CloseHandle(handle)
        raise
