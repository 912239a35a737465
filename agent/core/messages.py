"""Words people read: the denial message the Docker CLI prints, and its parts.

The message is a contract with the people reading it in the Docker CLI: it starts with
``pullgate:``, names the canonical image, says why (category or rule) and what to do
instead. It must never contain "no such file or directory" or "permission denied",
which make ``docker run`` exit with 126/127 instead of 125.
"""

from __future__ import annotations

import re

from agent.core.decision import Decision

__all__ = ["FORBIDDEN_PHRASES", "defuse", "denial_message", "remediation_lines"]

FORBIDDEN_PHRASES = ("no such file or directory", "permission denied")


def remediation_lines(decision: Decision) -> list[str]:
    """What to do instead, one sentence each, most useful first."""
    r = decision.remediation
    lines = []
    if r.hint:
        lines.append(_sentence(r.hint[0].upper() + r.hint[1:]))
    if r.alternative:
        lines.append(f"Use the allowed official image {r.alternative!r} instead.")
    if r.help_url:
        lines.append(f"Help: {r.help_url}")
    if r.contact:
        lines.append(f"Contact: {r.contact}")
    if not lines:
        lines.append(
            f"Check an image before using it with `pullgate check IMAGE`; "
            f"ask your IT administrator to allow {decision.reference.familiar_name()!r} "
            "if you need it."
        )
    return lines


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def denial_message(decision: Decision, context: str | None = None, *, verb: str = "pulling") -> str:
    """The one-line ``message`` of the 403 the Docker CLI prints after "Error response
    from daemon: ". ``context`` says where the image was named (a Dockerfile line);
    ``verb`` what was refused ("pulling", "running", "loading")."""
    where = f" ({context})" if context else ""
    parts = [
        f"pullgate: {verb} {decision.canonical}{where} is not allowed:",
        _sentence(decision.reason),
        *remediation_lines(decision),
    ]
    return defuse(" ".join(parts))


def defuse(text: str) -> str:
    """Keep the exit code of ``docker run`` at 125 whatever an admin or OS error wrote."""
    for phrase, replacement in _REPLACEMENTS.items():
        text = re.sub(re.escape(phrase), replacement, text, flags=re.IGNORECASE)
    return text


_REPLACEMENTS = {
    "no such file or directory": "not found",
    "permission denied": "access not granted",
}
