"""The control pipe on Windows as its clients (the CLI, the tray) see it, as values: which
pipe an address names, the flags it is opened with, and whether the process serving it
is the agent.

Pure, like ``agent.platform.windows`` (whose names it uses): no pywin32, so every rule
here is unit-tested on Linux. ``agent.platform.pipe_client`` hands them to Windows.
"""

from __future__ import annotations

from typing import Final

from agent.platform.windows import (
    FILE_FLAG_OVERLAPPED,
    LOCAL_SYSTEM_SID,
    PIPE_ROOT,
    SECURITY_IDENTIFICATION,
    SECURITY_SQOS_PRESENT,
    SERVICE_NAME,
    PipeClient,
    WindowsNameError,
    control_pipe_pattern,
)

__all__ = [
    "CONTROL_CLIENT_FLAGS",
    "control_pipe_address",
    "control_server_problem",
    "local_pipe_name",
]

CONTROL_CLIENT_FLAGS: Final = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION
"""``CreateFile``'s flags for the CLI's and the tray's connection to their control pipe:
overlapped, so that a read can time out and be cancelled (the event stream's keep-alive
timeout), and identification only, as for the agent's upstream: whoever serves the pipe
may learn who the client is, never act as them. The client sends the user's ID token
there (``PUT /v1/identity``); a squatter allowed to impersonate the user would not even
need it."""

_MAX_PIPE_NAME: Final = 256  # CreateNamedPipe: the whole name, \\.\pipe\ included
_LOCAL_PIPE_ROOTS: Final = ("\\\\.\\pipe\\", "//./pipe/")


def local_pipe_name(address: str) -> str | None:
    """``address`` as ``\\\\.\\pipe\\NAME`` when it names a pipe on this machine
    (``\\\\.\\pipe\\NAME`` or ``//./pipe/NAME``, any case), else None.

    A pipe on another machine (``\\\\server\\pipe\\...``) is no agent's: the server's
    process id would name a process there, and the check that it is the agent would look
    at whichever local process has that number."""
    for root in _LOCAL_PIPE_ROOTS:
        if address[: len(root)].lower() == root:
            name = address[len(root) :]
            if not name or "\0" in name or len(PIPE_ROOT + name) > _MAX_PIPE_NAME:
                return None
            return PIPE_ROOT + name.replace("/", "\\")
    return None


def control_pipe_address(address: str) -> str:
    """The pipe a ``--control`` value names on Windows; ``WindowsNameError`` saying what
    to pass when it names none (a socket path, a pipe on another machine)."""
    pipe = local_pipe_name(address)
    if pipe is None:
        raise WindowsNameError(
            f"{address} is not a named pipe of this machine: on Windows the agent's control "
            f"API is the pipe {control_pipe_pattern()} (the default; --control takes "
            "\\\\.\\pipe\\NAME)"
        )
    return pipe


def control_server_problem(pipe: str, server: PipeClient, *, service_pid: int | None) -> str | None:
    """Why the CLI or tray must not talk to the process serving ``pipe`` (None: it is the
    agent). Asked before anything is written to the pipe.

    The agent is the ``PullgateAgent`` service, LocalSystem. ``server`` is the serving
    process (``GetNamedPipeServerProcessId``) and its token's user, None when that could
    not be read: Windows lets users read the tokens of their own processes but not
    LocalSystem's, so for most callers an unreadable token is the expected case, and the
    process is then accepted only if it is the service's, as the Service Control Manager
    reports it (``service_pid``). A token that can be read (an administrator's client,
    or a user's own process squatting the name) must be LocalSystem's."""
    if server.sid is not None:
        if server.sid == LOCAL_SYSTEM_SID:
            return None
        who = f"{server.sid} (pid {server.pid})"
    elif server.pid > 0 and server.pid == service_pid:
        return None
    else:
        service = (
            f"whose process is {service_pid}"
            if service_pid is not None
            else "which is not running or could not be asked"
        )
        who = f"process {server.pid}, not the {SERVICE_NAME} service ({service})"
    return (
        f"pullgate: refusing {pipe}: it is served by {who}, not by the Pullgate agent (the "
        f"{SERVICE_NAME} service, LocalSystem). Another program has taken the agent's pipe "
        "name; nothing was sent to it. Tell your IT administrator (the agent's log names "
        "the pipes it could not create)."
    )
