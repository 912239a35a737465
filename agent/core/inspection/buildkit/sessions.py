"""Session ids in BuildKit requests, rewritten to the ids the daemon knows.

The shim gives every session it relays an id of its own (``daemon.buildkit_builds``), so
each place a request names a session is rewritten before the daemon reads it: ``Session``
of a ``Control/Solve``, the ``local-sessionid:<local>`` frontend attributes of a solve or
a gateway solve, and ``SessionID`` of an image resolve. ``rename`` maps a client's id to
the daemon's; an id it does not know (None) is left as it is, for the caller has already
decided what a session it does not relay means for the build.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from agent.core.inspection.buildkit.protos.control_pb2 import SolveRequest
from agent.core.inspection.buildkit.protos.gateway_pb2 import ResolveImageConfigRequest
from agent.core.inspection.buildkit.protos.gateway_pb2 import SolveRequest as GatewaySolveRequest
from agent.core.inspection.request import InspectionError

__all__ = ["Rename", "rename_in_gateway_solve", "rename_in_resolve", "rename_in_solve"]

#: A client's session id → the daemon's (None: not a session the shim relays).
Rename = Callable[[str], str | None]

_LOCAL_SESSION = "local-sessionid:"
M = TypeVar("M", bound=Message)


def _parsed(message: M, payload: bytes, what: str) -> M:
    try:
        message.ParseFromString(payload)
    except DecodeError as e:
        raise InspectionError(f"pullgate: the BuildKit {what} does not decode") from e
    return message


def _attrs(attrs: MutableMapping[str, str], rename: Rename) -> None:
    for key in [k for k in attrs if k.startswith(_LOCAL_SESSION)]:
        renamed = rename(attrs[key])
        if renamed is not None:
            attrs[key] = renamed


def rename_in_solve(payload: bytes, rename: Rename) -> bytes:
    """A ``Control/Solve`` request with its session ids rewritten (fields it does not
    declare are kept as they came)."""
    request = _parsed(SolveRequest(), payload, "solve request")
    if request.Session:
        renamed = rename(request.Session)
        if renamed is not None:
            request.Session = renamed
    _attrs(request.FrontendAttrs, rename)
    return request.SerializeToString()


def rename_in_gateway_solve(payload: bytes, rename: Rename) -> bytes:
    """An ``LLBBridge/Solve`` request with its ``local-sessionid:`` attributes rewritten."""
    request = _parsed(GatewaySolveRequest(), payload, "gateway solve")
    _attrs(request.FrontendOpt, rename)
    return request.SerializeToString()


def rename_in_resolve(payload: bytes, rename: Rename) -> bytes:
    """An ``LLBBridge/ResolveImageConfig`` with its ``SessionID`` rewritten; one the shim
    does not relay is cleared (the daemon then uses the build's own sessions)."""
    request = _parsed(ResolveImageConfigRequest(), payload, "image resolve")
    if request.SessionID:
        request.SessionID = rename(request.SessionID) or ""
    return request.SerializeToString()
