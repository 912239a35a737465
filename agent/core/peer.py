"""The client on the other end of a socket, as a value, and the one redaction rule for
command lines that reach an audit record.

``agent.platform.peer`` fills it in from the kernel and psutil.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PeerInfo", "ProcessSummary", "redact_command_line"]


@dataclass(frozen=True, slots=True)
class ProcessSummary:
    pid: int
    name: str | None = None
    executable: str | None = None


@dataclass(frozen=True)
class PeerInfo:
    """The client process on the other end of the socket."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    name: str | None = None
    executable: str | None = None
    command_line: tuple[str, ...] = ()
    parents: tuple[ProcessSummary, ...] = field(default=())


_SECRET_FLAGS = re.compile(
    r"^(-p|-u|--password|--pass|--token|--secret|--user|--auth|--registry-auth|"
    r"--password-stdin)$",
    re.IGNORECASE,
)
_SECRET_INLINE = re.compile(r"^(--?(password|pass|token|secret|user|auth)[a-z-]*)=.*$", re.I)
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact_command_line(argv: list[str]) -> tuple[str, ...]:
    """A command line fit for an audit log: values of secret-looking flags and URL
    credentials are replaced, so a ``--password`` never reaches the SIEM."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        if _SECRET_FLAGS.match(arg):
            out.append(arg)
            hide_next = arg.lower() != "--password-stdin"
            continue
        inline = _SECRET_INLINE.match(arg)
        if inline:
            out.append(f"{inline.group(1)}=<redacted>")
            continue
        out.append(_URL_USERINFO.sub(r"\1<redacted>@", arg))
    return tuple(out)
