"""The agent's own small client for the Docker daemon's API on its unix socket.

Used where the agent asks the daemon something itself (the bypass monitor's events and
container scans, ``pullgate doctor``'s pings, the shim's checks of what a request made);
never for the traffic the shim forwards. One request per connection (``Connection:
close``). Answers are framed strictly, as the shim frames requests: a status line, header
lines without bare CR or LF, at most one framing (``Content-Length`` digits, or one
``chunked`` decoded by the shim's own ``BodyReader``), bounded head and body. Anything
else is a :class:`DockerAPIError` — an ``OSError``, like a connection the daemon reset,
so callers handle "the daemon could not be asked" in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from agent.core.desktop import unreachable_upstream_problem
from agent.core.inspection.http1 import MAX_HEAD_BYTES, BodyReader, ProtocolError
from agent.platform import host_paths
from agent.platform.peer import ListenerError, check_listener

__all__ = [
    "DEFAULT_MAX_BODY",
    "DockerAPIError",
    "Response",
    "Stream",
    "parse_response_head",
    "request",
    "request_over",
    "request_sync",
    "stream",
    "stream_over",
]

DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024
"""The largest answer read whole (``/containers/json?all=1`` on a busy host is large)."""
_READ: Final = 1 << 16

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([2-5][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")
_HEADER_LINE: Final = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[\t ]*([\t\x20-\x7e\x80-\xff]*?)[\t ]*"
)


class DockerAPIError(OSError):
    """The daemon's answer cannot be read: malformed, truncated or too large."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers of a response head (up to, not including, the empty line)."""
    lines = head.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise DockerAPIError("the daemon's answer has a bare CR or LF in its head")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise DockerAPIError(f"the daemon's status line is malformed: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            raise DockerAPIError(f"the daemon sent a malformed header line: {line[:80]!r}")
        name = field.group(1).decode("ascii").lower()
        value = field.group(2).decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(status.group(1)), headers


def _body_reader(method: str, status: int, headers: dict[str, str]) -> BodyReader | None:
    """How the body is framed; None: it runs until the daemon closes the connection."""
    if method == "HEAD" or status in (204, 304):
        return BodyReader(0)
    length = headers.get("content-length")
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if length is not None or coding.lower() != "chunked":
            raise DockerAPIError(f"the daemon's answer is framed ambiguously ({coding!r})")
        return BodyReader(None, chunked=True, want_payload=True)
    if length is not None:
        if not (length.isascii() and length.isdigit() and len(length) <= 18):
            raise DockerAPIError(f"the daemon sent Content-Length {length[:40]!r}")
        return BodyReader(int(length), want_payload=True)
    return None


class _Answer:
    """Sans-IO: bytes of one answer in, its head and payload pieces out."""

    def __init__(self, method: str, max_body: int | None) -> None:
        self.method = method
        self.max_body = max_body
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.done = False
        self._buf = bytearray()
        self._body: BodyReader | None = None
        self._received = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Payload pieces among ``data`` (empty ``data``: the daemon closed)."""
        if not self.head_done:
            if not data:
                raise DockerAPIError("the daemon closed the connection before answering")
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise DockerAPIError("the daemon's answer head is too large")
                return []
            self.status, self.headers = parse_response_head(bytes(self._buf[:end]))
            self._body = _body_reader(self.method, self.status, self.headers)
            self.head_done = True
            rest = bytes(self._buf[end + 4 :])
            self._buf.clear()
            self.done = self._body is not None and self._body.done
            return self._feed_body(rest) if rest and not self.done else []
        return [] if self.done else self._feed_body(data)

    def _feed_body(self, data: bytes) -> list[bytes]:
        if self._body is None:  # until the daemon closes
            self.done = not data
            return self._count([data] if data else [])
        if not data:
            raise DockerAPIError("the daemon closed the connection in the middle of its answer")
        try:
            _, pieces = self._body.feed(memoryview(data))
        except ProtocolError as e:
            raise DockerAPIError(f"the daemon's answer body: {e.message}") from e
        self.done = self._body.done
        return self._count([bytes(p) for p in pieces])

    def _count(self, pieces: list[bytes]) -> list[bytes]:
        self._received += sum(len(p) for p in pieces)
        if self.max_body is not None and self._received > self.max_body:
            raise DockerAPIError(f"the daemon's answer is larger than {self.max_body} bytes")
        return pieces


def _request_bytes(
    method: str, target: str, user_agent: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    if not target.startswith("/") or any(c in target for c in " \r\n\t"):
        raise ValueError(f"not a request target: {target!r}")
    extra = ""
    for name, value in headers:
        if not re.fullmatch(r"[A-Za-z0-9-]+", name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"not a header: {name!r}")
        extra += f"{name}: {value}\r\n"
    return (
        f"{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: {user_agent}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")


async def request(
    socket_path: Path | str,
    method: str,
    target: str,
    *,
    timeout: float = 30.0,
    max_body: int = DEFAULT_MAX_BODY,
    user_agent: str = "pullgate",
    listener_uid: int | None = None,
    listener_executables: Collection[str] | None = None,
) -> Response:
    """One request on a connection of its own, the whole answer read within ``timeout``.

    ``listener_uid``: refuse (``peer.ListenerError``, before sending anything) unless the
    daemon at ``socket_path`` runs as this uid (Docker Desktop mode: a user's socket);
    ``listener_executables``: and runs one of these, from a file only root can change
    (``peer.check_listener``)."""
    return await request_over(
        lambda: _open_checked(socket_path, listener_uid, listener_executables),
        method,
        target,
        timeout=timeout,
        max_body=max_body,
        user_agent=user_agent,
    )


async def _open_checked(
    socket_path: Path | str,
    listener_uid: int | None,
    listener_executables: Collection[str] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``socket_path``; with ``listener_uid``, only to a socket that user
    could reach themselves (asked first) and that they serve, from one of
    ``listener_executables`` if given (checked once connected, before anything is sent;
    ``peer.ListenerError`` otherwise)."""
    if listener_uid is not None:
        await asyncio.to_thread(_reachable_for, socket_path, listener_uid)
    reader, writer = await _open_unix(str(socket_path))
    if listener_uid is not None:
        try:
            # Off the loop: the program rule reads /proc/PID/exe and stats its file.
            await asyncio.to_thread(
                check_listener,
                writer.get_extra_info("socket"),
                socket_path,
                listener_uid,
                listener_executables,
            )
        except ListenerError:
            writer.close()
            raise
    return reader, writer


def _reachable_for(socket_path: Path | str, uid: int) -> None:
    """Refuse, before root connects, a socket user ``uid`` could not connect to
    themselves (``peer.ListenerError``), or report nothing there as not running."""
    problem = host_paths.user_reach_problem(str(socket_path), uid)
    if problem == host_paths.NO_SOCKET:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(socket_path))
    if problem is not None:
        raise ListenerError(unreachable_upstream_problem(str(socket_path), uid, problem))


async def _open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if sys.platform == "win32":
        raise OSError(errno.EAFNOSUPPORT, f"{path}: no unix sockets here (named pipes)")
    else:
        return await asyncio.open_unix_connection(path)


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def request_over(
    connect: Connect,
    method: str,
    target: str,
    *,
    timeout: float = 30.0,
    max_body: int = DEFAULT_MAX_BODY,
    user_agent: str = "pullgate",
) -> Response:
    """:func:`request` on a connection ``connect`` opens (a Windows user's Docker Desktop
    pipe, opened and checked by ``named_pipe_server.open_upstream``)."""
    data = _request_bytes(method, target, user_agent)
    answer = _Answer(method, max_body)
    body: list[bytes] = []
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
    # (cpython #86296), which left the agent unable to stop.
    async with asyncio.timeout(timeout):
        reader, writer = await connect()
        try:
            writer.write(data)
            await writer.drain()
            while not answer.done:
                body += answer.feed(await reader.read(_READ))
        finally:
            writer.close()
    return Response(answer.status, answer.headers, b"".join(body))


@dataclass
class Stream:
    """An answer whose body is read as it arrives (``GET /events``)."""

    status: int
    headers: dict[str, str]
    _answer: _Answer
    _reader: asyncio.StreamReader
    _first: list[bytes]
    socket: socket.socket | None = None
    """The connection's unix socket, if it has one (``peer.check_holders``)."""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The payload as it arrives, until the answer ends (no timeout: it may not)."""
        for piece in self._first:
            yield piece
        self._first = []
        while not self._answer.done:
            for piece in self._answer.feed(await self._reader.read(_READ)):
                yield piece


@contextlib.asynccontextmanager
async def stream(
    socket_path: Path | str,
    target: str,
    *,
    timeout: float = 30.0,
    user_agent: str = "pullgate",
    listener_uid: int | None = None,
    listener_executables: Collection[str] | None = None,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[Stream]:
    """``GET target`` (or ``method``, with ``headers`` and no body: the shim's own pull)
    with the head read within ``timeout``; the body streams unbounded.
    ``listener_uid`` and ``listener_executables`` as for :func:`request`."""
    async with stream_over(
        lambda: _open_checked(socket_path, listener_uid, listener_executables),
        target,
        timeout=timeout,
        user_agent=user_agent,
        method=method,
        headers=headers,
    ) as answer:
        yield answer


@contextlib.asynccontextmanager
async def stream_over(
    connect: Connect,
    target: str,
    *,
    timeout: float = 30.0,
    user_agent: str = "pullgate",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[Stream]:
    """:func:`stream` on a connection ``connect`` opens (a Windows user's Docker Desktop
    pipe: the bypass monitor's ``GET /events``)."""
    data = _request_bytes(method, target, user_agent, headers)
    answer = _Answer(method, None)
    async with asyncio.timeout(timeout):
        reader, writer = await connect()
    try:
        writer.write(data)
        await writer.drain()
        first: list[bytes] = []
        async with asyncio.timeout(timeout):
            while not answer.head_done:
                first += answer.feed(await reader.read(_READ))
        sock = writer.get_extra_info("socket")
        yield Stream(answer.status, answer.headers, answer, reader, first, sock)
    finally:
        writer.close()


def request_sync(
    socket_path: Path | str,
    method: str,
    target: str,
    *,
    timeout: float = 5.0,
    max_body: int = 1 << 20,
    user_agent: str = "pullgate",
    listener_uid: int | None = None,
    listener_executables: Collection[str] | None = None,
) -> Response:
    """:func:`request` for callers without an event loop (the CLI's ``doctor``);
    ``timeout`` bounds each socket operation; ``listener_uid`` and
    ``listener_executables`` as for :func:`request`."""
    data = _request_bytes(method, target, user_agent)
    answer = _Answer(method, max_body)
    body: list[bytes] = []
    if sys.platform == "win32":
        raise OSError(errno.EAFNOSUPPORT, f"{socket_path}: no unix sockets here (named pipes)")
    else:
        if listener_uid is not None:
            _reachable_for(socket_path, listener_uid)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            if listener_uid is not None:
                check_listener(sock, socket_path, listener_uid, listener_executables)
            sock.sendall(data)
            while not answer.done:
                body += answer.feed(sock.recv(_READ))
        return Response(answer.status, answer.headers, b"".join(body))
