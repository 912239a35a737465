"""The events the agent emits: decisions, policy changes and notices, as values.

The shim does not write logs or notify anyone itself; it emits one ``DecisionEvent`` per
decision on the bus (``agent.daemon.bus``), and subscribers (the audit log, the control
API, the bypass monitor, stderr) take it from here. Credentials never enter an event:
only what the policy saw. These are values, shared by the agent, the CLI and the tray.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.peer import PeerInfo

__all__ = [
    "DecisionEvent",
    "Event",
    "NoticeEvent",
    "PeerInfo",
    "PolicyEvent",
    "Subscriber",
]


class _JsonForm:
    """Each event is converted to plain JSON once, whatever number of subscribers (the
    audit writer, stderr, every control-API stream) asks for it."""

    def to_json(self) -> dict[str, Any]:
        return dict(self._plain)

    @functools.cached_property
    def _plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(self)
        return plain

    @functools.cached_property
    def json_text(self) -> str:
        """The event as compact JSON, built once for every subscriber that prints it."""
        return json.dumps(self._plain, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class DecisionEvent(_JsonForm):
    """One decision on one image (or on a request a policy setting decided)."""

    action: str  # image-pull, image-build, image-load, container-create, container-exec, ...
    decision: str  # allow | deny | would_deny
    image: str | None  # canonical reference, None for setting-only decisions
    input: str | None  # the reference as the client wrote it
    category: str | None
    rule: str
    reason: str
    policy: str
    policy_serial: int
    endpoint: str  # "POST /images/create"
    message: str | None = None  # the denial message sent to the client
    detail: str | None = None  # e.g. "Dockerfile line 3: FROM ${BASE}"
    peer: PeerInfo = field(default_factory=PeerInfo)
    identity: str | None = None  # the signed-in identity (email) of the client's OS user
    # What to do instead, in parts (the tray's buttons): alternative, hint, help_url, contact.
    remediation: dict[str, str] | None = None
    time: float = field(default_factory=time.time)
    type: str = "decision"


@dataclass(frozen=True)
class PolicyEvent(_JsonForm):
    """A change or problem of the policy itself: accepted, refused, fetch failed, state."""

    action: str  # policy-update | policy-refused | policy-fetch-failed | policy-state
    outcome: str  # success | failure | unknown
    reason: str
    org: str | None = None
    serial: int | None = None
    source: str | None = None
    state: str | None = None  # fresh | stale | expired
    time: float = field(default_factory=time.time)
    type: str = "policy"


@dataclass(frozen=True)
class NoticeEvent(_JsonForm):
    """Anything else IT must see: agent start/stop, bypass suspicions, audit trouble.

    ``action`` is the audit ``event.action`` (``agent-start``, ``agent-stop``,
    ``bypass-suspected``, ``audit-recovery``, ``audit-failure``, ``config-changed``...);
    ``details`` holds structured facts (process, image, path) for the record.
    """

    action: str
    outcome: str  # success | failure | unknown
    reason: str
    severity: str = "info"  # info | warning
    details: dict[str, Any] = field(default_factory=dict)
    peer: PeerInfo | None = None
    time: float = field(default_factory=time.time)
    type: str = "notice"


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` without its deep copies: an event is built once and read by
    every subscriber (the stderr line, the control API's frame), so it is converted once,
    fast. Callers get a fresh top-level dict (``to_json``); nested values are shared."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    fields = getattr(kind, "__dataclass_fields__", None)
    if fields is not None:
        return {name: _plain(getattr(value, name)) for name in fields}
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


_SCALARS = frozenset({str, int, float, bool, type(None)})


Event = DecisionEvent | PolicyEvent | NoticeEvent
Subscriber = Callable[[Event], None]
