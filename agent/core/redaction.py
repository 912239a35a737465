"""The one place credentials are taken out of what the agent records or shows.

Three shapes reach the audit log, the event stream and ``pullgate status``: URLs with a
``user:password@`` part (policy sources, registry addresses), command lines of the
processes that talk to the daemon (``docker login -p ...``), and structured details whose
keys name a secret. Each has one rule here; all replace the secret with ``REDACTED``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["REDACTED", "redact_command_line", "redact_details", "redact_text"]

REDACTED: Final = "<redacted>"

_URL_USERINFO: Final = re.compile(r"(://)[^/@\s]+@")
_SECRET_KEY: Final = re.compile(
    r"auth|token|password|passwd|secret|credential|cookie|key$", re.IGNORECASE
)
"""Searched anywhere in a details key (``registry_auth``, ``api_key``); not ``pass``,
which would hide ``bypass``."""
_SECRET_FLAG: Final = re.compile(
    r"^(-p|-u|--password|--pass|--token|--secret|--user|--auth|--registry-auth|"
    r"--password-stdin)$",
    re.IGNORECASE,
)
"""A flag whose value is the next argument (``--password-stdin`` has none)."""
_SECRET_INLINE: Final = re.compile(
    r"^(--?(password|pass|token|secret|user|auth)[a-z-]*)=.*$", re.IGNORECASE
)


def redact_text(text: str | None) -> str | None:
    """``text`` with the credentials of any URL in it (``scheme://user:pw@``) replaced."""
    return None if text is None else _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


def redact_command_line(argv: Iterable[str]) -> tuple[str, ...]:
    """A command line fit for an audit log: values of secret-looking flags and URL
    credentials are replaced, so a ``--password`` never reaches the SIEM."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if _SECRET_FLAG.match(arg):
            out.append(arg)
            hide_next = arg.lower() != "--password-stdin"
            continue
        inline = _SECRET_INLINE.match(arg)
        if inline:
            out.append(f"{inline.group(1)}={REDACTED}")
            continue
        out.append(_URL_USERINFO.sub(rf"\1{REDACTED}@", arg))
    return tuple(out)


def redact_details(value: Any) -> Any:
    """Structured details (JSON-shaped) minus anything credential-shaped: values under a
    secret-looking key, and URL credentials in any string."""
    if isinstance(value, dict):
        return {
            str(k): REDACTED if _SECRET_KEY.search(str(k)) else redact_details(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_details(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_text(str(value))
