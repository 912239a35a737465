"""The user's ``pullgate`` docker context in Docker Desktop mode, as values: what the docker
CLI answered, what to do about it, and what status says.

The agent runs the docker CLI as each user (``agent.daemon.desktop`` with ``subprocess``
on macOS and Linux, ``agent.daemon.windows_endpoints`` with the user's token on Windows)
and decides here, so both platforms select the context by the same rule
(``agent.core.desktop.should_select_context``) and report it in the same words. The
CLI's output is the user's to shape (their config, their contexts), so it is read
strictly: bounded, JSON through ``strict_json``, a context name only if docker itself
would accept it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from agent.core import strict_json
from agent.core.desktop import should_select_context

__all__ = [
    "MAX_CLI_OUTPUT",
    "CappedOutput",
    "CliResult",
    "ContextChoice",
    "ContextOutputError",
    "choose_context",
    "needs_current_host",
    "parse_context_host",
    "parse_context_show",
    "valid_context_name",
]

MAX_CLI_OUTPUT: Final = 1 << 20
"""The most of one stream of one CLI run that is kept (``context inspect`` writes well
under a kilobyte); the rest is read and dropped, so the CLI never blocks on a full pipe."""

# The docker CLI's own rule for a context name, as its refusal quotes it.
_CONTEXT_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.+-]+")


class ContextOutputError(ValueError):
    """The docker CLI's answer is not what it writes: the agent will not guess."""


@dataclass
class CappedOutput:
    """One output stream of a CLI run, kept up to ``limit`` bytes; what comes after is
    counted, not kept."""

    limit: int = MAX_CLI_OUTPUT
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def feed(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.data), 0)
        self.data += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)

    @property
    def value(self) -> bytes:
        return bytes(self.data)


@dataclass(frozen=True)
class CliResult:
    """A docker CLI run: its exit code and (bounded) output."""

    code: int
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False

    def last_error_line(self) -> str:
        """The CLI's last line on stderr (where it says why), for a message."""
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else "no message"


def valid_context_name(name: str) -> bool:
    """Whether docker would accept ``name`` as a context's (so it is never an option)."""
    return _CONTEXT_NAME.fullmatch(name) is not None


def parse_context_show(stdout: bytes) -> str | None:
    """The current context from ``docker context show``; None if it printed no one name."""
    text = stdout.decode("utf-8", "replace").strip()
    if not text or "\n" in text or "\r" in text:
        return None
    return text


def parse_context_host(stdout: bytes, name: str) -> str | None:
    """The docker endpoint's host of context ``name`` from ``docker context inspect
    name`` (a JSON array of one context); None if the context has no docker endpoint
    host. ``ContextOutputError`` if the answer is not that."""
    try:
        value = strict_json.loads(stdout)
    except strict_json.StrictJSONError as e:
        raise ContextOutputError(f"`docker context inspect {name}` did not answer JSON: {e}") from e
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise ContextOutputError(f"`docker context inspect {name}` did not answer one context")
    context = value[0]
    if context.get("Name") != name:
        raise ContextOutputError(f"`docker context inspect {name}` answered another context")
    endpoints = context.get("Endpoints")
    docker = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = docker.get("Host") if isinstance(docker, dict) else None
    if host is None or host == "":
        return None
    if not isinstance(host, str):
        raise ContextOutputError(f"context {name}'s docker host is not a string")
    return host


def needs_current_host(current: str | None, ours: str) -> bool:
    """Whether the rule needs to know where the user's current context leads."""
    return current not in (None, "default", ours)


@dataclass(frozen=True)
class ContextChoice:
    """Whether to run ``docker context use <ours>``, and the status line either way."""

    select: bool
    status: str


def choose_context(
    *,
    install_only: bool,
    current: str | None,
    current_host: str | None,
    desktop_host: str,
    ours: str,
) -> ContextChoice:
    """The ``desktop_context`` rule on what the CLI answered: ``install`` never selects;
    ``enforce`` selects ours unless the user chose another engine."""
    if install_only:
        return ContextChoice(
            False, f"installed; current context: {current or 'default'} (not changed: install)"
        )
    if should_select_context(current, current_host, desktop_host, ours):
        return ContextChoice(True, f"selected (was {current or 'default'})")
    if current == ours:
        return ContextChoice(False, "selected")
    return ContextChoice(
        False, f"installed; the user's own context {current!r} ({current_host}) is kept"
    )
