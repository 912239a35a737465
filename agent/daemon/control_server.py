"""The control API: what the agent is doing, for the tray, the CLI and IT's scripts.

HTTP/1.1 + JSON on a local Unix socket, so ``curl --unix-socket`` works (the contract:
docs/control-api.md). The server is a ``DecisionSink`` subscriber: it keeps the last
decisions in a ring buffer and fans every event out to live server-sent-event streams.

Access control is the kernel's word on who is calling (``SO_PEERCRED``), not the socket's
mode: root's socket is world-writable so that every user may ask about *their own*
decisions; a user sees only decisions whose client ran as their uid, root sees all, and
policy and notice events are for everyone. The agent must never wait for a reader: each
stream has a bounded queue, and a client that reads too slowly loses events and is told
how many (a ``warning`` event with action ``events-dropped``).

Requests are framed strictly with the shim's parser (``http1``); anything ambiguous is a
400, not a guess. ``control_request`` is the matching small client for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from agent import __version__
from agent.control.contract import (
    default_socket_mode,
    event_name,
    redacted,
    redacts,
    visible_to,
)
from agent.core import strict_json
from agent.core.events import DecisionEvent, Event, NoticeEvent
from agent.core.identity import RefusalReason, TokenRefusedError
from agent.core.inspection.http1 import (
    BodyReader,
    ProtocolError,
    RequestHead,
    find_head_end,
    parse_request_head,
)
from agent.core.peer import PeerInfo, Principal
from agent.core.policy.document import Policy
from agent.daemon.policy_fetch import FetchError
from agent.daemon.policy_manager import PolicyManager
from agent.platform.peer import describe_peer, peer_credentials
from agent.platform.unix_sockets import claim_socket_path

if TYPE_CHECKING:  # the store imports PyJWT: only agents with sign-in configured load it
    from agent.daemon.identities import IdentityStore

__all__ = [
    "DEFAULT_DECISIONS_LIMIT",
    "MAX_DECISIONS_LIMIT",
    "ControlLimits",
    "ControlServer",
    "agent_status",
]

DEFAULT_DECISIONS_LIMIT: Final = 50
MAX_DECISIONS_LIMIT: Final = 1000
STATUS_DECISIONS: Final = 5
"""How many of the caller's last decisions ``GET /v1/status`` includes."""
_MAX_CONTROL_HEAD: Final = 16 * 1024
_STREAM_BUFFER: Final = 256 * 1024  # bytes a stream may have unsent before it must wait
_READ_CHUNK: Final = 16 * 1024


@dataclass(frozen=True)
class ControlLimits:
    """Every bound of the control server in one place (tests shrink them)."""

    ring_size: int = 1000
    stream_queue: int = 256  # events waiting for one slow stream before they are dropped
    keepalive: float = 15.0  # seconds between SSE comments on an idle stream
    head_timeout: float = 10.0  # a request head must arrive within this
    idle_timeout: float = 30.0  # a keep-alive connection may idle this long
    write_timeout: float = 30.0  # a stream whose reader stalls this long is closed
    refresh_timeout: float = 120.0
    max_body: int = 64 * 1024
    max_connections: int = 256  # everyone's, root's included
    max_connections_per_uid: int = 32  # per non-root uid: root (IT) is never locked out by users
    refresh_interval_per_uid: float = (
        60.0  # a user (not root, not the agent's uid) may refresh this often
    )
    sign_ins_per_minute: int = 10  # PUT /v1/identity per non-root uid (each is audited)
    stream_flush: float = 0.02  # events reach streams in batches this far apart at most


Caller = tuple[int | None, Principal, int | None]
"""A control API caller: (pid, uid or, on Windows, SID, gid)."""


def _own_uid() -> int | None:
    """The agent's uid; None on Windows (a service's SID is no caller's uid)."""
    if sys.platform == "win32":
        return None
    else:
        return os.geteuid()


def _describe_caller(pid: int | None, uid: Principal | None, gid: int | None) -> PeerInfo:
    """The caller as the audit log records it: by uid, or on Windows by SID (``user``)."""
    if isinstance(uid, str):
        return replace(describe_peer(pid, None, gid), user=uid)
    return describe_peer(pid, uid, gid)


def _sse_frame(event: Event, uid: Principal) -> bytes:
    return _frame(event, redacts(event, uid))


def _frame(event: Event, redact: bool) -> bytes:
    if redact:
        data = json.dumps(redacted(event, redact), separators=(",", ":"), default=str)
    else:
        data = event.json_text  # shared with the other subscribers
    return f"event: {event_name(event)}\ndata: {data}\n\n".encode()


@dataclass(eq=False)
class _Stream:
    """One live ``GET /v1/events`` reader and the events waiting for it."""

    uid: Principal
    limit: int
    queue: deque[bytes] = field(default_factory=deque)
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None  # set once the stream's head is sent

    def offer(self, frame: bytes) -> None:
        """Queue a frame; the server wakes the stream once per batch (``_flush``)."""
        if len(self.queue) >= self.limit:
            self.dropped += 1
        else:
            self.queue.append(frame)


# --- the server -----------------------------------------------------------------------

StatusSource = Callable[[], dict[str, Any]]
RefreshAction = Callable[[], Awaitable[str]]


class _ReplyError(Exception):
    """An error answer to the current request: ``status`` and a ``{"message"}`` body
    (with a machine-readable ``reason`` where a client acts on it)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: tuple[str, ...] = (),
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.reason = reason


_ROUTES: Final[dict[str, tuple[str, ...]]] = {
    "/v1/status": ("GET",),
    "/v1/decisions": ("GET",),
    "/v1/events": ("GET",),
    "/v1/policy/refresh": ("POST",),
    "/v1/identity": ("GET", "PUT", "DELETE"),
}


class ControlServer:
    """The control socket; subscribe it to the agent's ``DecisionSink``."""

    def __init__(
        self,
        path: Path,
        *,
        status: StatusSource,
        refresh: RefreshAction | None,
        socket_mode: int | None = None,
        limits: ControlLimits | None = None,
        identities: IdentityStore | None = None,
        serve_socket: bool = True,
    ) -> None:
        self.path = path
        # False: no socket at ``path``; callers arrive through ``serve_client`` (each
        # Windows user's control pipe, agent.daemon.windows_desktop).
        self.serve_socket = serve_socket
        self.status = status
        self.refresh = refresh
        self.identities = identities
        self._sign_ins: dict[Principal, deque[float]] = {}  # uid -> when it last PUT identities
        if socket_mode is None:
            own = _own_uid()
            socket_mode = default_socket_mode(own) if own is not None else 0o600
        self.socket_mode = socket_mode
        self.limits = limits or ControlLimits()
        self.decisions: deque[DecisionEvent] = deque(maxlen=self.limits.ring_size)
        self._streams: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._per_uid: dict[Principal, int] = {}
        self._refreshing: asyncio.Future[str] | None = None
        self._refreshed_by: dict[Principal, float] = {}  # uid -> when it last asked (monotonic)
        self._flush_at: asyncio.Handle | None = None
        self._batch: list[Event] = []  # events for the streams since the last flush

    # -- subscriber -----------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Take an event from the sink; from another thread it is handed to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._dispatch(event)  # not serving: no streams, only the ring buffer
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._dispatch(event)
        else:
            loop.call_soon_threadsafe(self._dispatch, event)

    def _dispatch(self, event: Event) -> None:
        """Add the event to the batch for the streams; constant work per event, whatever
        the number of readers (they are served together in ``_flush``)."""
        if isinstance(event, DecisionEvent):
            self.decisions.append(event)
        if not self._streams:
            return
        self._batch.append(event)
        loop = self._loop
        if loop is None:
            return
        if self._flush_at is None:
            self._flush_at = loop.call_later(self.limits.stream_flush, self._flush)
        elif len(self._batch) == self.limits.stream_queue:
            # A burst: serve it at once, so a reader's bound applies to what is really
            # pending for it, not to everything that arrived in one batch window.
            self._flush_at.cancel()
            self._flush_at = loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Serve a batch to every stream: each event's frame is built once (once more for
        readers who see it redacted), each reader's bytes are joined once per uid and
        written straight to its socket. A reader that is behind (its socket buffer full)
        gets at most ``stream_queue`` events of a batch and is told how many it lost; its
        task waits for it or closes it."""
        self._flush_at = None
        batch, self._batch = self._batch, []
        frames: dict[tuple[int, bool], bytes] = {}
        per_uid: dict[Principal, tuple[list[bytes], bytes]] = {}
        for stream in self._streams:
            mine = per_uid.get(stream.uid)
            if mine is None:
                visible: list[bytes] = []
                for i, event in enumerate(batch):
                    if visible_to(event, stream.uid):
                        redact = redacts(event, stream.uid)
                        frame = frames.get((i, redact))
                        if frame is None:
                            frame = frames[(i, redact)] = _frame(event, redact)
                        visible.append(frame)
                mine = per_uid[stream.uid] = (visible, b"".join(visible))
            self._serve(stream, *mine)

    def _serve(self, stream: _Stream, frames: list[bytes], joined: bytes) -> None:
        writer = stream.writer
        if writer is None or writer.transport.get_write_buffer_size() > _STREAM_BUFFER:
            for frame in frames:  # the stream's task writes them when the reader catches up
                stream.offer(frame)
            stream.wake.set()
            return
        if stream.queue or stream.dropped or len(frames) > stream.limit:
            for frame in frames:
                stream.offer(frame)
            pending = list(stream.queue)
            stream.queue.clear()
            if stream.dropped:
                pending.append(_sse_frame(_dropped_notice(stream.dropped), stream.uid))
                stream.dropped = 0
            joined = b"".join(pending)
        if joined:
            writer.write(joined)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if not self.serve_socket:
            self._loop = asyncio.get_running_loop()
        elif sys.platform != "win32":
            path = self.path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if self._shared else 0o700)
            if self._shared:
                # Others must reach a world-writable socket; the directory may predate us.
                mode = path.parent.stat().st_mode & 0o777
                if mode & 0o011 != 0o011:
                    os.chmod(path.parent, mode | 0o011)
            claim_socket_path(path, "the control API")
            self._loop = asyncio.get_running_loop()
            self._server = await asyncio.start_unix_server(
                self._connection, str(path), limit=_READ_CHUNK * 4
            )
            os.chmod(path, self.socket_mode)
        else:
            raise RuntimeError("pullgate: on Windows the control API serves named pipes only")

    @property
    def _shared(self) -> bool:
        return bool(self.socket_mode & 0o066)

    async def close(self) -> None:
        """Stop listening, end every stream and connection, remove the socket."""
        if self._server is not None:
            self._server.close()
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        # Closing the transports ends every read, so handlers (and streams) return on
        # their own; cancelling them instead makes asyncio's stream callback log noise.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # -- connections ----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        await self.serve_client(
            reader, writer, peer_credentials(sock) if sock is not None else (None, None, None)
        )

    async def serve_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: tuple[int | None, Principal | None, int | None],
    ) -> None:
        """Serve one connection whose caller is known: (pid, uid, gid) from the unix
        socket, or (pid, SID, None) from a Windows user's control pipe."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        pid, uid, gid = caller
        counted = uid is not None
        if uid is not None:
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        try:
            if uid is None:
                writer.write(_error(403, "cannot tell who is calling (no peer credentials)"))
            elif len(self._tasks) > self.limits.max_connections or (
                uid != 0 and self._per_uid[uid] > self.limits.max_connections_per_uid
            ):
                writer.write(_error(503, "too many control API connections; try again later"))
            else:
                await _Connection(self, reader, writer, (pid, uid, gid)).serve()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1.0)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if counted and uid is not None:
                self._per_uid[uid] -= 1
                if not self._per_uid[uid]:
                    del self._per_uid[uid]
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    # -- endpoints ------------------------------------------------------------------

    def visible_decisions(self, uid: Principal, limit: int) -> list[dict[str, Any]]:
        """The caller's (root: everyone's) newest decisions first."""
        found: list[dict[str, Any]] = []
        for event in reversed(self.decisions):
            if visible_to(event, uid):
                found.append(event.to_json())
                if len(found) >= limit:
                    break
        return found

    def status_for(self, uid: Principal) -> dict[str, Any]:
        try:
            status = dict(self.status())
        except Exception as e:
            raise _ReplyError(500, f"the agent could not report its status: {e!r}") from e
        status["last_decisions"] = self.visible_decisions(uid, STATUS_DECISIONS)
        desktop = status.get("desktop")
        if isinstance(desktop, dict) and uid not in (0, _own_uid()):
            # Docker Desktop mode: a user sees their own endpoint (by uid, or by SID on
            # Windows), not other users' contexts, paths and errors (red-team finding);
            # root sees all.
            endpoints = desktop.get("endpoints") or []
            status["desktop"] = {
                **desktop,
                "endpoints": [
                    e
                    for e in endpoints
                    if isinstance(e, dict) and uid in (e.get("uid"), e.get("sid"))
                ],
            }
        status["identity"] = (
            self.identities.status(uid) if self.identities is not None else {"configured": False}
        )
        status["caller"] = {"uid": uid}
        status["control"] = {"socket": str(self.path), "streams": len(self._streams)}
        return status

    def check_refresh_caller(self, uid: Principal) -> None:
        """Root and the agent's own uid may refresh at will; any other user once per
        ``refresh_interval_per_uid`` (429 otherwise), so no user can make the agent hammer
        the policy host. Only the signature decides what is accepted either way."""
        if uid in (0, _own_uid()):
            return
        now = time.monotonic()
        last = self._refreshed_by.get(uid)
        wait = self.limits.refresh_interval_per_uid
        if last is not None and now - last < wait:
            retry = max(1, round(wait - (now - last)))
            raise _ReplyError(
                429,
                f"refused: a policy refresh was asked for by this user {now - last:.0f} s ago; "
                f"users may ask once every {wait:.0f} s (root may always); try again in "
                f"{retry} s",
                (f"Retry-After: {retry}",),
            )
        self._refreshed_by[uid] = now

    async def run_refresh(self, uid: Principal = 0) -> dict[str, Any]:
        """One refresh at a time: concurrent callers share the fetch in flight."""
        if self.refresh is None:
            raise _ReplyError(
                409,
                "this agent enforces a local or built-in policy: there is no org policy "
                "(policy_url) to refresh",
            )
        self.check_refresh_caller(uid)
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
            # A caller that timed out leaves nobody awaiting; retrieve the outcome anyway.
            self._refreshing.add_done_callback(_retrieve)
        try:
            result = await asyncio.wait_for(
                asyncio.shield(self._refreshing), self.limits.refresh_timeout
            )
        except FetchError as e:
            raise _ReplyError(502, f"policy fetch failed: {e.reason}") from e
        except TimeoutError as e:
            raise _ReplyError(
                504, f"the policy refresh did not finish within {self.limits.refresh_timeout:.0f} s"
            ) from e
        except Exception as e:
            raise _ReplyError(500, f"the policy refresh failed: {e!r}") from e
        return {"result": result}

    # -- identity (docs/sign-in.md) -------------------------------------------------

    def _identity_store(self) -> IdentityStore:
        if self.identities is None:
            raise _ReplyError(
                409,
                "sign-in is not configured on this agent: the managed config sets no oidc_issuer",
                reason=RefusalReason.NOT_CONFIGURED,
            )
        return self.identities

    def identity_of(self, uid: Principal) -> dict[str, Any]:
        """``GET /v1/identity``: the caller's own sign-in, and how to sign in."""
        store = self.identities
        if store is None:
            return {"identity": None, "sign_in": None}
        binding = store.binding(uid)
        return {
            "identity": binding.to_json() if binding else None,
            "sign_in": store.settings.to_json(),
        }

    def check_sign_in_rate(self, uid: Principal) -> None:
        """A user may present ``sign_ins_per_minute`` tokens a minute: each is verified and
        audited, so no user can flood the audit log or the provider's JWKS endpoint."""
        if uid in (0, _own_uid()):
            return
        now = time.monotonic()
        recent = self._sign_ins.setdefault(uid, deque())
        while recent and now - recent[0] > 60.0:
            recent.popleft()
        if len(recent) >= self.limits.sign_ins_per_minute:
            retry = max(1, round(60.0 - (now - recent[0])))
            raise _ReplyError(
                429,
                f"refused: {len(recent)} sign-in attempts from this user in the last minute; "
                f"try again in {retry} s",
                (f"Retry-After: {retry}",),
            )
        recent.append(now)

    async def put_identity(self, peer: Caller, body: bytes) -> object:
        """``PUT /v1/identity {"id_token": ...}``: verify and bind to the caller's uid."""
        store = self._identity_store()
        pid, uid, gid = peer
        self.check_sign_in_rate(uid)
        caller = _describe_caller(pid, uid, gid)
        try:
            token = _id_token(body)
        except _ReplyError as e:  # audited like any refused token
            store.refused(TokenRefusedError(RefusalReason.MALFORMED, e.message), caller)
            raise
        try:
            binding = await store.accept(token, caller)
        except TokenRefusedError as e:
            status = 503 if e.reason is RefusalReason.KEYS_UNAVAILABLE else 403
            raise _ReplyError(status, f"sign-in refused: {e.message}", reason=e.reason) from e
        return {"identity": binding.to_json()}

    def delete_identity(self, peer: Caller) -> object:
        """``DELETE /v1/identity``: forget the caller's sign-in (only the caller's own)."""
        store = self._identity_store()
        pid, uid, gid = peer
        forgot = store.forget(_describe_caller(pid, uid, gid))
        return {"identity": None, "forgot": forgot}

    def open_stream(self, uid: Principal) -> _Stream:
        stream = _Stream(uid, self.limits.stream_queue)
        self._streams.add(stream)
        return stream

    def close_stream(self, stream: _Stream) -> None:
        self._streams.discard(stream)


def _retrieve(future: asyncio.Future[str]) -> None:
    if not future.cancelled():
        future.exception()


def _json_body(status: int, body: object, *, close: bool, headers: tuple[str, ...] = ()) -> bytes:
    payload = json.dumps(body, indent=2, default=str).encode() + b"\n"
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close" if close else "Connection: keep-alive",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _error(
    status: int, message: str, headers: tuple[str, ...] = (), reason: str | None = None
) -> bytes:
    body = {"message": message} if reason is None else {"message": message, "reason": reason}
    return _json_body(status, body, close=True, headers=headers)


def _id_token(body: bytes) -> str:
    """The ``id_token`` of a ``PUT /v1/identity`` body, read strictly."""
    try:
        data = strict_json.loads(body)
    except ValueError as e:
        raise _ReplyError(400, f"the body is not JSON: {e}", reason="malformed") from e
    if not isinstance(data, dict) or set(data) != {"id_token"}:
        raise _ReplyError(400, 'the body must be exactly {"id_token": "<JWT>"}', reason="malformed")
    token = data["id_token"]
    if not isinstance(token, str) or not token:
        raise _ReplyError(400, "id_token must be a non-empty string", reason="malformed")
    return token


class _Connection:
    """One client connection: requests one at a time, until close, error or a stream."""

    def __init__(
        self,
        server: ControlServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Caller,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer  # (pid, uid, gid) from SO_PEERCRED
        self.uid = peer[1]
        self.buf = bytearray()
        self.body = bytearray()  # the current request's body (kept only where one is read)

    async def serve(self) -> None:
        first = True
        while True:
            timeout = self.server.limits.head_timeout if first else self.server.limits.idle_timeout
            first = False
            try:
                head = await self._read_head(timeout)
                if head is None:
                    return
                await self._read_body(head)
                keep = await self._answer(head)
            except ProtocolError as e:
                self.writer.write(_error(e.status, e.message))
                return
            except _ReplyError as e:
                self.writer.write(_error(e.status, e.message, e.headers, e.reason))
                return
            if not keep:
                return

    async def _more(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(self.reader.read(_READ_CHUNK), remaining)
        self.buf += data
        return bool(data)

    async def _read_head(self, timeout: float) -> RequestHead | None:
        deadline = time.monotonic() + timeout
        while True:
            end = find_head_end(self.buf)
            if end >= 0:
                break
            if len(self.buf) > _MAX_CONTROL_HEAD:
                raise ProtocolError(431, f"request head larger than {_MAX_CONTROL_HEAD} bytes")
            try:
                more = await self._more(deadline)
            except TimeoutError:
                if self.buf:
                    raise ProtocolError(408, "request head not received in time") from None
                return None  # an idle keep-alive connection: just close it
            if not more:
                if self.buf:
                    raise ProtocolError(400, "malformed request: connection closed mid-head")
                return None
        if end > _MAX_CONTROL_HEAD:
            raise ProtocolError(431, f"request head larger than {_MAX_CONTROL_HEAD} bytes")
        raw = bytes(self.buf[:end])
        del self.buf[:end]
        head = parse_request_head(raw)
        if head.upgrade is not None:
            raise ProtocolError(400, "protocol upgrades are not supported on the control API")
        return head

    async def _read_body(self, head: RequestHead) -> None:
        """Read a request body into ``self.body``: only ``PUT /v1/identity`` uses one, but
        framing must hold for all."""
        self.body.clear()
        if not head.has_body:
            return
        if (head.content_length or 0) > self.server.limits.max_body:
            raise ProtocolError(413, "request body too large for the control API")
        body = BodyReader(
            content_length=head.content_length, chunked=head.chunked, want_payload=True
        )
        total = 0
        deadline = time.monotonic() + self.server.limits.head_timeout
        while True:
            view = memoryview(self.buf)
            used, pieces = body.feed(view)
            for piece in pieces:
                self.body += piece
                piece.release()
            view.release()
            del self.buf[:used]
            total += used
            if body.done:
                return
            if total > self.server.limits.max_body:
                raise ProtocolError(413, "request body too large for the control API")
            try:
                more = await self._more(deadline)
            except TimeoutError:
                raise ProtocolError(408, "request body not received in time") from None
            if not more:
                raise ProtocolError(400, "connection closed in the middle of the request body")

    async def _answer(self, head: RequestHead) -> bool:
        """Answer one request; True to keep reading requests on this connection."""
        url = urlsplit(head.target)
        methods = _ROUTES.get(url.path)
        if methods is None:
            raise _ReplyError(404, f"no such endpoint: {url.path}")
        if head.method not in methods:
            raise _ReplyError(
                405,
                f"{head.method} is not allowed on {url.path} (use {', '.join(methods)})",
                (f"Allow: {', '.join(methods)}",),
            )
        query = _parse_query(url.query, allowed=("limit",) if url.path == "/v1/decisions" else ())
        server = self.server
        keep = head.keep_alive
        if url.path == "/v1/status":
            body: object = server.status_for(self.uid)
        elif url.path == "/v1/decisions":
            limit = _parse_limit(query.get("limit"))
            body = {"decisions": server.visible_decisions(self.uid, limit)}
        elif url.path == "/v1/events":
            await self._stream_events()
            return False
        elif url.path == "/v1/policy/refresh":
            body = await server.run_refresh(self.uid)
        elif head.method == "GET":
            body = server.identity_of(self.uid)
        elif head.method == "PUT":
            body = await server.put_identity(self.peer, bytes(self.body))
        else:
            body = server.delete_identity(self.peer)
        self.writer.write(_json_body(200, body, close=not keep))
        await asyncio.wait_for(self.writer.drain(), server.limits.write_timeout)
        return keep

    async def _stream_events(self) -> None:
        """Server-sent events until the client goes away, stalls, or the agent stops."""
        server = self.server
        limits = server.limits
        stream = server.open_stream(self.uid)
        gone = asyncio.ensure_future(self.reader.read(1))  # any byte or EOF ends the stream
        try:
            self.writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
                b": pullgate control API event stream\n\n"
            )
            await asyncio.wait_for(self.writer.drain(), limits.write_timeout)
            stream.writer = self.writer
            while True:
                if not stream.queue and not stream.dropped:
                    stream.wake.clear()
                    woken = asyncio.ensure_future(stream.wake.wait())
                    try:
                        await asyncio.wait(
                            (woken, gone),
                            timeout=limits.keepalive,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        woken.cancel()
                    if gone.done():
                        return
                frames = list(stream.queue)
                stream.queue.clear()
                if stream.dropped:
                    frames.append(_sse_frame(_dropped_notice(stream.dropped), stream.uid))
                    stream.dropped = 0
                self.writer.write(b"".join(frames) if frames else b": keep-alive\n\n")
                await asyncio.wait_for(self.writer.drain(), limits.write_timeout)
        finally:
            server.close_stream(stream)
            gone.cancel()


def _dropped_notice(count: int) -> NoticeEvent:
    return NoticeEvent(
        action="events-dropped",
        outcome="failure",
        reason=f"{count} event(s) were dropped: this stream was read too slowly",
        severity="warning",
        details={"dropped": count},
    )


def _parse_query(query: str, *, allowed: tuple[str, ...]) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise _ReplyError(400, f"malformed query string {query!r}") from e
    for name, values in pairs.items():
        if name not in allowed:
            raise _ReplyError(400, f"unknown query parameter {name!r}")
        if len(values) != 1:
            raise _ReplyError(400, f"query parameter {name!r} given more than once")
    return {name: values[0] for name, values in pairs.items()}


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_DECISIONS_LIMIT
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise _ReplyError(
            400, f"limit must be a whole number from 1 to {MAX_DECISIONS_LIMIT}, not {raw!r}"
        )
    return min(int(raw), MAX_DECISIONS_LIMIT)


# --- the agent's status ---------------------------------------------------------------


def agent_status(
    *,
    policy: Callable[[], Policy],
    manager: PolicyManager | None,
    local_policy: str | None,
    listen: Path,
    upstream: Path,
    upstream_source: str,
    control: Path,
    started_at: float,
    audit: Callable[[], dict[str, Any] | None] | None = None,
    bypass_monitor: Callable[[], dict[str, Any]] | None = None,
    desktop: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The agent's ``GET /v1/status`` document (bind the arguments with functools.partial).

    ``policy.state`` is the manager's ``fresh`` | ``stale`` | ``expired`` | ``fallback``
    (an org policy is configured but none is verified yet) for the org policy, ``local``
    for ``--policy FILE`` and ``default`` when no org policy is configured at all.
    ``audit`` reports the audit log's health (``state``, ``dir``, ``error``) once it exists.
    """
    current = policy()  # also lets the manager re-judge freshness before it reports
    if manager is not None:
        policy_status = manager.status()
        clock_behind = manager.clock_behind
    else:
        policy_status = {
            "org": current.org or None,
            "serial": current.serial,
            "issued_at": current.issued_at.isoformat(),
            "expires_at": current.expires_at.isoformat(),
            "age_seconds": time.time() - current.issued_at.timestamp(),
            "source": f"--policy {local_policy}" if local_policy else current.source,
            "state": "local" if local_policy else "default",
            "enforcing": current.label,
            "mode": str(current.mode),
            "require_sign_in": current.require_sign_in,
        }
        clock_behind = False
    return {
        "agent": {
            "pid": os.getpid(),
            "uid": _own_uid(),
            "version": __version__,
            "started_at": started_at,
            "uptime_seconds": round(time.time() - started_at, 3),
        },
        "mode": str(current.mode),
        "org": current.org or None,
        "policy": policy_status,
        "listen": str(listen),
        "upstream": str(upstream),
        "upstream_source": upstream_source,
        "control_socket": str(control),
        "audit": audit() if audit is not None else None,
        "bypass_monitor": bypass_monitor() if bypass_monitor is not None else None,
        # Docker Desktop mode: the per-user endpoints (agent.daemon.desktop); else absent.
        **({"desktop": desktop()} if desktop is not None else {}),
        "clock_behind": clock_behind,
    }
