"""Windows, as values: where the system agent keeps its files, the service's names, and
the named pipes it serves (names, security descriptors, open flags, the docker endpoint
of each, who is on the other end).

Pure: strings and numbers in, strings and values out, and no pywin32, so every rule here
is unit-tested on Linux; the edges that do the I/O stay thin (``agent.platform.
named_pipe_server`` creates the pipes, ``agent.daemon.winservice`` talks to the Service
Control Manager). Windows constants carry their names from the SDK headers (winbase.h,
winnt.h, winsvc.h) so they can be looked up.

Docker Desktop on Windows serves its daemon at ``\\\\.\\pipe\\docker_engine`` (to every
member of ``docker-users``). The agent, a LocalSystem service, serves each console user
a pipe of their own, ``\\\\.\\pipe\\pullgate_docker_<the user's SID>``, which only that
user (besides SYSTEM and Administrators) may open; the user's docker context points at
it (``npipe:////./pipe/pullgate_docker_<SID>``). docs/deploy/windows.md says what that
does and does not stop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import PureWindowsPath
from typing import Final

__all__ = [
    "ADMINISTRATORS_SID",
    "CLI_CREATION_FLAGS",
    "CONTEXT_NAME",
    "CONTEXT_SHOW_ARGS",
    "CONTROL_PIPE_PREFIX",
    "DESKTOP_ENGINE_PIPE",
    "DESKTOP_PIPES",
    "DOCKER_CLI",
    "EVENT_SOURCE",
    "HANDLE_FLAG_INHERIT",
    "LOCAL_SYSTEM_SID",
    "PIPE_ROOT",
    "PROC_THREAD_ATTRIBUTE_HANDLE_LIST",
    "SERVICE_ARGUMENTS",
    "SERVICE_DISPLAY_NAME",
    "SERVICE_NAME",
    "SHIM_PIPE_PREFIX",
    "STARTF_USESTDHANDLES",
    "UPSTREAM_FLAGS",
    "USER_DESKTOP",
    "ClientVerdict",
    "PipeClient",
    "PipeSpec",
    "WindowsNameError",
    "WindowsSession",
    "agent_log_path",
    "attributed_sid",
    "audit_dir",
    "bypass_fix",
    "check_sid",
    "context_inspect_args",
    "context_instructions",
    "context_use_args",
    "control_pipe",
    "control_pipe_pattern",
    "data_dir",
    "desktop_host",
    "docker_context_commands",
    "docker_context_create_args",
    "docker_host",
    "has_enabled_group",
    "is_user_sid",
    "judge_client",
    "pipe_from_docker_host",
    "pipe_sddl",
    "program_data",
    "shim_pipe",
    "shim_pipe_pattern",
    "state_dir",
    "upstream_server_problem",
    "users_to_serve",
]


class WindowsNameError(ValueError):
    """A SID, pipe name or docker endpoint that is not what it must be."""


# ------------------------------------------------------------------ files

_DEFAULT_PROGRAM_DATA: Final = r"C:\ProgramData"


def program_data(environ: Mapping[str, str]) -> PureWindowsPath:
    """``%ProgramData%``; ``C:\\ProgramData`` when unset or not an absolute path (a
    service's environment is the machine's, but a relative value must never make the
    agent write its state beside whatever the working directory is)."""
    value = environ.get("ProgramData") or environ.get("PROGRAMDATA") or ""
    path = PureWindowsPath(value)
    if not value or not path.is_absolute():
        return PureWindowsPath(_DEFAULT_PROGRAM_DATA)
    return path


def data_dir(environ: Mapping[str, str]) -> PureWindowsPath:
    """``%ProgramData%\\Pullgate``: the MSI creates it and sets its ACL (SYSTEM and
    Administrators full, Users read)."""
    return program_data(environ) / "Pullgate"


def state_dir(environ: Mapping[str, str]) -> PureWindowsPath:
    """The policy cache, status and pid file: ``%ProgramData%\\Pullgate\\State``."""
    return data_dir(environ) / "State"


def audit_dir(environ: Mapping[str, str]) -> PureWindowsPath:
    """The audit log: ``%ProgramData%\\Pullgate\\Logs`` (SYSTEM and Administrators only)."""
    return data_dir(environ) / "Logs"


def agent_log_path(environ: Mapping[str, str]) -> PureWindowsPath:
    """Where the service writes what the agent prints (a service has no console):
    ``%ProgramData%\\Pullgate\\Logs\\agent.log``. Start and stop, and failures to start,
    also go to the Event Log (Application, source ``PullgateAgent``)."""
    return audit_dir(environ) / "agent.log"


# ------------------------------------------------------------------ the service

SERVICE_NAME: Final = "PullgateAgent"
SERVICE_DISPLAY_NAME: Final = "Pullgate agent"
EVENT_SOURCE: Final = SERVICE_NAME
"""The Event Log source (Application log): the service's name, as pywin32 registers it."""
SERVICE_ARGUMENTS: Final = ("service",)
"""What the MSI's ServiceInstall passes to ``pullgate.exe`` (packaging/windows/Pullgate.wxs):
``pullgate service`` (``agent.cli.service_cmd``). Paths come from this module, so the
installer passes none."""


# ------------------------------------------------------------------ SIDs and pipe names

PIPE_ROOT: Final = "\\\\.\\pipe\\"
DESKTOP_ENGINE_PIPE: Final = PIPE_ROOT + "docker_engine"
"""Docker Desktop's daemon (and Docker Engine's on Windows): the agent's upstream."""
SHIM_PIPE_PREFIX: Final = "pullgate_docker_"
CONTROL_PIPE_PREFIX: Final = "pullgate_control_"
_MAX_PIPE_NAME: Final = 256  # CreateNamedPipe: the whole name, \\.\pipe\ included

# S-1-<authority>-<up to 15 subauthorities> (SID_MAX_SUB_AUTHORITIES), decimal, no
# leading zeros: the string ConvertSidToStringSid gives, which is what names a pipe.
_SID: Final = re.compile(r"S-1-(?:0|[1-9][0-9]{0,12})(?:-(?:0|[1-9][0-9]{0,9})){1,15}")

LOCAL_SYSTEM_SID: Final = "S-1-5-18"
ADMINISTRATORS_SID: Final = "S-1-5-32-544"


def check_sid(sid: str) -> str:
    """``sid`` if it is a user or group SID in string form; else ``WindowsNameError``.

    A pipe name is built from it, so nothing else may get through: no ``\\``, no
    wildcards, no name of another pipe."""
    if not _SID.fullmatch(sid):
        raise WindowsNameError(f"not a SID in string form (S-1-5-21-...): {sid!r}")
    if any(int(part) > 0xFFFFFFFF for part in sid.split("-")[3:]):
        raise WindowsNameError(f"a sub-authority of {sid!r} exceeds 32 bits")
    return sid


def _pipe(prefix: str, sid: str) -> str:
    name = PIPE_ROOT + prefix + check_sid(sid)
    if len(name) > _MAX_PIPE_NAME:  # pragma: no cover - 15 sub-authorities still fit
        raise WindowsNameError(f"pipe name longer than {_MAX_PIPE_NAME}: {name}")
    return name


def shim_pipe(sid: str) -> str:
    """The Docker API endpoint the agent serves the user ``sid``."""
    return _pipe(SHIM_PIPE_PREFIX, sid)


def control_pipe(sid: str) -> str:
    """The control API endpoint of the user ``sid`` (the tray's, the CLI's).

    One per user, like the shim's, rather than one for everybody: whoever may open a pipe
    for writing may also create instances of it (FILE_CREATE_PIPE_INSTANCE is
    FILE_APPEND_DATA, part of GENERIC_WRITE), and a second server on a shared control pipe
    would receive other users' ID tokens (``PUT /v1/identity``)."""
    return _pipe(CONTROL_PIPE_PREFIX, sid)


def shim_pipe_pattern() -> str:
    """The shim pipes' names for messages and status: ``\\\\.\\pipe\\pullgate_docker_<SID>``."""
    return PIPE_ROOT + SHIM_PIPE_PREFIX + "<SID>"


def control_pipe_pattern() -> str:
    """The control pipes' names for messages and status."""
    return PIPE_ROOT + CONTROL_PIPE_PREFIX + "<SID>"


def docker_host(pipe: str) -> str:
    """The docker CLI's spelling of a pipe: ``npipe:////./pipe/<name>`` (DOCKER_HOST, a
    context's ``--docker host=``)."""
    if not pipe.startswith(PIPE_ROOT) or "\\" in pipe[len(PIPE_ROOT) :] or "/" in pipe:
        raise WindowsNameError(f"not a local pipe name (\\\\.\\pipe\\NAME): {pipe!r}")
    return "npipe:////./pipe/" + pipe[len(PIPE_ROOT) :]


def pipe_from_docker_host(url: str) -> str:
    """The pipe a ``npipe://`` URL names, for the local machine only (``npipe:////./pipe/x``
    and the docker CLI's other accepted form ``npipe:///./pipe/x``)."""
    for prefix in ("npipe:////./pipe/", "npipe:///./pipe/"):
        if url.startswith(prefix):
            name = url[len(prefix) :]
            if name and "/" not in name and "\\" not in name:
                return PIPE_ROOT + name
    raise WindowsNameError(f"not a local named pipe URL (npipe:////./pipe/NAME): {url!r}")


# ------------------------------------------------------------------ creating a pipe

# CreateNamedPipe's open mode and pipe mode (winbase.h).
PIPE_ACCESS_DUPLEX: Final = 0x00000003
FILE_FLAG_FIRST_PIPE_INSTANCE: Final = 0x00080000
FILE_FLAG_OVERLAPPED: Final = 0x40000000
WRITE_DAC: Final = 0x00040000
PIPE_TYPE_BYTE: Final = 0x00000000
PIPE_READMODE_BYTE: Final = 0x00000000
PIPE_WAIT: Final = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS: Final = 0x00000008
PIPE_UNLIMITED_INSTANCES: Final = 255
SDDL_REVISION_1: Final = 1


def pipe_sddl(user_sid: str) -> str:
    """The security descriptor of a user's pipe, in SDDL.

    - ``O:SYG:SY``: owned by LocalSystem. The owner may always rewrite the DACL; a pipe
      owned by the user could be opened up to others by them.
    - ``D:P``: a protected DACL, nothing inherited.
    - ``(D;;GA;;;NU)``: network logons refused (PIPE_REJECT_REMOTE_CLIENTS refuses remote
      clients too; this also covers a loopback SMB open).
    - ``(A;;GA;;;SY)(A;;GA;;;BA)``: LocalSystem (the agent) and Administrators, full.
    - ``(A;;GRGW;;;<user>)``: the user reads and writes, as dockerd grants its
      ``docker-users`` group on ``docker_engine``; no one else is granted anything, so
      another user's open fails with ERROR_ACCESS_DENIED before the agent sees it.
    """
    return f"O:SYG:SYD:P(D;;GA;;;NU)(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;{check_sid(user_sid)})"


@dataclass(frozen=True)
class PipeSpec:
    """Everything ``CreateNamedPipe`` is given for one instance of one pipe."""

    name: str
    sddl: str
    first: bool
    buffer_size: int = 65536

    @property
    def open_mode(self) -> int:
        """Duplex and overlapped (the Proactor's I/O completion port). The first instance
        also carries FILE_FLAG_FIRST_PIPE_INSTANCE: if anyone already serves this name (a
        user who created it before the service started, to receive other processes'
        requests), creating it fails with ERROR_ACCESS_DENIED instead of silently
        adding an instance beside theirs, and the agent reports the squatter."""
        mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
        return mode | FILE_FLAG_FIRST_PIPE_INSTANCE if self.first else mode

    @property
    def pipe_mode(self) -> int:
        """A byte stream like a socket (HTTP, BuildKit's h2c), local clients only."""
        return PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS

    @classmethod
    def for_user(cls, name: str, user_sid: str, *, first: bool) -> PipeSpec:
        return cls(name=name, sddl=pipe_sddl(user_sid), first=first)


# ------------------------------------------------------------------ who is connected

# OpenProcess / OpenProcessToken / GetTokenInformation (winnt.h).
PROCESS_QUERY_LIMITED_INFORMATION: Final = 0x1000
TOKEN_QUERY: Final = 0x0008
TOKEN_USER: Final = 1  # TOKEN_INFORMATION_CLASS TokenUser
SE_GROUP_ENABLED: Final = 0x4
SE_GROUP_USE_FOR_DENY_ONLY: Final = 0x10


def has_enabled_group(groups: Iterable[tuple[str, int]], sid: str) -> bool:
    """Whether a token's groups (``TokenGroups``: SID strings and attributes) hold ``sid``
    enabled. An administrator's filtered token under UAC carries Administrators for deny
    only, and the pipe's ACL does not grant it either: not an administrator here."""
    return any(
        group.upper() == sid.upper()
        and attributes & SE_GROUP_ENABLED
        and not attributes & SE_GROUP_USE_FOR_DENY_ONLY
        for group, attributes in groups
    )


@dataclass(frozen=True)
class PipeClient:
    """The process on the other end of a pipe instance: ``GetNamedPipeClientProcessId``,
    then that process's primary token (``OpenProcessToken``, ``TokenUser``). ``sid`` is
    None when the token could not be read (the process exited, or is protected)."""

    pid: int
    sid: str | None
    session_id: int | None = None


class ClientVerdict(Enum):
    """Whom a connection on a user's pipe is attributed to."""

    OWNER = "owner"  # the user the pipe was made for
    PRIVILEGED = "privileged"  # LocalSystem or an administrator (the ACL grants them)
    UNVERIFIED = "unverified"  # token unreadable: attributed to the pipe's user
    STRANGER = "stranger"  # someone the ACL does not admit: a handle passed on, a bug


def judge_client(pipe_sid: str, client: PipeClient, *, client_is_admin: bool) -> ClientVerdict:
    """Whom a connection on ``pipe_sid``'s pipe is from.

    The ACL is the access control: Windows checked the opener's token against it at
    ``CreateFile``. The client's process id and token are for attribution, read after
    the fact, so a process that exited in between (its id possibly reused) can show
    someone else: a stranger is refused and reported, never trusted as the pipe's user.
    """
    if client.sid is None:
        return ClientVerdict.UNVERIFIED
    if client.sid.upper() == pipe_sid.upper():
        return ClientVerdict.OWNER
    if client.sid == LOCAL_SYSTEM_SID or client_is_admin:
        return ClientVerdict.PRIVILEGED
    return ClientVerdict.STRANGER


def attributed_sid(pipe_sid: str, client: PipeClient) -> str:
    """The SID a connection on ``pipe_sid``'s pipe is attributed to (``PeerInfo.user``,
    the key of its sign-in): its token's user, or the pipe's user when the token could not
    be read (``ClientVerdict.UNVERIFIED``: the ACL admitted it, so it is the pipe's user,
    LocalSystem or an administrator)."""
    return client.sid if client.sid is not None else pipe_sid


# ------------------------------------------------------------------ signed-in users

# WTS_CONNECTSTATE_CLASS (wtsapi32.h)
WTS_ACTIVE: Final = 0
WTS_CONNECTED: Final = 1
WTS_DISCONNECTED: Final = 4

_USER_SID: Final = re.compile(r"S-1-5-21-\d+-\d+-\d+-\d+|S-1-12-1-\d+-\d+-\d+-\d+")


def is_user_sid(sid: str) -> bool:
    """A person's account: a local or Active Directory user (``S-1-5-21-...``) or a
    Microsoft Entra ID user (``S-1-12-1-...``: Intune's Entra-joined laptops). Not
    LocalSystem, the service accounts, or the virtual ones of the desktop itself (DWM and
    font-driver hosts, ``S-1-5-90-...``, ``S-1-5-96-...``), which have sessions too."""
    return _USER_SID.fullmatch(sid) is not None


@dataclass(frozen=True)
class WindowsSession:
    """A Terminal Services session (``WTSEnumerateSessions``) and its user's SID (from
    ``WTSQueryUserToken``; None without a signed-in user)."""

    session_id: int
    state: int
    sid: str | None
    user: str = ""


def users_to_serve(sessions: Iterable[WindowsSession]) -> dict[str, WindowsSession]:
    """The users who get pipes, by SID: each person signed in to a session that is
    active, connected or disconnected (fast user switching keeps a switched-away user's
    Docker Desktop running, so their pipe stays). Session 0 (services) never does; a
    user signed in twice (console and RDP) gets one pair of pipes, named by their SID."""
    users: dict[str, WindowsSession] = {}
    for session in sorted(sessions, key=lambda s: s.session_id):
        if session.session_id == 0 or session.sid is None or not is_user_sid(session.sid):
            continue
        if session.state not in (WTS_ACTIVE, WTS_CONNECTED, WTS_DISCONNECTED):
            continue
        users.setdefault(session.sid, session)
    return users


# ------------------------------------------------------------------ the upstream pipe

GENERIC_READ: Final = 0x80000000
GENERIC_WRITE: Final = 0x40000000
OPEN_EXISTING: Final = 3
SECURITY_SQOS_PRESENT: Final = 0x00100000
SECURITY_IDENTIFICATION: Final = 0x00010000  # SecurityIdentification << 16

UPSTREAM_FLAGS: Final = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION
"""``CreateFile``'s flags for the agent's connection to Docker Desktop's pipe.

The agent runs as LocalSystem, and whoever serves a pipe may impersonate its clients
(``ImpersonateNamedPipeClient``) at the level the client allows: by default, full
impersonation. ``\\\\.\\pipe\\docker_engine`` is served by a process of the signed-in
user, and a user can create that name first, so connecting with the defaults (asyncio's
``create_pipe_connection`` does) would hand that user a SYSTEM token. With
SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION the server can only read who the client
is, never act as it."""


def upstream_server_problem(pipe: str, endpoint_sid: str, server: PipeClient) -> str | None:
    """Why the agent must not forward ``endpoint_sid``'s requests to the process serving
    ``pipe`` (None: it may). That process must be the user's own Docker Desktop (their
    token) or a system service (LocalSystem, as Docker Desktop's privileged helper runs);
    another user's process would receive this user's requests, with the agent as the
    deputy that carried them."""
    if server.sid is not None and (
        server.sid.upper() == endpoint_sid.upper() or server.sid == LOCAL_SYSTEM_SID
    ):
        return None
    who = "an unknown process" if server.sid is None else f"{server.sid} (pid {server.pid})"
    return (
        f"pullgate: refusing to forward to {pipe}: it is served by {who}, not by the "
        f"Docker Desktop of {endpoint_sid}. Quit whatever holds that pipe and restart Docker "
        "Desktop, or ask your IT administrator (`pullgate doctor`)."
    )


# ------------------------------------------------------------------ the user's docker context

CONTEXT_NAME: Final = "pullgate"
"""The docker context the agent installs for each user (the same name as on macOS)."""


def context_instructions(sid: str) -> str:
    """What the user runs once (in their own PowerShell or cmd) when the agent could not
    install their context: the two docker commands, quoted for a shell."""
    create = " ".join(f'"{arg}"' if " " in arg else arg for arg in docker_context_create_args(sid))
    return f"docker {create}; docker context use {CONTEXT_NAME}"


DOCKER_CLI: Final = r"C:\Program Files\Docker\Docker\resources\bin\docker.exe"
"""Docker Desktop's docker CLI (its installer's default place), run as each user."""


def docker_context_commands(
    sid: str, *, exists: bool, host: str | None = None
) -> tuple[tuple[str, ...], ...]:
    """The docker commands that leave the user's ``pullgate`` context pointing at their
    shim pipe: ``context create`` when ``context inspect pullgate`` failed, ``context
    update`` when it leads elsewhere (or its host could not be read), nothing when it
    already leads there. Whether to select it is ``agent.core.desktop_context``'s rule."""
    ours = docker_host(shim_pipe(sid))
    if not exists:
        return (docker_context_create_args(sid),)
    if host == ours:
        return ()
    return (("context", "update", CONTEXT_NAME, "--docker", f"host={ours}"),)


CONTEXT_SHOW_ARGS: Final = ("context", "show")
"""The user's current context (``agent.core.desktop_context.parse_context_show``)."""


def context_inspect_args(name: str) -> tuple[str, ...]:
    """``docker context inspect NAME``: JSON (``agent.core.desktop_context.
    parse_context_host``). The caller passes only a name docker accepts
    (``valid_context_name``), so it is never read as an option."""
    return ("context", "inspect", name)


def context_use_args() -> tuple[str, ...]:
    """Select the ``pullgate`` context (``desktop_context: enforce``)."""
    return ("context", "use", CONTEXT_NAME)


def bypass_fix(sid: str) -> str:
    """What a bypass notice tells the user ``sid`` to do instead of using Docker
    Desktop's pipe directly."""
    return (
        f"point docker at the shim ({docker_host(shim_pipe(sid))}): "
        f"`docker context use {CONTEXT_NAME}`, or unset DOCKER_HOST"
    )


DESKTOP_PIPES: Final = frozenset(
    {"docker_engine", "dockerdesktoplinuxengine", "dockerdesktopwindowsengine"}
)
"""Docker Desktop's own pipes, lower-cased (pipe names are case-insensitive): the engine
the agent forwards to and those of Desktop's ``desktop-linux`` and ``desktop-windows``
contexts. A context leading to one of them goes around the shim."""


def desktop_host(host: str | None) -> str | None:
    """``host`` as the context rule must compare it: any spelling of one of Docker
    Desktop's pipes (``npipe:///./pipe/Docker_Engine``) becomes ``docker_host`` of
    ``DESKTOP_ENGINE_PIPE``, so a context of the user's that leads straight to Desktop is
    replaced like Desktop's own; any other host is returned as it is."""
    if host is None:
        return None
    try:
        pipe = pipe_from_docker_host(host)
    except WindowsNameError:
        return host
    if pipe[len(PIPE_ROOT) :].lower() in DESKTOP_PIPES:
        return docker_host(DESKTOP_ENGINE_PIPE)
    return host


# CreateProcessAsUser's flags for the docker CLI run as the user (winbase.h, winnt.h).
CREATE_UNICODE_ENVIRONMENT: Final = 0x00000400
EXTENDED_STARTUPINFO_PRESENT: Final = 0x00080000
CREATE_NO_WINDOW: Final = 0x08000000
STARTF_USESTDHANDLES: Final = 0x00000100
HANDLE_FLAG_INHERIT: Final = 0x00000001
PROC_THREAD_ATTRIBUTE_HANDLE_LIST: Final = 0x00020002  # ProcThreadAttributeHandleList | INPUT

CLI_CREATION_FLAGS: Final = (
    CREATE_NO_WINDOW | CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT
)
"""The docker CLI runs hidden, with the user's environment block (UTF-16), and with a
STARTUPINFOEX whose PROC_THREAD_ATTRIBUTE_HANDLE_LIST names the only handles it inherits:
its stdin (NUL) and the write ends of the two pipes its output is read from. Without that
list, ``bInheritHandles`` would hand the user's process every inheritable handle of the
service (pywin32's SECURITY_ATTRIBUTES are inheritable unless told otherwise), other
users' pipes among them."""

USER_DESKTOP: Final = "winsta0\\default"
"""The interactive desktop of the user's session, where their process is created (a
service's own desktop does not exist in their session)."""


def docker_context_create_args(sid: str) -> tuple[str, ...]:
    """``docker`` arguments that create the user's context, pointing at their shim pipe;
    ``docker context use pullgate`` then selects it. Run as that user (their
    ``%USERPROFILE%\\.docker``), never written with the service's rights."""
    return (
        "context",
        "create",
        CONTEXT_NAME,
        "--description",
        "Docker Desktop through Pullgate's image policy",
        "--docker",
        f"host={docker_host(shim_pipe(sid))}",
    )
