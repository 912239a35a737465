"""Client of the agent's control API, for the CLI and the tray.

Kept apart from the server so that the agent does not load ``http.client`` (and the
``email`` package behind it) for a client it never uses.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from agent.control.contract import control_candidates
from agent.core import strict_json
from agent.platform.unix_sockets import UnixHTTPConnection

__all__ = ["ControlError", "control_candidates", "control_request"]


class ControlError(Exception):
    """The control API could not be reached, or answered something unreadable."""


def control_request(
    path: Path, method: str, target: str, *, timeout: float = 10.0, body: Any = None
) -> tuple[int, Any]:
    """One request to the control API: (HTTP status, parsed JSON body).

    ``body``, when not None, is sent as JSON with its Content-Length (``PUT /v1/identity``);
    without it the request is exactly as before: no body, no Content-Type.
    """
    headers = {"Accept": "application/json"}
    payload: bytes | None = None
    if body is not None:
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(payload))
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, target, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(4 * 1024 * 1024)
        status = resp.status
    except OSError as e:
        raise ControlError(f"cannot reach the agent at {path}: {e.strerror or e}") from e
    except http.client.HTTPException as e:
        raise ControlError(f"the agent at {path} answered unreadably: {e!r}") from e
    finally:
        conn.close()
    try:
        # A process squatting on the socket path is untrusted: 40 KB of "[" must end in
        # ControlError like any other unreadable answer, not in a RecursionError.
        return status, strict_json.loads(raw)
    except ValueError as e:
        raise ControlError(
            f"the agent at {path} answered HTTP {status} without readable JSON ({e})"
        ) from e
