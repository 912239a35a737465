"""A minimal BuildKit client for tests: a session over `/session` and unary calls over `/grpc`.

No buildx exists on the test machines, so this module speaks BuildKit's wire protocol itself,
with `h2` over the daemon's (or the shim's) Unix socket and the protobuf messages generated
from BuildKit's `.proto` files (agent/core/inspection/buildkit/protos):

- `Session` opens `POST /session` (Upgrade: h2c). After the 101 the *daemon* is the HTTP/2
  client and the session is the gRPC server: it answers `grpc.health.v1.Health/Check` and
  serves `moby.filesync.v1.FileSync/DiffCopy` as fsutil's sender does (stats in fsutil's walk
  order, file data on request, FIN), from local directories named like the CLI's locals
  (`context`, `dockerfile`). Every file sync request is recorded (`Session.syncs`).
- `solve()` / `unary()` open `POST /grpc` (Upgrade: h2c), where the daemon is the HTTP/2
  server, and make one unary call, e.g. `/moby.buildkit.v1.Control/Solve`; the result is the
  call's `grpc-status` and (percent-decoded) `grpc-message`.

buildx's shape (buildkit client/build.go `Build`), which differs twice:

- `GrpcConnection` keeps one `/grpc` connection with concurrent calls (an I/O thread), as a
  Go gRPC client does; `Session(..., transport="grpc")` runs the same session server inside
  a `Control/Session` call on it (or on one of its own): the session's HTTP/2 bytes go as
  `BytesMessage` chunks, its headers as lower-cased metadata (buildkit session/grpchijack).
- `gateway_build()` runs the frontend client-side: a `Control/Solve` with no frontend and no
  LLB stays open in the daemon's gateway forwarder while the client calls `LLBBridge` Ping,
  ResolveImageConfig, Solve (`dockerfile.v0` and the attrs) and Return, with the build id
  as `buildkit-controlapi-buildid` metadata. The gateway messages the shim's protos lack
  are declared here with their published numbers (`gateway_message`).

Knobs for hostile tests: `data_chunk` (file bytes per PACKET_DATA), `frame_size` (largest
HTTP/2 DATA frame sent), `override` (replace or add files per sync request), `abort_after`
(drop the connection after that many DATA bytes of file sync) and `Session.close()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import socket
import stat as statmod
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from agent.core.inspection.buildkit.protos import control_pb2, fsutil_types_pb2, gateway_pb2

__all__ = [
    "BUILD_ID_METADATA",
    "CONTROL_LIST_WORKERS",
    "CONTROL_SESSION",
    "CONTROL_SOLVE",
    "CONTROL_STATUS",
    "DEFAULT_DATA_CHUNK",
    "DIFFCOPY",
    "GATEWAY_PING",
    "GATEWAY_RESOLVE_IMAGE_CONFIG",
    "GATEWAY_RETURN",
    "GATEWAY_SOLVE",
    "HEALTH_CHECK",
    "SESSION_METHODS",
    "TARSTREAM",
    "TRANSPORTS",
    "TRANSPORT_GRPC",
    "TRANSPORT_SESSION",
    "GatewayBuild",
    "GrpcCall",
    "GrpcConnection",
    "GrpcResult",
    "GrpcTransportError",
    "Override",
    "Session",
    "SyncRequest",
    "build_dirs",
    "dockerfile_solve_request",
    "gateway_build",
    "gateway_message",
    "gateway_solve_request",
    "read_gateway_message",
    "resolve_image_config_request",
    "solve",
    "unary",
    "walk",
]

TRANSPORT_SESSION = "session"
TRANSPORT_GRPC = "grpc"
TRANSPORTS = (TRANSPORT_SESSION, TRANSPORT_GRPC)
"""How a Session reaches the daemon: `POST /session`, or `Control/Session` on `/grpc`."""

DIFFCOPY = "/moby.filesync.v1.FileSync/DiffCopy"
TARSTREAM = "/moby.filesync.v1.FileSync/TarStream"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SESSION_METHODS = (DIFFCOPY, TARSTREAM, HEALTH_CHECK)
"""What the CLI's session exposes for a build (without secrets, ssh or auth)."""

CONTROL_SOLVE = "/moby.buildkit.v1.Control/Solve"
CONTROL_LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"

DEFAULT_DATA_CHUNK = 32 * 1024
"""fsutil's copy buffer: the file bytes in one PACKET_DATA."""

_HEALTH_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
_GRPC_UNKNOWN = 2
_GRPC_UNIMPLEMENTED = 12
_OUT_LOW_WATER = 256 * 1024  # framed bytes buffered per stream before reading more file data
_PACKET = fsutil_types_pb2.Packet

# Go's os.FileMode bits (fsutil sends Stat.mode as one).
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_MODE_DEVICE = 1 << 26
_MODE_NAMED_PIPE = 1 << 25
_MODE_SETUID = 1 << 23
_MODE_SETGID = 1 << 22
_MODE_CHAR_DEVICE = 1 << 21
_MODE_STICKY = 1 << 20
_MODE_SOCKET = 1 << 24
_MODE_IRREGULAR = 1 << 19
_MODE_TYPE = (
    _MODE_DIR
    | _MODE_SYMLINK
    | _MODE_NAMED_PIPE
    | _MODE_SOCKET
    | _MODE_DEVICE
    | _MODE_CHAR_DEVICE
    | _MODE_IRREGULAR
)
"""Go's os.ModeType: a stat with none of these is a regular file (fsutil requests its data)."""


# --------------------------------------------------------------------------- gRPC framing


@dataclass(frozen=True)
class GrpcResult:
    """The end of one gRPC call: its status, message, and the response messages before it."""

    status: int
    message: str
    responses: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    trailers: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == 0


class GrpcTransportError(ConnectionError):
    """The call ended without a grpc-status: refused upgrade, reset stream, closed connection."""


def grpc_frame(payload: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


class _Deframer:
    """Splits a gRPC byte stream into messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 5:
            flag = self._buf[0]
            (length,) = struct.unpack(">I", self._buf[1:5])
            if len(self._buf) < 5 + length:
                break
            if flag != 0:
                raise ValueError(f"compressed gRPC message (flag {flag}) not supported")
            out.append(bytes(self._buf[5 : 5 + length]))
            del self._buf[: 5 + length]
        return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _header_pairs(
    headers: Iterable[tuple[bytes | str, bytes | str]] | None,
) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for name, value in headers or ():
        pairs.append((_text(name).lower(), _text(value)))
    return tuple(pairs)


def _first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in pairs if k == name), None)


# --------------------------------------------------------------------------- HTTP/1.1 upgrade


def _upgrade(
    socket_path: Path | str, path: str, headers: Sequence[tuple[str, str]], timeout: float
) -> tuple[socket.socket, bytes]:
    """Connect and upgrade `POST path` to h2c; returns the socket and bytes read past the 101."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Upgrade: h2c"]
        lines += ["Connection: Upgrade", *(f"{k}: {v}" for k, v in headers)]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise GrpcTransportError(f"{path}: connection closed before a response: {buf!r}")
            buf += chunk
            if len(buf) > 1 << 20:
                raise GrpcTransportError(f"{path}: response head too large")
        head, rest = buf.split(b"\r\n\r\n", 1)
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            raise GrpcTransportError(f"{path}: upgrade refused: {(head + rest)[:2000]!r}")
        return sock, rest
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------------------- unary calls


def unary(
    socket_path: Path | str,
    method: str,
    payload: bytes,
    *,
    timeout: float = 60.0,
    frame_size: int | None = None,
    path: str = "/grpc",
) -> GrpcResult:
    """One unary gRPC call (`method` like `/moby.buildkit.v1.Control/ListWorkers`) over a
    fresh `POST /grpc` h2c connection; `payload` is the serialized request message.

    Raises GrpcTransportError when the call ends without a grpc-status, TimeoutError when
    `timeout` passes first.
    """
    deadline = time.monotonic() + timeout
    sock, rest = _upgrade(socket_path, path, (), timeout)
    with sock:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        pending = grpc_frame(payload)
        sent_end = False
        deframer = _Deframer()
        responses: list[bytes] = []
        headers: tuple[tuple[str, str], ...] = ()
        trailers: tuple[tuple[str, str], ...] = ()
        ended = False
        goaway: str | None = None
        data = rest
        while True:
            if data:
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        headers = _header_pairs(ev.headers)
                    elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                        trailers = _header_pairs(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id == sid and ev.data:
                            responses += deframer.feed(ev.data)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        ended = True
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        raise GrpcTransportError(
                            f"{method}: stream reset by the peer (error {ev.error_code!r})"
                        )
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = f"GOAWAY (error {ev.error_code!r}): {ev.additional_data!r}"
            if not sent_end:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if frame_size is not None:
                    window = min(window, frame_size)
                while pending and window > 0:
                    conn.send_data(sid, pending[:window])
                    pending = pending[window:]
                    sock.sendall(conn.data_to_send())
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if frame_size is not None:
                        window = min(window, frame_size)
                if not pending:
                    conn.end_stream(sid)
                    sent_end = True
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if ended:
                break
            if goaway is not None:
                raise GrpcTransportError(f"{method}: {goaway}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{method}: no result within {timeout} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"{method}: no result within {timeout} s") from None
            if not data:
                raise GrpcTransportError(f"{method}: connection closed before the call ended")
        with contextlib.suppress(OSError):
            conn.close_connection()
            sock.sendall(conn.data_to_send())
    status = _first(trailers, "grpc-status") or _first(headers, "grpc-status")
    message = _first(trailers, "grpc-message") or _first(headers, "grpc-message") or ""
    if status is None:
        raise GrpcTransportError(f"{method}: stream ended without grpc-status ({headers})")
    return GrpcResult(int(status), unquote(message), tuple(responses), headers, trailers)


def solve(
    socket_path: Path | str,
    request: control_pb2.SolveRequest,
    *,
    timeout: float = 120.0,
    frame_size: int | None = None,
) -> GrpcResult:
    """`Control/Solve` on `/grpc`; returns when the build has ended (status 0: it succeeded)."""
    return unary(
        socket_path,
        CONTROL_SOLVE,
        request.SerializeToString(),
        timeout=timeout,
        frame_size=frame_size,
    )


def dockerfile_solve_request(
    session_id: str, attrs: Mapping[str, str] | None = None
) -> control_pb2.SolveRequest:
    """A SolveRequest for the Dockerfile frontend with locals from session `session_id`;
    `attrs` are FrontendAttrs (`filename`, `target`, `build-arg:NAME`, ...). No exporter:
    the result is built and kept in the build cache only."""
    return control_pb2.SolveRequest(
        Ref=uuid.uuid4().hex,
        Session=session_id,
        Frontend="dockerfile.v0",
        FrontendAttrs=dict(attrs or {}),
    )


# --------------------------------------------------------------------------- one /grpc, many calls


class GrpcCall:
    """One call on a `GrpcConnection`: send request messages, then `close_send()`; read
    the result with `result()`. A call opened with a bridge carries a byte stream as
    `BytesMessage` chunks instead (see `GrpcConnection.open_bridge`)."""

    def __init__(self, connection: GrpcConnection, sid: int, method: str) -> None:
        self.connection = connection
        self.sid = sid
        self.method = method
        self.headers: tuple[tuple[str, str], ...] = ()
        self.trailers: tuple[tuple[str, str], ...] = ()
        self.responses: list[bytes] = []
        self.reset_code: int | None = None
        """The peer's RST_STREAM error code, if it reset the stream."""
        self.failure: str | None = None
        """Why the call ended without a status (reset, connection lost), if it did."""
        self.ended = threading.Event()
        self._deframer = _Deframer()
        self._out = bytearray()
        self._close_after = False
        self._send_closed = False
        self._bridge: socket.socket | None = None  # the connection's end of a bridge
        self._bridge_eof = False
        self._to_bridge = bytearray()

    def send(self, payload: bytes) -> None:
        """Send one request message (as flow control allows)."""
        self.connection._send(self, grpc_frame(payload))

    def close_send(self) -> None:
        """End the request side once what is queued is sent (gRPC's CloseSend)."""
        self.connection._close_send(self)

    def cancel(self) -> None:
        """Reset the stream (CANCEL), as a Go client cancelling its context does."""
        self.connection._cancel(self)

    @property
    def status(self) -> int | None:
        value = _first(self.trailers, "grpc-status") or _first(self.headers, "grpc-status")
        return int(value) if value is not None else None

    def result(self, timeout: float = 60.0) -> GrpcResult:
        """The call's end; GrpcTransportError when it ended without a grpc-status,
        TimeoutError when `timeout` passes first."""
        if not self.ended.wait(timeout):
            raise TimeoutError(f"{self.method}: no result within {timeout} s")
        status = self.status
        if status is None:
            why = self.failure or f"stream ended without grpc-status ({self.headers})"
            raise GrpcTransportError(f"{self.method}: {why}")
        message = _first(self.trailers, "grpc-message") or _first(self.headers, "grpc-message")
        return GrpcResult(
            status, unquote(message or ""), tuple(self.responses), self.headers, self.trailers
        )


class GrpcConnection:
    """One `POST /grpc` h2c connection with any number of concurrent calls, as a Go
    gRPC client (buildx) keeps one for its solve, its gateway calls and its session.

    An I/O thread runs the connection; calls are made from any thread. Use as a
    context manager, or `close()`.
    """

    def __init__(
        self, socket_path: Path | str, *, timeout: float = 10.0, path: str = "/grpc"
    ) -> None:
        self.socket_path = Path(socket_path)
        sock, rest = _upgrade(socket_path, path, (), timeout)
        sock.settimeout(None)
        self._sock: socket.socket | None = sock
        self._lock = threading.RLock()
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._conn.initiate_connection()
        self._calls: dict[int, GrpcCall] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self.error: BaseException | None = None
        """What ended the I/O loop, if not close() or the peer closing the connection."""
        self.goaway: str | None = None
        self.closed = threading.Event()
        with self._lock:
            self._flush()
        self._thread = threading.Thread(
            target=self._run, args=(rest,), name="buildkit-grpc", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> GrpcConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- calls

    def call(
        self,
        method: str,
        payload: bytes | None = None,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        close_send: bool = True,
        _bridge: socket.socket | None = None,
    ) -> GrpcCall:
        """Open a call of `method`; send `payload` (one message) if given, then end the
        request side unless `close_send` is false."""
        with self._lock:
            if self.closed.is_set():
                raise GrpcTransportError(f"{method}: the connection is closed")
            sid = self._conn.get_next_available_stream_id()
            call = GrpcCall(self, sid, method)
            call._bridge = _bridge  # before the request goes: the answer may come at once
            self._calls[sid] = call
            self._conn.send_headers(
                sid,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", method),
                    (":authority", "localhost"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    *metadata,
                ],
            )
            if payload is not None:
                call._out += grpc_frame(payload)
            call._close_after = close_send
            self._pump(call)
            self._flush()
        self._wake()
        return call

    def unary(
        self,
        method: str,
        payload: bytes,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = 60.0,
    ) -> GrpcResult:
        return self.call(method, payload, metadata=metadata).result(timeout)

    def open_bridge(
        self, method: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> tuple[GrpcCall, socket.socket]:
        """A bidi call carrying a byte stream as `moby.buildkit.v1.BytesMessage`s (buildkit
        session/grpchijack): what is written to the returned socket goes out as messages,
        the data of the messages received can be read from it. Closing the socket ends
        the request side; the end of the call closes the socket's peer."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        try:
            call = self.call(method, metadata=metadata, close_send=False, _bridge=ours)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return call, theirs

    # -- from the callers' threads

    def _send(self, call: GrpcCall, data: bytes) -> None:
        with self._lock:
            if call._send_closed or call.ended.is_set():
                raise GrpcTransportError(f"{call.method}: the request side is closed")
            call._out += data
            self._pump(call)
            self._flush()

    def _close_send(self, call: GrpcCall) -> None:
        with self._lock:
            call._close_after = True
            self._pump(call)
            self._flush()

    def _cancel(self, call: GrpcCall) -> None:
        with self._lock:
            if call.ended.is_set():
                return
            with contextlib.suppress(h2.exceptions.H2Error):
                self._conn.reset_stream(call.sid, h2.errors.ErrorCodes.CANCEL)
            self._end(call, "cancelled by the client")
            self._flush()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self, timeout: float = 10.0) -> None:
        """GOAWAY and close; every call still open ends without a status."""
        self._stop = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            self._shutdown("the connection was closed by the client")
        for s in (self._wake_r, self._wake_w):
            s.close()

    # -- the I/O thread (everything below runs with the lock held)

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and self._sock is not None:
            self._sock.sendall(out)

    def _pump(self, call: GrpcCall) -> None:
        try:
            self._pump_open(call)
        except h2.exceptions.StreamClosedError:  # reset by the peer in the same read
            self._end(call, "stream closed by the peer")

    def _pump_open(self, call: GrpcCall) -> None:
        if call._send_closed or call.ended.is_set():
            return
        while call._out:
            window = min(
                self._conn.local_flow_control_window(call.sid), self._conn.max_outbound_frame_size
            )
            if window <= 0:
                return
            piece = bytes(call._out[:window])
            del call._out[:window]
            self._conn.send_data(call.sid, piece)
        if call._close_after:
            self._conn.end_stream(call.sid)
            call._send_closed = True

    def _end(self, call: GrpcCall, failure: str | None = None) -> None:
        if call.ended.is_set():
            return
        if failure is not None and call.status is None:
            call.failure = failure
        self._calls.pop(call.sid, None)
        if call._bridge is not None:
            bridge, call._bridge = call._bridge, None
            with contextlib.suppress(OSError):
                if call._to_bridge:
                    bridge.send(call._to_bridge)  # what fits; the session is ending anyway
            with contextlib.suppress(OSError):
                bridge.shutdown(socket.SHUT_RDWR)
            bridge.close()
        call.ended.set()

    def _shutdown(self, why: str) -> None:
        for call in list(self._calls.values()):
            self._end(call, why)
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError, h2.exceptions.H2Error):
                self._conn.close_connection()
                sock.sendall(self._conn.data_to_send())
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.closed.set()

    def _handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            call = self._calls.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = f"GOAWAY (error {ev.error_code!r}): {ev.additional_data!r}"
                self._stop = True
            elif isinstance(ev, h2.events.WindowUpdated):
                for c in list(self._calls.values()):
                    if ev.stream_id in (0, c.sid):
                        self._pump(c)
            elif call is None:
                continue
            elif isinstance(ev, h2.events.ResponseReceived):
                call.headers = _header_pairs(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                call.trailers = _header_pairs(ev.headers)
            elif isinstance(ev, h2.events.DataReceived) and ev.data:
                for msg in call._deframer.feed(ev.data):
                    if call._bridge is not None:
                        call._to_bridge += control_pb2.BytesMessage.FromString(msg).data
                    else:
                        call.responses.append(msg)
            elif isinstance(ev, h2.events.StreamEnded):
                self._end(call)
            elif isinstance(ev, h2.events.StreamReset):
                call.reset_code = int(ev.error_code) if ev.error_code is not None else None
                self._end(call, f"stream reset by the peer (error {ev.error_code!r})")

    def _bridge_io(self, readable: list[socket.socket], writable: list[socket.socket]) -> None:
        for call in list(self._calls.values()):
            bridge = call._bridge
            if bridge is None:
                continue
            if bridge in writable and call._to_bridge:
                try:
                    sent = bridge.send(call._to_bridge)
                    del call._to_bridge[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    call._to_bridge.clear()
            if bridge in readable and not call._bridge_eof:
                try:
                    data = bridge.recv(_BRIDGE_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    message = control_pb2.BytesMessage(data=data).SerializeToString()
                    call._out += grpc_frame(message)
                else:
                    call._bridge_eof = True
                    call._close_after = True  # grpchijack's Close: CloseSend
                self._pump(call)

    def _stopping(self) -> bool:
        return self._stop  # (a method: close() and the event handlers change it)

    def _run(self, initial: bytes) -> None:
        data = initial
        try:
            while not self._stop:
                with self._lock:
                    if data:
                        self._handle(self._conn.receive_data(data))
                    self._flush()
                    sock = self._sock
                    if sock is None:
                        break
                    reads: list[socket.socket] = [sock, self._wake_r]
                    writes: list[socket.socket] = []
                    for call in self._calls.values():
                        if call._bridge is None:
                            continue
                        if not call._bridge_eof and len(call._out) < _OUT_LOW_WATER:
                            reads.append(call._bridge)
                        if call._to_bridge:
                            writes.append(call._bridge)
                if self._stopping():
                    break
                readable, writable, _ = select.select(reads, writes, [], 1.0)
                if self._wake_r in readable:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                with self._lock:
                    self._bridge_io(readable, writable)
                    self._flush()
                data = b""
                if sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        break
        except (OSError, h2.exceptions.ProtocolError) as e:
            if not self._stop:
                self.error = e
        except BaseException as e:  # report, never kill the test process's thread silently
            self.error = e
        finally:
            with self._lock:
                why = self.goaway or (
                    f"connection failed: {self.error!r}" if self.error else "connection closed"
                )
                self._shutdown(why)


_BRIDGE_CHUNK = 32 * 1024
"""grpchijack's read buffer: the most one BytesMessage carries from a session's writes."""


# --------------------------------------------------------------------------- buildx's gateway calls

CONTROL_SESSION = "/moby.buildkit.v1.Control/Session"
CONTROL_STATUS = "/moby.buildkit.v1.Control/Status"
_GATEWAY = "/moby.buildkit.v1.frontend.LLBBridge/"
GATEWAY_PING = _GATEWAY + "Ping"
GATEWAY_SOLVE = _GATEWAY + "Solve"
GATEWAY_RETURN = _GATEWAY + "Return"
GATEWAY_RESOLVE_IMAGE_CONFIG = _GATEWAY + "ResolveImageConfig"
BUILD_ID_METADATA = "buildkit-controlapi-buildid"
"""buildkit client/buildid: the gRPC metadata naming the build a gateway call is for."""

_F = descriptor_pb2.FieldDescriptorProto
# (name, number, type, label, message type or None)
_FieldSpec = tuple[str, int, int, int, str | None]
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _gateway_file() -> descriptor_pb2.FileDescriptorProto:
    """The few messages of buildkit's frontend/gateway/pb/gateway.proto (and google.rpc's
    Status, control.proto's StatusRequest) the test client sends or reads whole, with
    their published numbers, in a package of their own (the shim's protos hold only what
    a decision needs)."""
    package = "pullgate.tests.buildkit"
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/buildkit_client_gateway.proto",
        package=package,
        syntax="proto3",
        dependency=["agent/core/inspection/buildkit/protos/llb.proto"],
    )

    def message(
        name: str,
        fields: Sequence[_FieldSpec],
        *,
        maps: Sequence[tuple[str, int, int]] = (),
        oneof: tuple[str, Sequence[str]] | None = None,
    ) -> None:
        msg = file.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            f.json_name = fname
            if type_name is not None:
                f.type_name = (
                    type_name if type_name.startswith(".pb.") else f".{package}.{type_name}"
                )
            if oneof is not None and fname in oneof[1]:
                f.oneof_index = 0
        if oneof is not None:
            msg.oneof_decl.add(name=oneof[0])
        for fname, number, value_type in maps:  # map<string, V>: a nested entry message
            entry = msg.nested_type.add(name=fname[0].upper() + fname[1:] + "Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_OPT)
            entry.field.add(name="value", number=2, type=value_type, label=_OPT)
            f = msg.field.add(name=fname, number=number, type=_F.TYPE_MESSAGE, label=_REP)
            f.json_name = fname
            f.type_name = f".{package}.{name}.{entry.name}"

    string, boolean, msg_t = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_MESSAGE
    message(
        "SolveRequest",
        [
            ("Definition", 1, msg_t, _OPT, ".pb.Definition"),
            ("Frontend", 2, string, _OPT, None),
            ("allowResultReturn", 5, boolean, _OPT, None),
            ("allowResultArrayRef", 6, boolean, _OPT, None),
        ],
        maps=[("FrontendOpt", 3, string)],
    )
    message("Ref", [("id", 1, string, _OPT, None), ("def", 2, msg_t, _OPT, ".pb.Definition")])
    message(
        "Result",
        [("refDeprecated", 1, string, _OPT, None), ("ref", 3, msg_t, _OPT, "Ref")],
        maps=[("metadata", 10, _F.TYPE_BYTES)],
        oneof=("result", ["refDeprecated", "ref"]),
    )
    message("SolveResponse", [("ref", 1, string, _OPT, None), ("result", 3, msg_t, _OPT, "Result")])
    message("Status", [("code", 1, _F.TYPE_INT32, _OPT, None), ("message", 2, string, _OPT, None)])
    message(
        "ReturnRequest",
        [("result", 1, msg_t, _OPT, "Result"), ("error", 2, msg_t, _OPT, "Status")],
    )
    message("APICap", [("ID", 1, string, _OPT, None), ("Enabled", 2, boolean, _OPT, None)])
    message("PongResponse", [("FrontendAPICaps", 1, msg_t, _REP, "APICap")])
    message(
        "ResolveImageConfigResponse",
        [("Digest", 1, string, _OPT, None), ("Config", 2, _F.TYPE_BYTES, _OPT, None)],
    )
    message("StatusRequest", [("Ref", 1, string, _OPT, None)])
    return file


def _gateway_classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.Default()
    file = _gateway_file()
    try:
        found = pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
        found = pool.FindFileByName(file.name)
    return {
        name: message_factory.GetMessageClass(d) for name, d in found.message_types_by_name.items()
    }


_GW = _gateway_classes()


def gateway_message(name: str, fields: Mapping[str, Any] | None = None) -> Message:
    """One of the gateway messages above (by name), its fields as in `json_format`."""
    return json_format.ParseDict(dict(fields or {}), _GW[name]())


def read_gateway_message(name: str, payload: bytes) -> dict[str, Any]:
    """A gateway message's fields (by their proto names), from its bytes."""
    return json_format.MessageToDict(
        _GW[name].FromString(payload), preserving_proto_field_name=True
    )


def gateway_solve_request(
    attrs: Mapping[str, str] | None = None, *, frontend: str = "dockerfile.v0"
) -> bytes:
    """buildx's `LLBBridge/Solve` for a Dockerfile build (frontend/gateway/grpcclient
    `Solve`): the frontend, its options, results returned as refs."""
    return gateway_message(
        "SolveRequest",
        {
            "Frontend": frontend,
            "FrontendOpt": dict(attrs or {}),
            "allowResultReturn": True,
            "allowResultArrayRef": True,
        },
    ).SerializeToString()


def resolve_image_config_request(image: str, platform: str = "") -> bytes:
    """`LLBBridge/ResolveImageConfig` of `image`, from the registry (as the Dockerfile
    frontend asks for a base image's config), for `platform` (`os/arch[/variant]`) if
    given, as the frontend asks for each stage's."""
    request = gateway_pb2.ResolveImageConfigRequest(Ref=image, ResolveMode="default")
    if platform:
        os_name, arch, *variant = platform.split("/")
        request.Platform.OS, request.Platform.Architecture = os_name, arch
        request.Platform.Variant = variant[0] if variant else ""
    return request.SerializeToString()


@dataclass(frozen=True)
class GatewayBuild:
    """What each call of a buildx-shaped build (`gateway_build`) ended with."""

    ref: str
    solve: GrpcResult | None
    """The `Control/Solve` that opened the build (None: the client cancelled it)."""
    ping: GrpcResult
    gateway_solve: GrpcResult | None
    returned: GrpcResult | None
    """`LLBBridge/Return`: the gateway's result (or the solve's error) handed back."""
    status_messages: int = 0
    """How many `Control/Status` updates the build streamed."""
    resolved: tuple[GrpcResult, ...] = ()
    """`LLBBridge/ResolveImageConfig` calls made before the solve."""

    @property
    def ok(self) -> bool:
        return self.solve is not None and self.solve.ok

    def describe(self) -> str:
        def one(r: GrpcResult | None) -> str:
            return "-" if r is None else f"{r.status} {r.message[:300]!r}"

        return (
            f"ref={self.ref} ping={one(self.ping)} resolve={[one(r) for r in self.resolved]} "
            f"gateway-solve={one(self.gateway_solve)} return={one(self.returned)} "
            f"control-solve={one(self.solve)} status-updates={self.status_messages}"
        )


def gateway_build(
    connection: GrpcConnection,
    session_id: str,
    attrs: Mapping[str, str] | None = None,
    *,
    ref: str | None = None,
    resolve: Sequence[str] = (),
    frontend: str = "dockerfile.v0",
    control_attrs: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> GatewayBuild:
    """A build as buildx makes it (buildkit client/build.go `Build`): a `Control/Solve`
    naming no frontend and no LLB (the daemon's gateway forwarder then waits for the
    client) stays open while the client, with the build's id as metadata, pings the
    gateway, resolves `resolve` images' configs, solves the `frontend` with `attrs`
    and hands the result (or the solve's error) back with `LLBBridge/Return`, which
    ends the `Control/Solve`. `Control/Status` streams the progress meanwhile.

    `control_attrs` are the `Control/Solve`'s FrontendAttrs (buildx sends the build's
    attrs there too; default `attrs`)."""
    deadline = time.monotonic() + timeout
    ref = ref or uuid.uuid4().hex
    request = control_pb2.SolveRequest(
        Ref=ref,
        Session=session_id,
        FrontendAttrs=dict((attrs if control_attrs is None else control_attrs) or {}),
    )
    control = connection.call(CONTROL_SOLVE, request.SerializeToString())
    status_request = gateway_message("StatusRequest", {"Ref": ref}).SerializeToString()
    status = connection.call(CONTROL_STATUS, status_request)
    meta = [(BUILD_ID_METADATA, ref)]

    def left() -> float:
        return max(deadline - time.monotonic(), 0.1)

    def finish(solved: GrpcResult | None, **calls: Any) -> GatewayBuild:
        with contextlib.suppress(TimeoutError):
            status.result(min(left(), 5.0))
        status.cancel()
        return GatewayBuild(ref, solved, status_messages=len(status.responses), **calls)

    ping = connection.unary(GATEWAY_PING, b"", metadata=meta, timeout=left())
    if not ping.ok:  # grpcclient.New fails: the client gives up, cancelling its solve
        control.cancel()
        early = control.result(0) if control.status is not None else None
        return finish(early, ping=ping, gateway_solve=None, returned=None)
    resolved = tuple(
        connection.unary(
            GATEWAY_RESOLVE_IMAGE_CONFIG,
            resolve_image_config_request(image),
            metadata=meta,
            timeout=left(),
        )
        for image in resolve
    )
    solved = connection.unary(
        GATEWAY_SOLVE,
        gateway_solve_request(attrs, frontend=frontend),
        metadata=meta,
        timeout=left(),
    )
    if solved.ok and solved.responses:
        result = read_gateway_message("SolveResponse", solved.responses[0]).get("result", {})
        back = gateway_message("ReturnRequest", {"result": result})
    else:  # grpcclient.Run: the build function's error goes back as the build's
        error = {"code": solved.status or _GRPC_UNKNOWN, "message": solved.message}
        back = gateway_message("ReturnRequest", {"error": error})
    returned = connection.unary(
        GATEWAY_RETURN, back.SerializeToString(), metadata=meta, timeout=left()
    )
    try:
        final: GrpcResult | None = control.result(left())
    except GrpcTransportError:
        final = None
    return finish(final, ping=ping, gateway_solve=solved, returned=returned, resolved=resolved)


# --------------------------------------------------------------------------- fsutil's walk


@dataclass
class _Entry:
    stat: fsutil_types_pb2.Stat
    source: Path | None
    content: bytes | None = None


def _go_mode(st: os.stat_result) -> int:
    mode = st.st_mode & 0o777
    if statmod.S_ISDIR(st.st_mode):
        mode |= _MODE_DIR
    elif statmod.S_ISLNK(st.st_mode):
        mode |= _MODE_SYMLINK
    elif statmod.S_ISFIFO(st.st_mode):
        mode |= _MODE_NAMED_PIPE
    elif statmod.S_ISBLK(st.st_mode):
        mode |= _MODE_DEVICE
    elif statmod.S_ISCHR(st.st_mode):
        mode |= _MODE_DEVICE | _MODE_CHAR_DEVICE
    # a socket's bit is cleared by fsutil: it is sent as a plain (empty) file
    if st.st_mode & statmod.S_ISUID:
        mode |= _MODE_SETUID
    if st.st_mode & statmod.S_ISGID:
        mode |= _MODE_SETGID
    if st.st_mode & statmod.S_ISVTX:
        mode |= _MODE_STICKY
    return mode


def _go_match_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match as a regex: `*` and `?` never match `/`."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                neg = body.startswith("^")
                body = body[1:] if neg else body
                out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _go_match(pattern: str, name: str) -> bool:
    return _go_match_regex(pattern).match(name) is not None


def _match_prefix(pattern: str, name: str) -> tuple[bool, bool]:
    """fsutil's matchPrefix: (matched, only a leading part of the pattern matched)."""
    count = name.count("/")
    partial = False
    if pattern.count("/") > count:
        pattern = "/".join(pattern.split("/")[: count + 1])
        partial = True
    return _go_match(pattern, name), partial


@dataclass(frozen=True)
class _IgnorePattern:
    exclusion: bool
    text: str
    dirs: int
    regex: re.Pattern[str]


def _ignore_patterns(patterns: Sequence[str]) -> list[_IgnorePattern]:
    """docker's fileutils.PatternMatcher (20.10): `**` spans directories."""
    out: list[_IgnorePattern] = []
    for raw in patterns:
        p = raw.strip()
        if not p:
            continue
        exclusion = p.startswith("!") and len(p) > 1
        if exclusion:
            p = p[1:]
        p = os.path.normpath(p)
        rx, i = "^", 0
        while i < len(p):
            ch = p[i]
            if ch == "*":
                if p[i + 1 : i + 2] == "*":
                    i += 1
                    if p[i + 1 : i + 2] == "/":
                        i += 1
                    rx += ".*" if i + 1 >= len(p) else "(.*/)?"
                else:
                    rx += "[^/]*"
            elif ch == "?":
                rx += "[^/]"
            elif ch == "\\" and i + 1 < len(p):
                i += 1
                rx += re.escape(p[i])
            else:
                rx += re.escape(ch)
            i += 1
        rx_c = re.compile(rx + r"\Z", re.S)
        out.append(_IgnorePattern(exclusion, p, len(p.split("/")), rx_c))
    return out


def _ignored(patterns: Sequence[_IgnorePattern], path: str) -> bool:
    matched = False
    parent = os.path.dirname(path) or "."
    parent_dirs = parent.split("/")
    for pat in patterns:
        match = pat.regex.match(path) is not None
        if not match and parent != "." and pat.dirs <= len(parent_dirs):
            match = pat.regex.match("/".join(parent_dirs[: pat.dirs])) is not None
        if match:
            matched = not pat.exclusion
    return matched


def _follow_links(root: Path, paths: Sequence[str]) -> list[str] | None:
    """fsutil's FollowLinks: the paths, with symlinks (and their targets) resolved."""
    resolved: set[str] = set()

    def read_symlink(p: str, wildcard: bool) -> list[str] | None:
        real = root / p
        base = os.path.basename(p)
        if wildcard and any(c in base for c in "*?["):
            try:
                names = sorted(os.listdir(real.parent))
            except FileNotFoundError:
                return None
            found: list[str] = []
            for name in names:
                if _go_match(base, name):
                    found += read_symlink(os.path.join(os.path.dirname(p), name), False) or []
            return found
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not statmod.S_ISLNK(st.st_mode):
            return None
        link = os.path.normpath(os.readlink(real))
        if os.path.isabs(link):
            return [link]
        return [os.path.normpath("/" + os.path.join(os.path.dirname(p), link))]

    def append(p: str) -> None:
        p = os.path.normpath(os.path.join(".", p).lstrip("/")) if p else "."
        current = "."
        while True:
            head, _, tail = p.partition("/")
            current = os.path.normpath(os.path.join(current, head))
            targets = read_symlink(current, True)
            p = tail
            if (p == "" or targets is not None) and current in resolved:
                return
            if targets is not None:
                resolved.add(current)
                for target in targets:
                    append(os.path.join(target, p).lstrip("/"))
                return
            if p == "":
                resolved.add(current)
                return

    for path in paths:
        append(path)
    out: list[str] = []
    last = None
    for s in sorted(resolved):
        if s == ".":
            return None
        if last is not None and s.startswith(last + "/"):
            continue
        out.append(s)
        last = s
    return out


def _walk(
    root: Path,
    includes: Sequence[str] | None,
    excludes: Sequence[str] | None,
    followpaths: Sequence[str] | None,
) -> list[_Entry]:
    """The stats fsutil's Walk sends for `root`: Go's filepath.Walk order (names sorted
    byte-wise in each directory, a directory before its contents), filtered like fsutil."""
    root = Path(os.path.realpath(root))
    include_patterns = [os.path.normpath(p) for p in includes] if includes is not None else None
    if followpaths is not None:
        targets = _follow_links(root, followpaths)
        if targets is not None:
            merged = sorted({*(include_patterns or []), *targets})
            include_patterns = merged
    ignore = _ignore_patterns(excludes) if excludes is not None else None
    has_exclusions = bool(ignore) and any(p.exclusion for p in ignore or ())
    entries: list[_Entry] = []
    seen_inodes: dict[int, str] = {}
    last_included_dir = ""

    def visit(directory: Path, rel_dir: str) -> None:
        nonlocal last_included_dir
        try:
            names = sorted(os.listdir(directory), key=os.fsencode)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = directory / name
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            is_dir = statmod.S_ISDIR(st.st_mode)
            if include_patterns is not None:
                skip = bool(last_included_dir) and rel.startswith(last_included_dir + "/")
                if not skip:
                    matched, partial = False, True
                    for pat in include_patterns:
                        ok, part = _match_prefix(pat, rel)
                        if ok:
                            matched = True
                            if not part:
                                partial = False
                                break
                    if not matched:
                        continue
                    if not partial and is_dir:
                        last_included_dir = rel
            if ignore is not None and _ignored(ignore, rel):
                if not is_dir:
                    continue
                if not has_exclusions:
                    continue
                if not any(p.exclusion and f"{p.text}/".startswith(f"{rel}/") for p in ignore):
                    continue
            entries.append(_Entry(_mkstat(full, rel, st, seen_inodes), full))
            if is_dir:
                visit(full, rel)

    visit(root, "")
    return entries


def walk(
    root: Path,
    *,
    include_patterns: Sequence[str] | None = None,
    exclude_patterns: Sequence[str] | None = None,
    followpaths: Sequence[str] | None = None,
) -> list[fsutil_types_pb2.Stat]:
    """The stats a session sends for `root` given a request's filters, in order."""
    return [e.stat for e in _walk(root, include_patterns, exclude_patterns, followpaths)]


def _mkstat(
    full: Path, rel: str, st: os.stat_result, seen_inodes: dict[int, str]
) -> fsutil_types_pb2.Stat:
    result = fsutil_types_pb2.Stat(
        path=rel, mode=_go_mode(st), uid=st.st_uid, gid=st.st_gid, modTime=st.st_mtime_ns
    )
    if not statmod.S_ISDIR(st.st_mode):
        result.size = st.st_size
        if statmod.S_ISBLK(st.st_mode) or statmod.S_ISCHR(st.st_mode):
            result.devmajor = os.major(st.st_rdev)
            result.devminor = os.minor(st.st_rdev)
        if st.st_nlink > 1 and st.st_ino in seen_inodes:
            result.linkname = seen_inodes[st.st_ino]
            result.size = 0
        else:
            seen_inodes[st.st_ino] = rel
        if statmod.S_ISLNK(st.st_mode):
            result.linkname = os.readlink(full)
    with contextlib.suppress(OSError):
        for key in os.listxattr(full, follow_symlinks=False):
            with contextlib.suppress(OSError):
                result.xattrs[key] = os.getxattr(full, key, follow_symlinks=False)
    return result


def _apply_override(entries: list[_Entry], files: Mapping[str, bytes]) -> list[_Entry]:
    """Replace (or add, as 0644 root files in the top directory or an existing one) files."""
    by_path = {e.stat.path: e for e in entries}
    now = time.time_ns()
    for path, content in files.items():
        entry = by_path.get(path)
        if entry is None:
            entry = _Entry(fsutil_types_pb2.Stat(path=path, mode=0o644), None)
            by_path[path] = entry
        entry.stat.size = len(content)
        entry.stat.modTime = now
        entry.content = content

    def key(path: str) -> list[bytes]:
        return [part.encode() for part in path.split("/")]

    return [by_path[p] for p in sorted(by_path, key=key)]


# --------------------------------------------------------------------------- the session


@dataclass
class SyncRequest:
    """One file sync call the daemon made on the session, as the session served it."""

    method: str
    dir_name: str = ""
    followpaths: list[str] = field(default_factory=list)
    include_patterns: list[str] = field(default_factory=list)
    exclude_patterns: list[str] = field(default_factory=list)
    metadata: list[tuple[str, str]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    """Paths of the stats sent, in order."""
    requested: list[str] = field(default_factory=list)
    """Paths the daemon asked the content of (PACKET_REQ), in order."""
    finished: bool = False
    """The receiver's FIN arrived and was answered."""
    error: str | None = None
    """A PACKET_ERR from the receiver, or why the session could not serve the request."""


Override = Callable[[SyncRequest], Mapping[str, bytes] | None]


@dataclass
class _Stream:
    sid: int
    method: str
    sync: SyncRequest | None = None
    entries: list[_Entry] = field(default_factory=list)
    deframer: _Deframer = field(default_factory=_Deframer)
    out: bytearray = field(default_factory=bytearray)
    jobs: deque[Iterator[bytes]] = field(default_factory=deque)
    trailers: list[tuple[str, str]] | None = None
    done: bool = False


class Session:
    """A BuildKit session, serving local directories by name.

    `transport`: `"session"` runs it on its own `POST /session` upgrade (the CLI's built-in
    BuildKit client); `"grpc"` inside a `Control/Session` call on a `/grpc` connection, its
    HTTP/2 bytes carried as `BytesMessage`s, the session headers as lower-cased gRPC
    metadata (buildx: buildkit session/grpchijack), on `connection` if given (the one the
    build's calls use, as buildx does), else on one of its own. Either way the daemon is the
    HTTP/2 client of the session and the session the gRPC server.

    Use as a context manager; the server loop runs in a thread until `close()`. Pass its `id`
    as the SolveRequest's Session (or to `docker build`'s session). `syncs` records every
    file sync request, `calls` every method the daemon called, in order; `stream` is the
    `Control/Session` call of the "grpc" transport (its result once the session ended).
    """

    def __init__(
        self,
        socket_path: Path | str,
        dirs: Mapping[str, Path],
        *,
        name: str = "pullgate-test",
        shared_key: str | None = None,
        methods: Sequence[str] = SESSION_METHODS,
        data_chunk: int = DEFAULT_DATA_CHUNK,
        frame_size: int | None = None,
        override: Override | None = None,
        abort_after: int | None = None,
        session_id: str | None = None,
        timeout: float = 10.0,
        transport: str = "session",
        connection: GrpcConnection | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """`metadata` replaces the session headers the "grpc" transport sends (hostile
        tests). `shared_key` defaults to one derived from the `context` dir (as the CLI does), so
        later sessions over the same dirs reuse the daemon's copy of the locals."""
        if data_chunk <= 0 or (frame_size is not None and frame_size <= 0):
            raise ValueError("data_chunk and frame_size must be positive")
        self.socket_path = Path(socket_path)
        self.dirs = dict(dirs)
        self.id = session_id or uuid.uuid4().hex
        self.name = name
        base = str(Path(self.dirs.get("context", Path("/"))).resolve())
        self.shared_key = shared_key or hashlib.sha256(base.encode()).hexdigest()
        self.methods = tuple(methods)
        self.data_chunk = data_chunk
        self.frame_size = frame_size
        self.override = override
        self.abort_after = abort_after
        self.timeout = timeout
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}")
        self.transport = transport
        self.connection = connection
        self.metadata = None if metadata is None else tuple(metadata)
        self.stream: GrpcCall | None = None
        self._own_connection: GrpcConnection | None = None
        self.syncs: list[SyncRequest] = []
        self.calls: list[str] = []
        self.health_checks = 0
        self.error: BaseException | None = None
        """What ended the server loop, if not close() or the daemon closing the connection."""
        self.closed = threading.Event()
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._streams: dict[int, _Stream] = {}
        self._sync_data_sent = 0
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )

    # -- lifecycle

    def start(self) -> Session:
        headers = [
            ("X-Docker-Expose-Session-Uuid", self.id),
            ("X-Docker-Expose-Session-Name", self.name),
            ("X-Docker-Expose-Session-Sharedkey", self.shared_key),
            *(("X-Docker-Expose-Session-Grpc-Method", m) for m in self.methods),
        ]
        if self.transport == TRANSPORT_GRPC:
            connection = self.connection
            if connection is None:
                connection = GrpcConnection(self.socket_path, timeout=self.timeout)
                self._own_connection = connection
            metadata = self.metadata
            if metadata is None:
                metadata = tuple((k.lower(), v) for k, v in headers)
            self.stream, sock = connection.open_bridge(CONTROL_SESSION, metadata)
            rest = b""
        else:
            sock, rest = _upgrade(self.socket_path, "/session", headers, self.timeout)
            sock.settimeout(None)
        self._sock = sock
        self._conn.initiate_connection()
        self._thread = threading.Thread(
            target=self._run, args=(rest,), name=f"buildkit-session-{self.id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """End the session (drops the connection, whatever is in flight) and join its thread."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._close_socket()
        for s in (self._wake_r, self._wake_w):
            s.close()
        if self.stream is not None:  # the request side ended: the daemon ends the call
            with contextlib.suppress(TimeoutError):
                self.stream.ended.wait(timeout)
        if self._own_connection is not None:
            self._own_connection.close()

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """The server loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def syncs_of(self, dir_name: str) -> list[SyncRequest]:
        """The file sync requests for local `dir_name`, in order."""
        return [s for s in self.syncs if s.dir_name == dir_name]

    # -- the server loop

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.closed.set()

    def _run(self, initial: bytes) -> None:
        sock = self._sock
        assert sock is not None
        data = initial
        try:
            while not self._stop:
                if data:
                    self._handle(self._conn.receive_data(data))
                self._pump()
                self._flush()
                if self._stopping():
                    break
                readable, _, _ = select.select([sock, self._wake_r], [], [], 1.0)
                if sock not in readable:
                    data = b""
                    continue
                data = sock.recv(65536)
                if not data:
                    break
        except (OSError, h2.exceptions.ProtocolError) as e:
            if not self._stop:
                self.error = e
        except BaseException as e:  # report, never kill the test process's thread silently
            self.error = e
        finally:
            self._close_socket()

    def _stopping(self) -> bool:
        return self._stop  # (a method: close() and the handlers change it behind the loop)

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and self._sock is not None:
            self._sock.sendall(out)

    def _handle(self, events: list[h2.events.Event]) -> None:
        # A stream the daemon opens and resets at once (its build failed meanwhile) may
        # come in one read: h2 has closed it already, so it must not be answered.
        reset = {ev.stream_id for ev in events if isinstance(ev, h2.events.StreamReset)}
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                if ev.stream_id in reset:
                    self.calls.append(_first(_header_pairs(ev.headers), ":path") or "")
                    continue
                self._request(ev.stream_id, _header_pairs(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                self._conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_id in reset:
                    continue
                st = self._streams.get(ev.stream_id)
                if st is not None and ev.data:
                    for msg in st.deframer.feed(ev.data):
                        self._message(st, msg)
            elif isinstance(ev, h2.events.StreamEnded):
                st = self._streams.get(ev.stream_id)
                if st is not None and ev.stream_id not in reset:
                    self._request_ended(st)
            elif isinstance(ev, h2.events.StreamReset):
                self._streams.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._stop = True

    def _request(self, sid: int, headers: tuple[tuple[str, str], ...]) -> None:
        method = _first(headers, ":path") or ""
        self.calls.append(method)
        st = _Stream(sid, method)
        self._streams[sid] = st
        if method == HEALTH_CHECK:
            self.health_checks += 1
            return  # answered when the request has ended
        if method != DIFFCOPY:
            self._respond(st, _GRPC_UNIMPLEMENTED, f"pullgate test session: no {method}")
            return
        meta = [(k, v) for k, v in headers if not k.startswith(":")]
        sync = SyncRequest(
            method=method,
            dir_name=_first(meta, "dir-name") or "",
            followpaths=[v for k, v in meta if k == "followpaths"],
            include_patterns=[v for k, v in meta if k == "include-patterns"],
            exclude_patterns=[v for k, v in meta if k == "exclude-patterns"],
            metadata=meta,
        )
        self.syncs.append(sync)
        st.sync = sync
        self._conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        root = self.dirs.get(sync.dir_name)
        if root is None:
            sync.error = f"no access allowed to dir {sync.dir_name!r}"
            st.trailers = [("grpc-status", "5"), ("grpc-message", sync.error)]
            return
        try:
            entries = _walk(
                root,
                sync.include_patterns if _has(meta, "include-patterns") else None,
                sync.exclude_patterns if _has(meta, "exclude-patterns") else None,
                sync.followpaths if _has(meta, "followpaths") else None,
            )
            replaced = self.override(sync) if self.override is not None else None
            if replaced:
                entries = _apply_override(entries, replaced)
        except OSError as e:
            sync.error = f"walk {sync.dir_name}: {e}"
            err = _PACKET(type=_PACKET.PACKET_ERR, data=sync.error.encode())
            st.out += grpc_frame(err.SerializeToString())
            st.trailers = [("grpc-status", str(_GRPC_UNKNOWN)), ("grpc-message", sync.error)]
            return
        st.entries = entries
        st.jobs.append(self._stats(st))

    def _stats(self, st: _Stream) -> Iterator[bytes]:
        assert st.sync is not None
        for entry in st.entries:
            st.sync.sent.append(entry.stat.path)
            yield grpc_frame(_PACKET(type=_PACKET.PACKET_STAT, stat=entry.stat).SerializeToString())
        yield grpc_frame(_PACKET(type=_PACKET.PACKET_STAT).SerializeToString())

    def _file(self, file_id: int, entry: _Entry) -> Iterator[bytes]:
        def packet(data: bytes) -> bytes:
            pkt = _PACKET(type=_PACKET.PACKET_DATA, ID=file_id, data=data)
            return grpc_frame(pkt.SerializeToString())

        if entry.content is not None:
            for i in range(0, len(entry.content), self.data_chunk):
                yield packet(entry.content[i : i + self.data_chunk])
        elif entry.source is not None:
            try:
                with entry.source.open("rb") as f:
                    while chunk := f.read(self.data_chunk):
                        yield packet(chunk)
            except OSError:
                pass  # like fsutil: a file that cannot be opened is sent empty
        yield packet(b"")

    def _message(self, st: _Stream, msg: bytes) -> None:
        if st.sync is None or st.trailers is not None:
            return  # a unary request (health) or a stream already being ended
        pkt = _PACKET.FromString(msg)
        if pkt.type == _PACKET.PACKET_REQ:
            if len(st.entries) <= pkt.ID or st.entries[pkt.ID].stat.mode & _MODE_TYPE:
                st.sync.error = f"invalid file id {pkt.ID}"
                st.jobs.clear()
                st.trailers = [("grpc-status", str(_GRPC_UNKNOWN)), ("grpc-message", st.sync.error)]
                return
            entry = st.entries[pkt.ID]
            st.sync.requested.append(entry.stat.path)
            st.jobs.append(self._file(pkt.ID, entry))
        elif pkt.type == _PACKET.PACKET_FIN:
            st.sync.finished = True
            st.jobs.append(iter([grpc_frame(_PACKET(type=_PACKET.PACKET_FIN).SerializeToString())]))
            st.trailers = [("grpc-status", "0")]
        elif pkt.type == _PACKET.PACKET_ERR:
            st.sync.error = pkt.data.decode("utf-8", "replace")
            st.jobs.clear()
            msg_text = f"error from receiver: {st.sync.error}"
            st.trailers = [("grpc-status", str(_GRPC_UNKNOWN)), ("grpc-message", msg_text)]

    def _request_ended(self, st: _Stream) -> None:
        if st.method == HEALTH_CHECK and st.trailers is None:
            self._conn.send_headers(
                st.sid, [(":status", "200"), ("content-type", "application/grpc")]
            )
            st.out += grpc_frame(_HEALTH_SERVING)
            st.trailers = [("grpc-status", "0")]
        elif st.sync is not None and st.trailers is None:
            # the receiver half-closed without FIN: end after what is queued
            st.trailers = [("grpc-status", "0")]

    def _respond(self, st: _Stream, status: int, message: str) -> None:
        """A trailers-only response."""
        st.jobs.clear()
        st.out.clear()
        st.trailers = []
        st.done = True
        self._conn.send_headers(
            st.sid,
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", str(status)),
                ("grpc-message", message),
            ],
            end_stream=True,
        )
        self._streams.pop(st.sid, None)

    def _pump(self) -> None:
        """Send what flow control allows, reading file data only as it can be sent."""
        for st in list(self._streams.values()):
            if st.done:
                continue
            while True:
                while len(st.out) < _OUT_LOW_WATER and st.jobs:
                    chunk = next(st.jobs[0], None)
                    if chunk is None:
                        st.jobs.popleft()
                    else:
                        st.out += chunk
                if not st.out:
                    break
                window = min(
                    self._conn.local_flow_control_window(st.sid),
                    self._conn.max_outbound_frame_size,
                    self.frame_size or 1 << 30,
                )
                if window <= 0:
                    break
                piece = bytes(st.out[:window])
                del st.out[:window]
                self._conn.send_data(st.sid, piece)
                if st.sync is not None and self.abort_after is not None:
                    self._sync_data_sent += len(piece)
                    if self._sync_data_sent >= self.abort_after:
                        self._flush()
                        self._stop = True
                        return
                if self.frame_size is not None:
                    self._flush()  # one small frame per write, as a slow client would
            if not st.out and not st.jobs and st.trailers is not None:
                self._conn.send_headers(st.sid, st.trailers, end_stream=True)
                st.done = True
                self._streams.pop(st.sid, None)


def _has(meta: Sequence[tuple[str, str]], key: str) -> bool:
    return any(k == key for k, _ in meta)


# --------------------------------------------------------------------------- build inputs


def build_dirs(
    tmp: Path, dockerfile_text: str, files: Mapping[str, bytes | str] | None = None
) -> dict[str, Path]:
    """A build context under `tmp/context` holding `files` (paths with '/') and the
    `Dockerfile`; returns the locals as the CLI names them (both are the context dir)."""
    context = tmp / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile_text)
    for rel, content in (files or {}).items():
        path = context / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return {"context": context, "dockerfile": context}
