"""BuildKit's h2c tunnels, terminated on both sides so a build can be decided.

``POST /session`` and ``POST /grpc`` upgrade to HTTP/2 without TLS. On ``/session`` the
daemon is the HTTP/2 client and the build client serves gRPC (the daemon reads the build
context and the Dockerfile from it); on ``/grpc`` the client calls the daemon's control
API (``Control/Solve`` starts a build). The shim speaks HTTP/2 to each side with ``h2``
and relays every stream, message for message, with flow control on both sides: a slow
reader slows the writer, and at most the windows the shim grants are buffered.

What is read, not just relayed:

- a ``FileSync/DiffCopy`` of the local that holds a pending build's Dockerfile: file
  stats pass (each regular file's mtime stamped so the daemon asks for every byte,
  see ``filesync``), the Dockerfile's data is held until every build it may be for is
  decided, then released, or the daemon's stream is ended with ``PERMISSION_DENIED``
  carrying Pullgate's message (which the build prints) and the client's is cancelled;
- a call on ``/grpc`` that starts work (``Control/Solve``, buildx's ``LLBBridge/Solve``
  and image resolves): held whole, registered (so the session can be tied to it),
  decided, and its session ids renamed to the daemon's (``buildkit_builds``) before it
  reaches the daemon; calls not known to start no pull follow ``builds``;
- ``Control/Session``: a session carried in ``BytesMessage`` chunks, fed to a nested
  session ``Tunnel``, so its file syncs are read as those of ``POST /session``.

Everything else (progress, cache, secrets, SSH) passes unchanged and is never logged.
Anything malformed ends the stream or the tunnel: a build never proceeds on bytes the
shim could not follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from google.protobuf.message import DecodeError

from agent.core.inspection.buildkit import grpc
from agent.core.inspection.buildkit.decide import (
    RESOLVE_CONFIG_DETAIL,
    RESOLVE_SOURCE_DETAIL,
    from_sync,
    merge,
    resolve_inspection,
    upfront,
)
from agent.core.inspection.buildkit.filesync import DockerfileSync, FileSyncError, sender_error
from agent.core.inspection.buildkit.inputs import (
    BuildInputs,
    from_gateway_solve,
    from_solve_request,
    image_of_resolve_config,
    image_of_resolve_source_meta,
)
from agent.core.inspection.buildkit.protos.control_pb2 import BytesMessage
from agent.core.inspection.buildkit.sessions import (
    rename_in_gateway_solve,
    rename_in_resolve,
    rename_in_solve,
)
from agent.core.inspection.request import (
    Inspection,
    InspectionError,
    SettingOutcome,
    builds_setting,
)
from agent.core.peer import PeerInfo
from agent.core.policy.document import Policy
from agent.daemon.buildkit_builds import (
    CONTROL_SOLVE_ENDPOINT,
    BuildRegistry,
    PendingBuild,
    RelayedSession,
)

__all__ = ["Decider", "Tunnel", "TunnelKind", "build_inspection", "dockerfile_sessions"]

Headers = list[tuple[bytes, bytes]]

CLIENT_RESET_GRACE = 2.0
"""Seconds between telling the daemon that a session call failed and cancelling the
client's side of it (``Tunnel.fail_request``)."""


class Decider(Protocol):
    """Decide an inspection for a build (endpoint, peer); resolves to a denial message or
    None once the decision is recorded (the shim's audit gate). ``every_stage``: the
    same decision with every stage of the Dockerfile, should local images call for it."""

    def __call__(
        self,
        inspection: Inspection,
        endpoint: str,
        peer: PeerInfo,
        every_stage: Callable[[], Inspection] | None = None,
    ) -> Awaitable[str | None]: ...


DIFFCOPY = b"/moby.filesync.v1.FileSync/DiffCopy"
TARSTREAM = b"/moby.filesync.v1.FileSync/TarStream"
CONTROL = b"/moby.buildkit.v1.Control/"
SOLVE = CONTROL + b"Solve"
SESSION = CONTROL + b"Session"
GATEWAY = b"/moby.buildkit.v1.frontend.LLBBridge/"
GATEWAY_SOLVE = GATEWAY + b"Solve"
RESOLVE_IMAGE = GATEWAY + b"ResolveImageConfig"
RESOLVE_SOURCE = GATEWAY + b"ResolveSourceMeta"
#: Calls on /grpc relayed as they are: they read state or run what a decided solve
#: made, and start no pull. Any other call follows the policy's ``builds`` setting.
RELAYED = frozenset(
    [CONTROL + m for m in (b"DiskUsage", b"Prune", b"Status", b"ListWorkers", b"Info")]
    + [CONTROL + m for m in (b"ListenBuildHistory", b"UpdateBuildHistory")]
    + [
        GATEWAY + m
        for m in (
            b"ReadFile",
            b"ReadDir",
            b"StatFile",
            b"Evaluate",
            b"Ping",
            b"Return",
            b"Inputs",
            b"NewContainer",
            b"ReleaseContainer",
            b"ExecProcess",
            b"ReadFileContainer",
            b"ReadDirContainer",
            b"StatFileContainer",
            b"Warn",
        )
    ]
    + [
        b"/grpc.health.v1.Health/Check",
        b"/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    ]
)
BUILD_ID = b"buildkit-controlapi-buildid"
SESSION_ID = b"x-docker-expose-session-uuid"

#: What the shim lets each peer have in flight towards it: the most one tunnel buffers
#: per stream, and in all.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
#: A Solve request (an LLB definition can be large) is held whole before it is decided;
#: BuildKit's own servers take no message over 16 MiB (dockerd 20.10's: 4 MiB).
MAX_SOLVE_REQUEST = 16 << 20
#: All request bodies held for a decision, across every tunnel of the agent.
MAX_HELD_REQUESTS = 32 << 20
#: What a held Dockerfile sync may carry besides its file data (packet framing, the
#: list's end, FIN), before it is refused.
_HELD_SLACK = 1 << 20
#: How long a build waits for the session it names to start (the daemon waits 5 s).
SESSION_WAIT = 5.0
#: The Dockerfile local's bytes the shim keeps to decide (the daemon's frontends cap
#: far lower).
MAX_DOCKERFILE_BYTES = 4 << 20


def _data_frame_body_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"<{len(frame.data)} bytes>"


# h2 formats every frame it receives for its trace log before the logger drops it
# (``H2Connection._receive_frame``: ``repr(frame)``), and hyperframe's repr of a DATA
# frame copies its body and hex-encodes all of it to keep 20 digits: 17 µs a 16 KiB
# frame, half of what relaying the frame costs the tunnel. The repr serves only debugging.
hyperframe.frame.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]

#: What precedes each peer's first frame header, plus the header: the requester (an
#: HTTP/2 client) sends the 24-byte preface first; the responder starts with the frame.
_OPENING_BYTES = {True: 24 + 9, False: 9}
_SETTINGS = 0x4
_DATA = 0x0
_END_OR_PADDED = 0x1 | 0x8
#: Relayed DATA a side may send before the shim reopens its windows: a fraction of the
#: windows it grants (STREAM_WINDOW, CONNECTION_WINDOW), so no peer stalls on it.
_RELAY_ACK = 128 * 1024

_stamps = itertools.count(time.time_ns())


def _stamp() -> int:
    """A modification time no earlier stream used: the daemon's cached copy of the
    Dockerfile local then differs, so it asks for every file again."""
    return max(next(_stamps), time.time_ns())


class TunnelKind:
    SESSION = "session"
    GRPC = "grpc"


@dataclass
class _Outbox:
    """Bytes waiting to go out on one stream of one side, in order, as flow control
    allows; then its trailers or end. ``ack`` acknowledges relayed bytes to the side
    they came from once they are sent (so that side's window reflects ours)."""

    sid: int  # 0 until the stream is opened on that side
    chunks: deque[memoryview] = field(default_factory=deque)
    trailers: Headers | None = None
    end: bool = False
    done: bool = False  # the end went out
    ack: Callable[[int], None] | None = None
    owed: int = 0  # received bytes acknowledged only once the box is empty
    owe: Callable[[int], None] | None = None


class _Pair:
    """One stream relayed between the requester and the responder."""

    def __init__(self, req_sid: int, path: bytes) -> None:
        self.req_sid = req_sid
        self.path = path
        self.resp_sid: int | None = None
        self.to_resp = _Outbox(0)  # requester → responder
        self.to_req = _Outbox(req_sid)  # responder → requester
        self.response_started = False
        self.hook: _DockerfileHook | _UnaryHook | _NestedSessionHook | None = None
        self.closed = False


class Tunnel:
    """One upgraded connection: ``requester`` opens the streams, ``responder`` answers.

    Sans-IO apart from the decision task: bytes come in through ``client_data`` and
    ``daemon_data`` and go out through the two write callbacks; ``close`` ends both
    sides (the shim closes the transports).
    """

    def __init__(
        self,
        kind: str,
        session: RelayedSession | None,
        write_client: Callable[[bytes], None],
        write_daemon: Callable[[bytes], None],
        close: Callable[[str | None], None],
        *,
        registry: BuildRegistry,
        decide: Decider,
        policy: Callable[[], Policy],
        peer: PeerInfo,
    ) -> None:
        self.kind = kind
        self.session = session  # for a session tunnel: the ids it goes by
        # the first bytes of each peer until its opening SETTINGS frame is seen
        self._req_opening: bytes | None = b""
        self._resp_opening: bytes | None = b""
        # by side (True: the requester): the client preface still to come, bytes short
        # of a whole frame, and the DATA relayed past h2 not yet reopened (by stream; 0
        # is the connection)
        self._preface = {True: 24, False: 0}
        self._inbuf = {True: bytearray(), False: bytearray()}
        self._relay_owed: dict[bool, dict[int, int]] = {True: {}, False: {}}
        self._out: dict[bool, list[bytes | memoryview]] = {True: [], False: []}
        # The daemon opens the streams of a session; the client those of /grpc.
        self._daemon_requests = kind == TunnelKind.SESSION
        self._write_req, self._write_resp = (
            (write_daemon, write_client) if self._daemon_requests else (write_client, write_daemon)
        )
        self._close_cb = close
        self.registry = registry
        self.decide = decide
        self.policy = policy
        self.peer = peer
        self.closed = False
        # in ``_receive``, which writes what is owed once it is done (``_flush_writes``)
        self.receiving = False
        self.req = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.resp = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.pairs: dict[int, _Pair] = {}  # by requester stream id
        self.by_resp: dict[int, _Pair] = {}  # by responder stream id
        self.tasks: set[asyncio.Task[None]] = set()
        for conn in (self.req, self.resp):
            conn.local_settings = h2.settings.Settings(
                client=conn.config.client_side,
                initial_values={
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                    h2.settings.SettingCodes.ENABLE_PUSH: 0,
                },
            )
            conn.initiate_connection()
            conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush_writes()

    # -- bytes in ------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the build client's side."""
        self._receive(not self._daemon_requests, data)

    def daemon_data(self, data: bytes) -> None:
        """Bytes from the daemon's side."""
        self._receive(self._daemon_requests, data)

    def _receive(self, requester: bool, data: bytes) -> None:
        self.receiving = True
        try:
            self._receive_frames(requester, data)
        finally:
            self.receiving = False

    def _receive_frames(self, requester: bool, data: bytes) -> None:
        """Bytes from one peer: whole frames only reach ``h2``, and the DATA frames of a
        stream that is only relayed skip it (``_relay_data``): most of a build's bytes
        (its context) take that path, at a fraction of ``h2``'s cost per frame."""
        if self.closed:
            return
        opening = self._req_opening if requester else self._resp_opening
        if opening is not None and not self._opening(data, requester=requester):
            return
        if self._preface[requester]:
            n = min(self._preface[requester], len(data))
            self._preface[requester] -= n
            if not self._h2(requester, data[:n]):
                return
            data = data[n:]
        buf = self._inbuf[requester]
        buf += data
        view = memoryview(buf)  # relayed payloads are sliced from it, copied once on write
        conn = self.req if requester else self.resp
        limit = conn.max_inbound_frame_size
        size, pos, slow_from = len(buf), 0, 0
        while size - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > limit:
                side = self._requester_name if requester else self._responder_name
                self.close(f"the {side} sent a frame of {length} bytes (at most {limit})")
                return
            end = pos + 9 + length
            if end > size:
                break
            if buf[pos + 3] == _DATA and not buf[pos + 4] & _END_OR_PADDED:
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                box = self._relay_box(requester, sid, length)
                if box is not None and slow_from < pos:
                    # h2 first takes the frames before this one: they may change the stream
                    if not self._h2(requester, bytes(buf[slow_from:pos])):
                        return
                    slow_from = pos
                    box = self._relay_box(requester, sid, length)
                if box is not None:
                    self._relay_data(requester, sid, box, view[pos + 9 : end])
                    slow_from = end
            pos = end
        if slow_from < pos and not self._h2(requester, bytes(buf[slow_from:pos])):
            return
        self._flush_writes()  # joins the relayed payloads: no slice of ``buf`` is left
        view.release()
        del buf[:pos]

    def _h2(self, requester: bool, data: bytes) -> bool:
        """Feed ``h2`` whole frames of one peer and act on its events; False once closed."""
        conn = self.req if requester else self.resp
        try:
            events = conn.receive_data(data)
        except h2.exceptions.H2Error as e:
            side = self._requester_name if requester else self._responder_name
            self.close(f"malformed HTTP/2 from the {side}: {e}")
            return False
        handle = self._requester_event if requester else self._responder_event
        for event in events:
            if self._ended():
                return False
            handle(event)
        return not self._ended()

    def _relay_box(self, requester: bool, sid: int, length: int) -> _Outbox | None:
        """Where a DATA frame of ``sid`` may go without ``h2``: the other side's stream of
        a pair that is only relayed, open, with nothing queued before it and room in both
        windows for the whole frame. None sends it through ``h2``."""
        pair = (self.pairs if requester else self.by_resp).get(sid)
        if pair is None or pair.closed or pair.hook is not None:
            return None
        box = pair.to_resp if requester else pair.to_req
        if box.sid == 0 or box.chunks or box.end or box.done or box.owed:
            return None
        if not requester and not pair.response_started:
            return None
        dest = self.resp if requester else self.req
        if box.sid not in dest.streams or length > dest.max_outbound_frame_size:
            return None
        if length > dest.local_flow_control_window(box.sid):
            return None
        return box

    def _relay_data(self, requester: bool, sid: int, box: _Outbox, payload: memoryview) -> None:
        """Send one DATA frame on to the other side as it came, under that side's stream
        id, with both sides' flow control kept as ``h2`` would keep it: the other side's
        windows shrink in ``h2``'s books, and this side's are reopened by WINDOW_UPDATEs of
        the shim's own, sent in batches (``_RELAY_ACK``)."""
        dest = self.resp if requester else self.req
        out = self._out[not requester]
        out.append(dest.data_to_send())  # the stream's HEADERS (and anything else) first
        length = len(payload)
        out.append(length.to_bytes(3, "big") + b"\x00\x00" + box.sid.to_bytes(4, "big"))
        out.append(payload)
        dest.outbound_flow_control_window -= length
        dest.streams[box.sid].outbound_flow_control_window -= length
        owed = self._relay_owed[requester]
        owed[sid] = owed.get(sid, 0) + length
        owed[0] = owed.get(0, 0) + length
        if owed[sid] >= _RELAY_ACK or owed[0] >= _RELAY_ACK:
            self._reopen(requester)

    def _reopen(self, requester: bool) -> None:
        """WINDOW_UPDATEs for the DATA this side sent that ``h2`` never saw."""
        owed = self._relay_owed[requester]
        frames = b"".join(
            b"\x00\x00\x04\x08\x00" + sid.to_bytes(4, "big") + n.to_bytes(4, "big")
            for sid, n in owed.items()
            if n and (sid == 0 or sid in (self.pairs if requester else self.by_resp))
        )
        owed.clear()
        if frames:
            conn = self.req if requester else self.resp
            out = self._out[requester]
            out.append(conn.data_to_send())
            out.append(frames)

    def _opening(self, data: bytes, *, requester: bool) -> bool:
        """Each peer must open with its SETTINGS frame (the client after its preface):
        ``h2`` takes other frames first, and a peer sending garbage that parses as frames
        of unknown types would otherwise keep the tunnel open."""
        seen = (self._req_opening if requester else self._resp_opening) or b""
        seen += data[: _OPENING_BYTES[requester] - len(seen)]
        if len(seen) < _OPENING_BYTES[requester]:
            if requester:
                self._req_opening = seen
            else:
                self._resp_opening = seen
            return True
        head = seen[-9:]
        if head[3] != _SETTINGS or head[4] & 0x1:
            side = self._requester_name if requester else self._responder_name
            self.close(f"the {side} did not open its HTTP/2 connection with SETTINGS")
            return False
        if requester:
            self._req_opening = None
        else:
            self._resp_opening = None
        return True

    def _ended(self) -> bool:
        """``closed``, read afresh: an event handler may have closed the tunnel."""
        return self.closed

    @property
    def _requester_name(self) -> str:
        return "daemon" if self.kind == TunnelKind.SESSION else "client"

    @property
    def _responder_name(self) -> str:
        return "client" if self.kind == TunnelKind.SESSION else "daemon"

    def close(self, why: str | None = None) -> None:
        """End the tunnel: both connections go, held bytes are dropped."""
        if self.closed:
            return
        self.closed = True
        if self.session is not None:
            self.registry.close_session(self.session)
        for task in self.tasks:
            task.cancel()
        for pair in list(self.pairs.values()):
            self._forget(pair)
        self._close_cb(why)

    # -- requester events ------------------------------------------------------------

    def _requester_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(
                event.stream_id, list(event.headers or ()), event.stream_ended is not None
            )
        elif isinstance(event, h2.events.DataReceived):
            received = self._received(True, event)
            if received is not None:
                self._request_data(*received)
        elif isinstance(event, h2.events.StreamEnded):
            pair = self.pairs.get(event.stream_id)
            if pair is not None:
                self._request_end(pair)
        elif isinstance(event, h2.events.StreamReset):
            pair = self.pairs.get(event.stream_id)
            if pair is not None:
                if pair.resp_sid is not None:
                    self._reset(self.resp, pair.resp_sid, event.error_code)
                self._forget(pair)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window(self.req, event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close(None)
        elif isinstance(event, h2.events.TrailersReceived):
            pass  # requests carry no trailers in gRPC; StreamEnded follows

    def _received(
        self, requester: bool, event: h2.events.DataReceived
    ) -> tuple[_Pair, bytes] | None:
        """A DATA event's pair and bytes. Padding is acknowledged at once; the bytes of a
        stream that is gone are acknowledged and dropped (None)."""
        conn = self.req if requester else self.resp
        sid = event.stream_id or 0
        data = event.data or b""
        padding = (event.flow_controlled_length or 0) - len(data)
        if padding:
            conn.acknowledge_received_data(padding, sid)
        pair = (self.pairs if requester else self.by_resp).get(sid)
        if pair is None or pair.closed:
            (self._ack_req if requester else self._ack_resp)(sid, len(data))
            return None
        return pair, data

    def _request(self, sid: int, headers: Headers, ended: bool) -> None:
        path = _header(headers, b":path") or b""
        pair = _Pair(sid, path)
        pair.to_resp.ack = lambda n: self._ack_req(sid, n)
        if ended:
            pair.to_resp.end = True
        self.pairs[sid] = pair
        if self.kind == TunnelKind.SESSION and path in (DIFFCOPY, TARSTREAM):
            dir_name = (_header(headers, b"dir-name") or b"").decode("utf-8", "replace")
            builds = self._builds_reading(dir_name)
            if builds is None:
                pass  # not a Dockerfile local: relayed as is
            elif path == TARSTREAM or isinstance(builds, SettingOutcome):
                self._unreadable_sync(pair, headers, dir_name, builds)
                return
            else:
                pair.hook = _DockerfileHook(self, pair, dir_name, builds)
        elif self.kind == TunnelKind.GRPC and path == SESSION:
            pair.hook = hook = _NestedSessionHook(self, pair, headers)
            if pair.closed:
                return
            headers = hook.headers  # the session id the daemon will know
        elif self.kind == TunnelKind.GRPC and path not in RELAYED:
            judge = {
                SOLVE: self._judge_solve,
                GATEWAY_SOLVE: self._judge_gateway_solve,
                RESOLVE_IMAGE: self._judge_resolve,
                RESOLVE_SOURCE: self._judge_resolve,
            }.get(path, self._judge_unknown)
            pair.hook = _UnaryHook(self, pair, headers, judge)
            if ended:
                pair.hook.request_end()
            return
        self._open_responder(pair, headers)

    def _builds_reading(self, dir_name: str) -> list[PendingBuild] | SettingOutcome | None:
        """The builds whose Dockerfile this sync carries; a setting outcome when the
        sync looks like one (the default Dockerfile local) but no build explains it."""
        session = self.session.daemon_id if self.session is not None else ""
        builds = self.registry.reading(session, dir_name)
        if builds:
            return builds
        client_id = self.session.client_id if self.session is not None else ""
        if dir_name == "dockerfile" or self.registry.names_local(dir_name, client_id):
            return builds_setting(
                self.policy(), "a Dockerfile sent over a BuildKit session that no build names"
            )
        return None

    def _open_responder(self, pair: _Pair, headers: Headers) -> None:
        """Open ``pair``'s stream to the responder; what the requester sent meanwhile
        (and its end) follows as the windows allow."""
        sid = self.resp.get_next_available_stream_id()
        pair.resp_sid = sid
        self.by_resp[sid] = pair
        pair.to_resp.sid = sid
        if not isinstance(pair.hook, _DockerfileHook):  # that hook acknowledges itself
            pair.to_req.ack = lambda n: self._ack_resp(sid, n)
        try:
            self.resp.send_headers(sid, headers)
        except h2.exceptions.H2Error as e:
            self.close(f"cannot relay a request: {e}")
            return
        self._drain(self.resp, pair.to_resp)

    def _request_data(self, pair: _Pair, data: bytes) -> None:
        hook = pair.hook
        if isinstance(hook, (_UnaryHook, _NestedSessionHook)):
            hook.request_data(data)
            return
        if isinstance(hook, _DockerfileHook):
            hook.receiver_data(data)
        self._queue(self.resp, pair.to_resp, memoryview(data))

    def _request_end(self, pair: _Pair) -> None:
        hook = pair.hook
        if isinstance(hook, _UnaryHook):
            hook.request_end()
            return
        if isinstance(hook, _NestedSessionHook):
            hook.ending = True
            hook.inner.close(None)
        pair.to_resp.end = True
        self._drain(self.resp, pair.to_resp)

    # -- responder events ------------------------------------------------------------

    def _responder_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            pair = self.by_resp.get(event.stream_id)
            if pair is None or pair.closed:
                return
            pair.response_started = True
            try:
                self.req.send_headers(pair.req_sid, list(event.headers or ()))
            except h2.exceptions.H2Error as e:
                self.close(f"cannot relay a response: {e}")
                return
            if isinstance(pair.hook, _NestedSessionHook):
                pair.hook.response_started()
        elif isinstance(event, h2.events.DataReceived):
            received = self._received(False, event)
            if received is None:
                return
            pair, data = received
            hook = pair.hook
            if isinstance(hook, _NestedSessionHook):
                hook.response_data(data)
                return
            if isinstance(hook, _DockerfileHook):
                # Held bytes are bounded by the sync; relayed ones are acknowledged
                # once they are out, so a slow daemon still slows the client.
                hook.sender_data(data)
                box = pair.to_req
                box.owed += len(data)
                box.owe = lambda n, s=event.stream_id: self._ack_resp(s, n)
                self._pay(box)
                return
            self._queue(self.req, pair.to_req, memoryview(data))
        elif isinstance(event, h2.events.TrailersReceived):
            pair = self.by_resp.get(event.stream_id)
            if pair is None or pair.closed:
                return
            if isinstance(pair.hook, _DockerfileHook):
                pair.hook.sender_end(list(event.headers or ()))
                return
            if isinstance(pair.hook, _NestedSessionHook):
                pair.hook.ending = True
                pair.hook.inner.close(None)
            pair.to_req.trailers = list(event.headers or ())
            pair.to_req.end = True
            self._drain(self.req, pair.to_req)
        elif isinstance(event, h2.events.StreamEnded):
            pair = self.by_resp.get(event.stream_id)
            if pair is None or pair.closed or pair.to_req.end:
                return
            if isinstance(pair.hook, _DockerfileHook):
                pair.hook.sender_end(None)
                return
            if isinstance(pair.hook, _NestedSessionHook):
                pair.hook.ending = True
                pair.hook.inner.close(None)
            pair.to_req.end = True
            self._drain(self.req, pair.to_req)
        elif isinstance(event, h2.events.StreamReset):
            pair = self.by_resp.get(event.stream_id)
            if pair is not None:
                self._reset(self.req, pair.req_sid, event.error_code)
                self._forget(pair)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window(self.resp, event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close(None)

    # -- flow control ----------------------------------------------------------------

    def _queue(self, conn: h2.connection.H2Connection, box: _Outbox, data: memoryview) -> None:
        if data:
            box.chunks.append(data)
        self._drain(conn, box)

    def _pay(self, box: _Outbox) -> None:
        if box.owed and not box.chunks and box.owe is not None:
            owed, box.owed = box.owed, 0
            box.owe(owed)

    def _drain(self, conn: h2.connection.H2Connection, box: _Outbox) -> None:
        """Send what ``box`` holds as far as the peer's windows allow; then its end."""
        if box.done or self.closed or box.sid == 0:
            return
        try:
            while box.chunks:
                window = conn.local_flow_control_window(box.sid)
                if window <= 0:
                    return
                chunk = box.chunks[0]
                size = min(len(chunk), window, conn.max_outbound_frame_size)
                conn.send_data(box.sid, chunk[:size].tobytes() if size < len(chunk) else chunk)
                if size < len(chunk):
                    box.chunks[0] = chunk[size:]
                else:
                    box.chunks.popleft()
                if box.ack is not None:
                    box.ack(size)
            self._pay(box)
            if box.trailers is not None:
                conn.send_headers(box.sid, box.trailers, end_stream=True)
                box.done = True
            elif box.end:
                conn.end_stream(box.sid)
                box.done = True
        except h2.exceptions.StreamClosedError:
            box.done = True
            box.chunks.clear()
        except h2.exceptions.H2Error as e:
            self.close(f"cannot relay a stream: {e}")
            return
        if box.done:
            self._maybe_forget(box)

    def _window(self, conn: h2.connection.H2Connection, sid: int) -> None:
        for pair in list(self.pairs.values()):
            box = pair.to_resp if conn is self.resp else pair.to_req
            if sid in (0, box.sid):
                self._drain(conn, box)

    def _ack_req(self, sid: int, n: int) -> None:
        if n and not self.closed:
            # A stream that is gone no longer has a window to reopen.
            with contextlib.suppress(h2.exceptions.H2Error):
                self.req.acknowledge_received_data(n, sid)

    def _ack_resp(self, sid: int, n: int) -> None:
        if n and not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.resp.acknowledge_received_data(n, sid)

    def _reset(self, conn: h2.connection.H2Connection, sid: int, code: int | None) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):  # already closed
            conn.reset_stream(sid, code if code is not None else h2.errors.ErrorCodes.CANCEL)

    def _maybe_forget(self, box: _Outbox) -> None:
        for pair in (self.pairs.get(box.sid), self.by_resp.get(box.sid)):
            if pair is None:
                continue
            if pair.to_req.done and pair.to_resp.done:
                self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        if pair.closed:
            return
        pair.closed = True
        self.pairs.pop(pair.req_sid, None)
        if pair.resp_sid is not None:
            self.by_resp.pop(pair.resp_sid, None)
        if isinstance(pair.hook, _UnaryHook):
            pair.hook.finished()
        elif isinstance(pair.hook, _NestedSessionHook):
            pair.hook.inner.close(None)

    def _flush_writes(self) -> None:
        """Write what each side is owed, in order: frames relayed past ``h2`` (with what
        ``h2`` had queued before each), then what ``h2`` queued since. One write a side."""
        if self.closed:
            return
        for requester, conn, write in (
            (True, self.req, self._write_req),
            (False, self.resp, self._write_resp),
        ):
            queued = self._out[requester]
            out = conn.data_to_send()
            if queued:
                queued.append(out)
                out = b"".join(queued)
                queued.clear()
            if out:
                write(out)

    # -- answers the shim gives itself ------------------------------------------------

    def fail_request(self, pair: _Pair, code: int, message: str) -> None:
        """End ``pair`` towards the requester with a gRPC error; cancel the responder's.

        A file sync the daemon asked for (``DiffCopy``) first gets the error as the
        client's ``PACKET_ERR`` (``filesync.sender_error``): with a status alone, the
        daemon's receiver sometimes reports its own "context canceled" instead of the
        message. Its status follows a moment later, as the client's side is cancelled.
        """
        if pair.closed or self.closed:
            return
        trailers = [(k.encode(), v.encode()) for k, v in grpc.status_trailers(code, message)]
        head = (
            []
            if pair.response_started
            else [(b":status", b"200"), (b"content-type", b"application/grpc")]
        )
        packet = grpc.frame(sender_error(message)) if self._fails_by_packet(pair) else None
        try:
            if packet is not None and self._room_for(pair.req_sid, len(packet)):
                if head:
                    self.req.send_headers(pair.req_sid, head)
                    head = []
                self.req.send_data(pair.req_sid, packet)
                # The status waits until the daemon has read the packet (it cancels the
                # stream itself once its receive ends; then the status is not sent).
                asyncio.get_running_loop().call_later(
                    CLIENT_RESET_GRACE, self._late_status, pair.req_sid, trailers
                )
            else:
                self.req.send_headers(pair.req_sid, head + trailers, end_stream=True)
        except h2.exceptions.H2Error:
            pass
        if pair.resp_sid is not None:
            if self._daemon_requests:
                # In a session the daemon asked and is told first; the client's side is
                # cancelled a moment later, once the daemon has read why.
                sid = pair.resp_sid
                asyncio.get_running_loop().call_later(CLIENT_RESET_GRACE, self._late_reset, sid)
            else:
                self._reset(self.resp, pair.resp_sid, h2.errors.ErrorCodes.CANCEL)
        self._forget(pair)
        self._flush_writes()

    def _fails_by_packet(self, pair: _Pair) -> bool:
        return self.kind == TunnelKind.SESSION and pair.path == DIFFCOPY

    def _room_for(self, sid: int, size: int) -> bool:
        """Whether ``size`` bytes fit in one DATA frame on the requester's ``sid`` now."""
        try:
            window = self.req.local_flow_control_window(sid)
        except h2.exceptions.H2Error:  # the stream is gone
            return False
        return size <= min(window, self.req.max_outbound_frame_size)

    def _late_status(self, sid: int, trailers: Headers) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):  # the daemon ended it first
            self.req.send_headers(sid, trailers, end_stream=True)
        self._flush_writes()

    def _late_reset(self, sid: int) -> None:
        if self.closed:
            return
        self._reset(self.resp, sid, h2.errors.ErrorCodes.CANCEL)
        self._flush_writes()

    def _unreadable_sync(
        self,
        pair: _Pair,
        headers: Headers,
        dir_name: str,
        outcome: list[PendingBuild] | SettingOutcome,
    ) -> None:
        """A sync of a Dockerfile local the shim cannot read: the ``builds`` setting."""
        if isinstance(outcome, SettingOutcome):
            setting, peer, endpoint = outcome, self.peer, "POST /session"
        else:
            setting = builds_setting(
                self.policy(), f"a Dockerfile sent as a tar stream (local {dir_name!r})"
            )
            peer, endpoint = outcome[0].peer, outcome[0].endpoint
        self._spawn(self._decide_setting(pair, headers, setting, peer, endpoint))

    async def _decide_setting(
        self, pair: _Pair, headers: Headers, setting: SettingOutcome, peer: PeerInfo, ep: str
    ) -> None:
        denial = await self.decide(Inspection(setting=setting), ep, peer)
        if self.closed or pair.closed:
            return
        if denial is not None:
            self.fail_request(pair, grpc.PERMISSION_DENIED, denial)
            return
        self._open_responder(pair, headers)
        self._flush_writes()

    # -- what the /grpc calls that start work are decided by ------------------------

    async def _judge_solve(self, hook: _UnaryHook, payload: bytes) -> str | None:
        """``Control/Solve``: registered (its session's Dockerfile is then tied to it),
        what it names outright decided, and its session ids renamed for the daemon."""
        inputs = from_solve_request(payload)
        names = await self._register(hook, inputs, self.peer, CONTROL_SOLVE_ENDPOINT)
        hook.outgoing = rename_in_solve(payload, names.get)
        return await self._decided(hook)

    async def _judge_gateway_solve(self, hook: _UnaryHook, payload: bytes) -> str | None:
        """``LLBBridge/Solve`` of a build in flight (buildx runs the gateway client-side):
        read like a ``Control/Solve`` of that build's session."""
        parent = self._build_of(hook)
        if parent is None:
            what = "a BuildKit gateway solve that names no build in flight"
            return await self._judge_setting(hook, what)
        inputs = from_gateway_solve(payload, parent.inputs)
        names = await self._register(hook, inputs, self.peer, hook.endpoint)
        hook.outgoing = rename_in_gateway_solve(payload, names.get)
        return await self._decided(hook)

    async def _register(
        self, hook: _UnaryHook, inputs: BuildInputs, peer: PeerInfo, endpoint: str
    ) -> dict[str, str]:
        """Register the build once the sessions it names have started, and start its
        decision (``_decided`` awaits it). Returns the renaming of its session ids,
        fixed now: the daemon must read only the sessions the build was registered on."""
        for client_id in dockerfile_sessions(inputs):
            await self.registry.wait_for_session(client_id, SESSION_WAIT)
        names = {
            client_id: daemon_id
            for client_id in dict.fromkeys((inputs.session, *_local_sessions(inputs)))
            if client_id and (daemon_id := self.registry.daemon_id(client_id)) is not None
        }
        sessions, inspection, every_stage = build_inspection(self.registry, inputs, self.policy())
        if hook.pair.closed:
            return names  # the call went while it waited: nothing to register
        hook.register(PendingBuild(inputs, peer, endpoint, sessions))
        hook.decision = asyncio.ensure_future(
            self.decide(inspection, hook.endpoint, peer, every_stage)
        )
        return names

    async def _decided(self, hook: _UnaryHook) -> str | None:
        if hook.decision is None:
            return "pullgate: the build request went away before it was decided"
        return await hook.decision

    async def _judge_resolve(self, hook: _UnaryHook, payload: bytes) -> str | None:
        """``ResolveImageConfig`` / ``ResolveSourceMeta``: the daemon fetches an image's
        manifest and config for the client; decided as a pull of that image."""
        peer = self.peer  # the caller, whichever build it names
        if hook.path == RESOLVE_IMAGE:
            target, detail = image_of_resolve_config(payload), RESOLVE_CONFIG_DETAIL
            hook.outgoing = rename_in_resolve(payload, self.registry.daemon_id)
        else:
            target, detail = image_of_resolve_source_meta(payload), RESOLVE_SOURCE_DETAIL
        if target.image is None and target.unreadable is None:
            return None  # git, http, local: no image
        inspection = resolve_inspection(
            target.image,
            self.policy(),
            unreadable=target.unreadable,
            detail=detail,
            platform=target.platform,
            force_pull=target.force_pull,
        )
        return await self.decide(inspection, hook.endpoint, peer)

    async def _judge_unknown(self, hook: _UnaryHook, payload: bytes) -> str | None:
        return await self._judge_setting(hook, f"the BuildKit call {hook.path.decode('latin-1')}")

    async def _judge_setting(self, hook: _UnaryHook, what: str) -> str | None:
        setting = builds_setting(self.policy(), what)
        return await self.decide(Inspection(setting=setting), hook.endpoint, self.peer)

    def _build_of(self, hook: _UnaryHook) -> PendingBuild | None:
        """The build a gateway call belongs to (its build-id metadata), if in flight and
        the caller's own."""
        ids = [v for k, v in hook.headers if k == BUILD_ID]
        if len(ids) != 1:
            return None
        return self.registry.by_ref(ids[0].decode("utf-8", "replace"), self.peer.uid)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.close(f"a build decision failed: {t.exception()!r}")

        task.add_done_callback(done)
        return task


def _local_sessions(inputs: BuildInputs) -> list[str]:
    """The session ids of the build's ``local-sessionid:`` attributes."""
    return [v for k, v in inputs.attrs.items() if k.startswith("local-sessionid:")]


def dockerfile_sessions(inputs: BuildInputs) -> list[str]:
    """The sessions (as the client named them) a build may read its Dockerfile from: the
    one ``local-sessionid:`` names, and the build's own, which frontends before BuildKit
    0.9 read it from whatever that attribute says."""
    if not inputs.frontend:
        return []  # raw LLB and gateway forwarding read no Dockerfile
    return [s for s in dict.fromkeys((inputs.dockerfile_session, inputs.session)) if s]


def build_inspection(
    registry: BuildRegistry, inputs: BuildInputs, policy: Policy
) -> tuple[tuple[str, ...], Inspection, Callable[[], Inspection]]:
    """What a build is decided by when it registers, and the ids the daemon knows its
    Dockerfile's sessions by.

    What it names outright (``upfront``); every Dockerfile sync its sessions already
    hold, for the daemon reuses a synced local of the same session rather than ask
    again; and when it reads a Dockerfile from a session the shim does not relay (opened
    on the daemon directly, or announced twice), the ``builds`` setting. The callable
    gives the same with every stage decided (``Shim.decide_build``).
    """
    found = [upfront(inputs, policy)]
    daemon_sessions: list[str] = []
    syncs: list[DockerfileSync] = []
    if not inputs.unreadable:
        for client_id in dockerfile_sessions(inputs):
            daemon_id = registry.daemon_id(client_id)
            if daemon_id is None:
                what = (
                    f"a build whose Dockerfile comes from the session {client_id!r}, "
                    "which is not relayed by Pullgate"
                )
                found.append(Inspection(setting=builds_setting(policy, what)))
                continue
            daemon_sessions.append(daemon_id)
            syncs += registry.remembered(daemon_id, inputs.dockerfile_local)

    def with_syncs(*, all_stages: bool) -> Inspection:
        inspections = list(found)
        for sync in syncs:
            try:
                inspections.append(from_sync(inputs, sync, policy, all_stages=all_stages))
            except InspectionError as e:
                why = e.message.removeprefix("pullgate: ")
                inspections.append(Inspection(setting=builds_setting(policy, why)))
        return merge(inspections)

    return (
        tuple(daemon_sessions),
        with_syncs(all_stages=False),
        functools.partial(with_syncs, all_stages=True),
    )


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class _DockerfileHook:
    """A file sync that carries a pending build's Dockerfile: hold it until decided."""

    def __init__(self, tunnel: Tunnel, pair: _Pair, local: str, builds: list[PendingBuild]) -> None:
        self.tunnel = tunnel
        self.pair = pair
        self.local = local
        self.builds = builds
        paths = sorted({p for b in builds for p in b.inputs.paths})
        self.sync = DockerfileSync(paths, stamp=_stamp(), max_bytes=MAX_DOCKERFILE_BYTES)
        self.from_sender = grpc.MessageReader()
        self.from_receiver = grpc.MessageReader()
        self.held: list[bytes] = []
        self.held_bytes = 0  # every message held counts, not only file data
        self.held_end: tuple[bool, Headers | None] | None = None
        self.state = "reading"  # → deciding → released | failed

    def receiver_data(self, data: bytes) -> None:
        """The daemon's REQ and FIN packets: relayed as they are, but followed."""
        if self.state in ("released", "failed"):
            return
        try:
            for payload in self.from_receiver.feed(data):
                self.sync.receiver_message(payload)
        except (grpc.GrpcFramingError, FileSyncError) as e:
            self.fail(f"pullgate: cannot follow the daemon's side of the Dockerfile sync: {e}")

    def sender_data(self, data: bytes) -> None:
        """The client's packets: stats stamped and relayed, the Dockerfile held."""
        if self.state == "failed":
            return
        try:
            for payload in self.from_sender.feed(data):
                if self.state == "released":
                    framed = grpc.frame(payload)
                    self.tunnel._queue(self.tunnel.req, self.pair.to_req, memoryview(framed))
                    continue
                framed = grpc.frame(self.sync.sender_message(payload))
                if self.sync.sender_error is not None and not self.sync.complete:
                    raise FileSyncError(f"the client gave up: {self.sync.sender_error}")
                if self.sync.data_started or self.held:
                    self.held.append(framed)
                    self.held_bytes += len(framed)
                    if self.held_bytes > MAX_DOCKERFILE_BYTES + _HELD_SLACK:
                        raise FileSyncError(
                            f"more than {MAX_DOCKERFILE_BYTES} bytes held for the Dockerfile"
                        )
                else:
                    self.tunnel._queue(self.tunnel.req, self.pair.to_req, memoryview(framed))
        except (grpc.GrpcFramingError, FileSyncError) as e:
            self.fail(f"pullgate: cannot read the Dockerfile the build client sent: {e}")
            return
        self._maybe_decide()

    def sender_end(self, trailers: Headers | None) -> None:
        if self.state == "released":
            box = self.pair.to_req
            box.trailers, box.end = trailers, True
            self.tunnel._drain(self.tunnel.req, box)
            return
        self.held_end = (True, trailers)
        if self.state == "reading" and not self.sync.complete:
            # The client ended the sync before the Dockerfile was whole: whatever the
            # daemon would make of it, it is not a Dockerfile the shim has read.
            self.fail("pullgate: the build client ended the Dockerfile sync before sending it")

    def _maybe_decide(self) -> None:
        if self.state != "reading" or not self.sync.complete:
            return
        self.state = "deciding"
        # In one step, with no await between: every build now on the session is decided
        # against this sync, and any build that registers later is decided against it
        # when it does (the daemon may reuse this sync for it without asking again).
        tunnel = self.tunnel
        session = tunnel.session.daemon_id if tunnel.session is not None else ""
        now = tunnel.registry.reading(session, self.local)
        self.builds = list({id(b): b for b in [*self.builds, *now]}.values())
        if not tunnel.registry.remember(session, self.local, self.sync):
            self.fail(
                "pullgate: one BuildKit session started more builds than Pullgate follows "
                f"({tunnel.registry.MAX_SYNCS}); start a new session"
            )
            return
        tunnel._spawn(self._decide())

    async def _decide(self) -> None:
        policy = self.tunnel.policy()
        denial: str | None = None
        for build in self.builds:
            inspection = self._inspection(build, policy)
            message = await self.tunnel.decide(
                inspection,
                build.endpoint,
                build.peer,
                functools.partial(self._inspection, build, policy, all_stages=True),
            )
            denial = denial or message
        if self.tunnel.closed or self.pair.closed:
            return
        if denial is not None:
            self.fail(denial)
            return
        self._release()
        self.tunnel._flush_writes()

    def _inspection(
        self, build: PendingBuild, policy: Policy, *, all_stages: bool = False
    ) -> Inspection:
        try:
            return from_sync(build.inputs, self.sync, policy, all_stages=all_stages)
        except InspectionError as e:
            return Inspection(setting=builds_setting(policy, e.message.removeprefix("pullgate: ")))

    def _release(self) -> None:
        self.state = "released"
        box = self.pair.to_req
        for framed in self.held:
            box.chunks.append(memoryview(framed))
        self.held = []
        if self.held_end is not None:
            box.end, box.trailers = True, self.held_end[1]
        self.tunnel._drain(self.tunnel.req, box)

    def fail(self, message: str) -> None:
        self.state = "failed"
        self.held = []
        self.tunnel.fail_request(self.pair, grpc.PERMISSION_DENIED, message)


Judge = Callable[["_UnaryHook", bytes], Awaitable[str | None]]


class _UnaryHook:
    """A unary call that may start work: held whole, judged, then sent to the daemon,
    or answered with the denial. Builds it registers stay registered until it ends."""

    def __init__(self, tunnel: Tunnel, pair: _Pair, headers: Headers, judge: Judge) -> None:
        self.tunnel = tunnel
        self.pair = pair
        self.headers = headers
        self.judge = judge
        self.path = pair.path
        self.endpoint = f"POST /grpc {_method_name(pair.path)}"
        self.body = bytearray()
        self.outgoing: bytes | None = None  # the message as rewritten by the judge
        self.decision: asyncio.Future[str | None] | None = None
        self.task: asyncio.Future[None] | None = None
        self.tokens: list[int] = []
        # bytes counted in the agent-wide budget (registry.held_bytes): the body, and
        # while it is decided the copies decoding makes, until the decision is over
        self.accounted = 0

    def register(self, build: PendingBuild) -> None:
        if self.pair.closed:
            return  # finished already: a token added now would never be removed
        self.tokens.append(self.tunnel.registry.add(build))

    def request_data(self, data: bytes) -> None:
        if self.pair.closed:
            return
        self.body += data
        registry = self.tunnel.registry
        registry.held_bytes += len(data)
        self.accounted += len(data)
        self.tunnel._ack_req(self.pair.req_sid, len(data))
        if len(self.body) > MAX_SOLVE_REQUEST:
            why = f"pullgate: a build request larger than {MAX_SOLVE_REQUEST} bytes"
        elif registry.held_bytes > MAX_HELD_REQUESTS:
            why = (
                f"pullgate: more than {MAX_HELD_REQUESTS} bytes of build requests wait for "
                "a decision; try again"
            )
        else:
            return
        self.tunnel.fail_request(self.pair, grpc.RESOURCE_EXHAUSTED, why)

    def _unaccount(self) -> None:
        self.tunnel.registry.held_bytes -= self.accounted
        self.accounted = 0

    def request_end(self) -> None:
        if self.pair.closed:
            return
        self.task = self.tunnel._spawn(self._decide())

    async def _decide(self) -> None:
        try:
            await self._judged()
        finally:
            self._unaccount()

    async def _judged(self) -> None:
        tunnel = self.tunnel
        try:
            messages = grpc.MessageReader(max_message=MAX_SOLVE_REQUEST).feed(bytes(self.body))
            if len(messages) != 1:
                raise InspectionError(f"pullgate: {self.endpoint} must carry one message")
            denial = await self.judge(self, messages[0])
        except grpc.GrpcFramingError as e:
            tunnel.fail_request(self.pair, grpc.INVALID_ARGUMENT, f"pullgate: {e}")
            return
        except InspectionError as e:
            tunnel.fail_request(self.pair, grpc.INVALID_ARGUMENT, e.message)
            return
        if tunnel.closed or self.pair.closed:
            return
        if denial is not None:
            tunnel.fail_request(self.pair, grpc.PERMISSION_DENIED, denial)
            return
        box = self.pair.to_resp
        box.ack = None  # acknowledged as it arrived
        out = grpc.frame(self.outgoing) if self.outgoing is not None else bytes(self.body)
        box.chunks.append(memoryview(out))
        box.end = True
        self.body = bytearray()
        tunnel._open_responder(self.pair, self.headers)
        tunnel._flush_writes()

    def finished(self) -> None:
        self.body = bytearray()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # its copies go with it; its end releases the budget
        else:
            self._unaccount()
        for token in self.tokens:
            self.tunnel.registry.remove(token)
        self.tokens = []


def _method_name(path: bytes) -> str:
    """``/moby.buildkit.v1.Control/Solve`` → ``Control/Solve``."""
    service, _, method = path.decode("latin-1").lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


#: What each BytesMessage of a nested session carries at most.
_NESTED_CHUNK = 64 * 1024
#: What a nested session may leave waiting for its client before the call is ended.
_NESTED_BACKLOG_BYTES = 4 << 20
_NESTED_BACKLOG_CHUNKS = 4096


class _NestedSessionHook:
    """``Control/Session``: a whole session carried inside one gRPC stream as
    ``BytesMessage`` chunks (how buildx and newer BuildKit clients run sessions). Its
    bytes feed a nested session ``Tunnel``, so its file syncs are read exactly as those
    of ``POST /session``."""

    def __init__(self, tunnel: Tunnel, pair: _Pair, headers: Headers) -> None:
        self.tunnel = tunnel
        self.pair = pair
        self.from_client = grpc.MessageReader()
        self.from_daemon = grpc.MessageReader()
        self.to_client: list[bytes] = []  # until the daemon's response headers are out
        self.started = False
        self.ending = False  # the outer stream ends: so does the nested session, quietly
        ids = [v.decode("utf-8", "replace") for k, v in headers if k == SESSION_ID]
        client_id = ids[0] if len(ids) == 1 else ""
        session = tunnel.registry.open_session(client_id) if client_id else None
        if session is not None:
            renamed = session.daemon_id.encode()
            self.headers = [(k, renamed if k == SESSION_ID else v) for k, v in headers]
        else:
            self.headers = headers
        self.inner = Tunnel(
            TunnelKind.SESSION,
            session,
            self._write_client,
            self._write_daemon,
            self._inner_closed,
            registry=tunnel.registry,
            decide=tunnel.decide,
            policy=tunnel.policy,
            peer=tunnel.peer,
        )
        if session is None:
            why = "pullgate: a BuildKit session names no single session id"
            self.tunnel.fail_request(pair, grpc.INVALID_ARGUMENT, why)

    def _wrap(self, data: bytes) -> list[memoryview]:
        out = []
        for at in range(0, len(data), _NESTED_CHUNK):
            message = BytesMessage(data=data[at : at + _NESTED_CHUNK]).SerializeToString()
            out.append(memoryview(grpc.frame(message)))
        return out

    def _write_daemon(self, data: bytes) -> None:
        box = self.pair.to_resp
        box.chunks.extend(self._wrap(data))
        self.tunnel._drain(self.tunnel.resp, box)
        self._flush_outer()

    def _flush_outer(self) -> None:
        """What the nested tunnel writes outside a read of this connection (a decision
        taken, a timer's status or reset) goes out now: otherwise it waited for the next
        frame on the connection, BuildKit's health check a second later."""
        if not self.tunnel.receiving:
            self.tunnel._flush_writes()

    def _write_client(self, data: bytes) -> None:
        if self.pair.closed:
            return
        if not self.started:
            self.to_client.append(data)
        else:
            box = self.pair.to_req
            box.chunks.extend(self._wrap(data))
            self.tunnel._drain(self.tunnel.req, box)
        # The nested tunnel answers some frames itself (PING, SETTINGS): a client that
        # keeps sending them but never opens its window for the answers is cut off.
        waiting = self.to_client if not self.started else self.pair.to_req.chunks
        if len(waiting) > _NESTED_BACKLOG_CHUNKS or (
            sum(len(c) for c in waiting) > _NESTED_BACKLOG_BYTES
        ):
            self.inner.close("the client does not take its session's answers")
            return
        self._flush_outer()

    def response_started(self) -> None:
        self.started = True
        pending, self.to_client = self.to_client, []
        for data in pending:
            self._write_client(data)

    def _unwrap(self, reader: grpc.MessageReader, data: bytes) -> bytes | None:
        try:
            chunks = []
            for payload in reader.feed(data):
                message = BytesMessage()
                message.ParseFromString(payload)
                chunks.append(message.data)
        except (grpc.GrpcFramingError, DecodeError) as e:
            self.inner.close(f"a nested session message cannot be read: {e}")
            return None
        return b"".join(chunks)

    def request_data(self, data: bytes) -> None:
        """The client's side of the nested session (it serves the file syncs)."""
        inner = self._unwrap(self.from_client, data)
        box = self.pair.to_resp
        box.owed += len(data)
        box.owe = lambda n, s=self.pair.req_sid: self.tunnel._ack_req(s, n)
        if inner:
            self.inner.client_data(inner)
        self.tunnel._pay(box)

    def response_data(self, data: bytes) -> None:
        """The daemon's side of the nested session (it calls the client)."""
        inner = self._unwrap(self.from_daemon, data)
        box = self.pair.to_req
        sid = self.pair.resp_sid
        box.owed += len(data)
        box.owe = lambda n: self.tunnel._ack_resp(sid or 0, n)
        if inner:
            self.inner.daemon_data(inner)
        self.tunnel._pay(box)

    def _inner_closed(self, why: str | None) -> None:
        """The nested session ended: so does the stream that carried it."""
        pair = self.pair
        if pair.closed or self.ending:
            return
        if why is not None:
            self.tunnel.fail_request(pair, grpc.UNAVAILABLE, f"pullgate: {why}")
            return
        if pair.resp_sid is not None:
            self.tunnel._reset(self.tunnel.resp, pair.resp_sid, h2.errors.ErrorCodes.CANCEL)
        self.tunnel._reset(self.tunnel.req, pair.req_sid, h2.errors.ErrorCodes.CANCEL)
        self.tunnel._forget(pair)
        self.tunnel._flush_writes()
