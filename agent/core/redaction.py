"""The one place credentials are taken out of what the agent records or shows.

Three shapes reach the audit log, the event stream and ``pullgate status``: text with
URLs with a ``user:password@`` part (policy sources, registry addresses), JWTs or
``"refresh_token": ...`` values in it; command lines of the processes that talk to the
daemon or the control API (``docker login -p ...``, ``curl -d '{"id_token": ...}'``); and
structured details whose keys name a secret. Each has one rule here; all replace the
secret with ``REDACTED``.
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


_JWT: Final = re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_=-]*")
"""A JWS in compact form (an ID or access token): its header always starts ``{"`` (``eyJ``)."""
_JSON_SECRET: Final = re.compile(
    r"""(["']?(?:id_token|refresh_token|access_token|password|secret)["']?\s*[:=]\s*["']?)"""
    r"""[^"'\s,}&]+""",
    re.IGNORECASE,
)
"""``"refresh_token": "..."`` (a JSON body or form given on a command line, e.g. curl -d)."""


def redact_text(text: str | None) -> str | None:
    """``text`` with the credentials of any URL in it (``scheme://user:pw@``), tokens
    (JWTs) and ``token``/``password`` values of JSON or forms in it replaced."""
    if text is None:
        return None
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    if "ey" in text or "=" in text or ":" in text:
        text = _JWT.sub(REDACTED, text)
        text = _JSON_SECRET.sub(rf"\1{REDACTED}", text)
    return text


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
        out.append(redact_text(arg) or "")
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
