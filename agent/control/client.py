"""Client of the agent's control API, for the CLI and the tray: one request at a time
(``control_request``) or the live event stream (``EventStream``, ``GET /v1/events``).

The transport follows the platform: a unix socket on Linux and macOS; on Windows the
user's control pipe (``agent.platform.pipe_client``: opened only if the agent serves it,
reads and writes with timeouts), found from the SID of the caller's token.

Kept apart from the server so that the agent does not load ``http.client`` (and the
``email`` package behind it) for a client it never uses.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.control.contract import control_candidates
from agent.core import strict_json
from agent.core.peer import Principal
from agent.core.text import printable
from agent.platform.unix_sockets import UnixHTTPConnection

if TYPE_CHECKING:
    from agent.platform.pipe_stream import PipeChannel

__all__ = [
    "EVENT_STREAM_TIMEOUT",
    "ControlError",
    "EventStream",
    "SSEParser",
    "ServerSentEvent",
    "control_candidates",
    "control_paths",
    "control_request",
    "current_principal",
    "first_answer",
    "open_event_stream",
]


def control_paths(control: str | Path | None) -> list[Path]:
    """``--control PATH`` (on Windows a pipe, ``\\\\.\\pipe\\NAME``) when given, else where a
    client looks for an agent: the user's own agent first, then the system one; on
    Windows the control pipe the agent serves this user."""
    return [Path(control)] if control else control_candidates(current_principal(), os.environ)


def current_principal() -> Principal:
    """Who this process is to the agent: its effective uid, or on Windows (no uids) its
    token's user SID, the key the agent names its control pipe and sign-in by."""
    if sys.platform == "win32":
        from agent.platform.pipe_client import current_user_sid  # noqa: PLC0415

        return current_user_sid()
    else:
        return os.geteuid()


def _open_pipe(pipe: str, timeout: float | None) -> PipeChannel:
    """The control pipe, connected, once its server is found to be the agent (Windows)."""
    if sys.platform == "win32":
        from agent.platform.pipe_client import open_control_pipe  # noqa: PLC0415

        return open_control_pipe(pipe, timeout)
    else:
        raise OSError(errno.EAFNOSUPPORT, "named pipes are Windows's", pipe)


def _connection(path: Path, timeout: float) -> http.client.HTTPConnection:
    """An unconnected ``http.client`` connection to the control API at ``path``: its unix
    socket, or on Windows its pipe; ``ControlError`` for a path that cannot be one."""
    if sys.platform == "win32":
        from agent.platform.pipe_stream import PipeHTTPConnection  # noqa: PLC0415
        from agent.platform.windows_control import control_pipe_address  # noqa: PLC0415

        try:
            pipe = control_pipe_address(str(path))
        except ValueError as e:  # WindowsNameError
            raise ControlError(f"cannot reach the agent at {path}: {e}") from e
        return PipeHTTPConnection(pipe, timeout, _open_pipe)
    else:
        return UnixHTTPConnection(path, timeout)


def first_answer(
    control: str | Path | None,
    method: str,
    target: str,
    *,
    body: object = None,
    timeout: float = 10.0,
) -> tuple[Path, int, Any]:
    """(socket, HTTP status, JSON body) from the first agent that answers at all;
    ``ControlError`` naming every socket tried when none does."""
    problems: list[str] = []
    for path in control_paths(control):
        try:
            status, answer = control_request(path, method, target, timeout=timeout, body=body)
        except ControlError as e:
            problems.append(str(e))
            continue
        return path, status, answer
    raise ControlError("; ".join(problems) or "no control socket to try")


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
    conn = _connection(path, timeout)
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


# --- the event stream (GET /v1/events) --------------------------------------------------

MAX_SSE_LINE = 1024 * 1024
"""A line longer than this (the agent's longest event is a few KiB) is dropped with its
event, so a squatter on the socket cannot make a client buffer without end."""
MAX_SSE_EVENT = 4 * 1024 * 1024
"""The data of one event, across its ``data:`` lines, at most."""
EVENT_STREAM_TIMEOUT = 45.0
"""The agent sends a keep-alive comment every 15 s: three missed means it is gone."""


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a ``text/event-stream``: its ``event:`` name and its ``data:`` text."""

    event: str
    data: str


class SSEParser:
    """Server-sent events from bytes, with no socket (the caller owns it): ``feed`` takes
    what arrived and returns the events completed by it.

    Follows the WHATWG framing: ``field: value`` lines, a blank line ends an event, ``:``
    starts a comment (the agent's keep-alives), ``data:`` lines join with newlines, an
    event without data is not dispatched, ``id``/``retry`` and unknown fields are ignored.
    Lines end with LF or CRLF (the agent writes LF). A line over ``max_line`` bytes, or an
    event over ``max_event``, is discarded whole and counted in ``discarded``.
    """

    def __init__(self, *, max_line: int = MAX_SSE_LINE, max_event: int = MAX_SSE_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.discarded = 0
        """Events dropped for an oversized line or data."""
        self.comments = 0
        self._partial = bytearray()
        self._skipping_line = False  # inside an oversized line: drop bytes until LF
        self._broken = False  # the current event lost a line: drop it at its end
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                self._buffer(data[start:])
                break
            if self._buffer(data[start:end]):
                line = bytes(self._partial)
                self._partial.clear()
                event = self._line(line.removesuffix(b"\r"))
                if event is not None:
                    events.append(event)
            self._skipping_line = False  # an oversized line ends here
            start = end + 1
        return events

    def _buffer(self, piece: bytes) -> bool:
        """Add to the line being read; False while inside an oversized line."""
        if self._skipping_line:
            return False
        if len(self._partial) + len(piece) > self.max_line:
            self._partial.clear()
            self._skipping_line = True
            self._broken = True
            return False
        self._partial += piece
        return True

    def _line(self, line: bytes) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        text = value.decode("utf-8", errors="replace")
        if name == b"event":
            self._event = text
        elif name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_event:
                self._broken = True
            elif not self._broken:
                self._data.append(text)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event = ServerSentEvent(self._event or "message", "\n".join(self._data))
        had_data = bool(self._data)
        broken = self._broken
        self._event = ""
        self._data = []
        self._data_size = 0
        self._broken = False
        if broken:
            self.discarded += 1
            return None
        return event if had_data else None


class EventStream:
    """A live ``GET /v1/events``: ``open()`` connects and checks the answer, ``events()``
    yields until the agent closes the stream, ``close()`` (from any thread) ends it.

    Failures are ``ControlError``: cannot connect, an answer other than 200 (its
    ``message``), a read timeout (no keep-alive for ``timeout`` seconds), the stream cut.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = EVENT_STREAM_TIMEOUT,
        max_line: int = MAX_SSE_LINE,
        max_event: int = MAX_SSE_EVENT,
        read_size: int = 64 * 1024,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.parser = SSEParser(max_line=max_line, max_event=max_event)
        self._read_size = read_size
        self._conn: http.client.HTTPConnection | None = None
        # http.client drops it from the connection; on Windows a pipe_stream.PipeSocket.
        self._sock: socket.socket | None = None
        self._response: http.client.HTTPResponse | None = None
        self._closed = threading.Event()

    def open(self) -> None:
        if self._closed.is_set():
            raise ControlError("the event stream was closed")
        conn = _connection(self.path, self.timeout)
        self._conn = conn
        try:
            conn.request("GET", "/v1/events", headers={"Accept": "text/event-stream"})
            self._sock = conn.sock
            resp = conn.getresponse()
        except OSError as e:
            self._release()
            raise ControlError(f"cannot reach the agent at {self.path}: {e.strerror or e}") from e
        except http.client.HTTPException as e:
            self._release()
            raise ControlError(f"the agent at {self.path} answered unreadably: {e!r}") from e
        if resp.status != 200:
            message = _error_message(resp)
            self._release()
            raise ControlError(
                f"the agent at {self.path} refused the event stream: HTTP {resp.status}"
                + (f": {message}" if message else "")
            )
        self._response = resp

    def events(self) -> Iterator[ServerSentEvent]:
        """The events as they arrive; returns when the agent ends the stream or ``close()``
        is called; raises ControlError when reading fails."""
        resp = self._response
        if resp is None:
            raise RuntimeError("EventStream.events() before open()")
        try:
            yield from self._read(resp)
        finally:
            self._release()

    def _read(self, resp: http.client.HTTPResponse) -> Iterator[ServerSentEvent]:
        while not self._closed.is_set():
            try:
                chunk = resp.read1(self._read_size)
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                if self._closed.is_set():
                    return  # close() from another thread cut the read short
                if isinstance(e, TimeoutError):
                    raise ControlError(
                        f"the agent at {self.path} sent nothing for {self.timeout:.0f} s "
                        "(not even a keep-alive)"
                    ) from e
                raise ControlError(f"the event stream from {self.path} broke: {e!r}") from e
            if not chunk:
                if self._closed.is_set():
                    return
                raise ControlError(f"the agent at {self.path} closed the event stream")
            yield from self.parser.feed(chunk)

    def close(self) -> None:
        """End the stream; safe from any thread, any number of times. Only shuts the
        socket down (which wakes a read blocked in another thread); the descriptor is
        released by the reader (``events()`` ending) or by leaving the ``with`` block, so
        that it cannot be reused under a read still in progress."""
        self._closed.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        sock, self._sock = self._sock, None
        resp, self._response = self._response, None
        if resp is not None:
            resp.close()
        if conn is not None:
            conn.close()
        if sock is not None:
            sock.close()

    def __enter__(self) -> EventStream:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._release()


def open_event_stream(
    path: Path, *, timeout: float = EVENT_STREAM_TIMEOUT
) -> Iterator[ServerSentEvent]:
    """The agent's events as a plain iterator (connects on the first ``next``); closing the
    generator closes the stream."""
    with EventStream(path, timeout=timeout) as stream:
        yield from stream.events()


def _error_message(resp: http.client.HTTPResponse) -> str:
    try:
        body = strict_json.loads(resp.read(64 * 1024))
    except (OSError, http.client.HTTPException, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return printable(str(message))[:300] if message else ""
