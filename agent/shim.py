"""The Docker socket shim: an HTTP/1.1 proxy in front of dockerd that inspects pulls.

One client connection maps to one upstream connection. Requests are taken one at a time
(Docker clients never pipeline): a request is framed strictly (``http1``), routed as
dockerd routes it (``routes``), inspected (``inspect``) and decided (``decision``); then
it is forwarded, or answered with the 403 of the denial contract. While a request is in
flight the client is not read, so no byte reaches the daemon before the request it
belongs to has been inspected — and an attach or exec that the daemon turns into a raw
stream (``101`` or ``200`` + raw-stream) is spliced only once the daemon has said so.

Bodies stream with backpressure. A tar body (build context, ``docker load``) is scanned
as it passes; the shim stops forwarding as soon as the scanner sees the archive's end
marker and holds the rest back until the decision, so the daemon cannot finish reading
the archive — and so cannot start the build or commit the load — before it is allowed.
A denial then aborts the upstream connection mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast
from urllib.parse import quote

from agent.decision import Verdict, decide
from agent.http1 import (
    MAX_HEAD_BYTES,
    BodyReader,
    ProtocolError,
    RequestHead,
    ResponseHead,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from agent.inspect import (
    MAX_JSON_BODY,
    EventAction,
    Inspection,
    InspectionError,
    LocalImage,
    NeedJson,
    NeedTar,
    TarFindings,
    Wanted,
    inspect_head,
    inspect_json_body,
    local_image_wants,
)
from agent.messages import defuse, denial_message
from agent.peer import PeerInfo, describe_peer, peer_credentials
from agent.policy import Policy
from agent.routes import Endpoint, Route, RouteError, route_request
from agent.sink import DecisionEvent, DecisionSink
from agent.tarscan import TarScanError, TarScanner

__all__ = ["Shim", "ShimConfig"]

_RAW_STREAM_TYPES = (
    "application/vnd.docker.raw-stream",
    "application/vnd.docker.multiplexed-stream",
)
_VERBS = {
    EventAction.CREATE: "running",
    EventAction.LOAD: "loading",
    EventAction.IMPORT: "importing",
    EventAction.SERVICE: "deploying",
}
#: Bytes after a tar's end marker the shim will hold back before refusing the request.
_MAX_HELD_BYTES = 1 << 20


@dataclass(frozen=True)
class ShimConfig:
    listen: Path
    upstream: Path
    socket_mode: int = 0o660
    socket_group: int | None = None


class Shim:
    """The listening socket and what every connection shares."""

    def __init__(
        self,
        config: ShimConfig,
        policy: Callable[[], Policy],
        sink: DecisionSink,
        *,
        audit_gate: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.sink = sink
        # After the decision is recorded: a refusal message when it could not be.
        self.audit_gate = audit_gate
        self.host = socket.gethostname()
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[ClientConnection] = set()

    async def start(self) -> None:
        path = self.config.listen
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: ClientConnection(self), str(path), backlog=1024
        )
        os.chmod(path, self.config.socket_mode)
        if self.config.socket_group is not None:
            os.chown(path, -1, self.config.socket_group)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.config.listen.unlink()


def _remove_stale_socket(path: Path) -> None:
    """Reuse the path of a dead agent's socket; refuse to steal a live one."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise RuntimeError(f"another process is already listening on {path}")
    finally:
        probe.close()


def _credentials(transport: asyncio.BaseTransport) -> tuple[int | None, int | None, int | None]:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None, None, None
    return peer_credentials(sock)


def _json_response(status: int, message: str, *, close: bool) -> bytes:
    reason = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
        502: "Bad Gateway",
        505: "HTTP Version Not Supported",
    }.get(status, "Error")
    body = json.dumps({"message": defuse(message)}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _upstream_error(path: Path, error: OSError) -> str:
    why = {
        errno.ENOENT: "there is no socket at that path",
        errno.ECONNREFUSED: "nothing is listening on it",
        errno.EACCES: "this agent may not open it",
    }.get(error.errno or 0, error.strerror or str(error))
    return (
        f"pullgate: cannot reach the Docker daemon at unix://{path} ({why}). Is dockerd "
        "running? Check the agent's --upstream setting or run `pullgate doctor`."
    )


# --- states ---------------------------------------------------------------------------
_HEAD, _BODY, _BUFFER, _TAR, _DECIDING, _WAIT, _SPLICE, _CLOSED, _DRAIN = range(9)
#: After a refusal, how long and how much of the rest of a request body is read and dropped.
_DRAIN_SECONDS = 30.0
_DRAIN_BYTES = 1 << 30


class UpstreamProtocol(asyncio.Protocol):
    """The daemon side of one client connection; hands everything to its client."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(data)

    def eof_received(self) -> bool:
        return self.client.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(self)

    def pause_writing(self) -> None:
        self.client.pause_client_reading("upstream")

    def resume_writing(self) -> None:
        self.client.resume_client_reading("upstream")


class ClientConnection(asyncio.Protocol):
    """One client connection: frames, inspects and forwards its requests."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.transport: asyncio.Transport | None = None
        self.credentials: tuple[int | None, int | None, int | None] = (None, None, None)
        self._peer: PeerInfo | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.head: RequestHead | None = None
        self.route: Route | None = None
        self.reader: BodyReader | None = None
        # what the request needs before it may go upstream
        self.held: list[bytes] = []  # request bytes not yet forwarded
        self.held_size = 0
        self.payload = bytearray()
        self.tar: TarScanner | None = None
        self.tar_plan: NeedTar | None = None
        self.holding_tail = False
        # upstream
        self.upstream: UpstreamProtocol | None = None
        self.upstream_pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None
        # response side
        self.rbuf = bytearray()
        self.response: ResponseHead | None = None
        self.rreader: BodyReader | None = None
        self.response_until_close = False
        self.request_done = False
        self.response_done = True
        self.close_after_response = False
        self._paused_by: set[str] = set()
        self.client_eof = False
        self.daemon_eof = False
        self.drained = 0
        self.drain_timer: asyncio.TimerHandle | None = None

    # -- client transport -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.credentials = _credentials(transport)
        self.shim.connections.add(self)

    @property
    def peer(self) -> PeerInfo:
        """The client process, looked up once and only when a decision needs it."""
        if self._peer is None:
            self._peer = describe_peer(*self.credentials)
        return self._peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        self.shim.connections.discard(self)
        self._close_upstream()

    def data_received(self, data: bytes) -> None:
        if self.state == _SPLICE:
            self._to_upstream(data)
            return
        if self.state == _DRAIN:
            self.drained += len(data)
            if self.drained > _DRAIN_BYTES:
                self._end_drain()
            return
        if not self.buf and self.state in (_BODY, _TAR):
            # Fast path for body bytes (load, build contexts, stdin): no copies.
            try:
                n = self._body_bytes(data)
            except ProtocolError as e:
                self._refuse(e.status, f"pullgate: {e.message}")
                return
            except InspectionError as e:
                self._refuse(e.status, e.message)
                return
            except TarScanError as e:
                self._refuse(400, f"pullgate: cannot inspect the {self._tar_what()}: {e}")
                return
            if n == len(data):
                return
            data = data[n:]
        self.buf += data
        self._process()

    def _body_bytes(self, data: bytes) -> int:
        """Pass or scan body bytes straight from a read; returns how many belonged to it."""
        reader = self.reader
        assert reader is not None
        with memoryview(data) as view:
            n, pieces = reader.feed(view)
            if self.state == _TAR:
                assert self.tar is not None
                for piece in pieces:
                    self.tar.feed(piece)
            del pieces
        raw = data if n == len(data) else data[:n]
        if self.state == _BODY:
            if n:
                self._to_upstream(raw)
            if reader.done:
                self._request_complete()
        else:
            self._tar_forward(raw)
        return n

    def eof_received(self) -> bool:
        if self.state == _DRAIN:
            self._end_drain()
            return False
        if self.state == _SPLICE and self.upstream and self.upstream.transport:
            self.client_eof = True
            if self.daemon_eof:
                self._close_both()
                return False
            if self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
            return True
        if self.state in (_WAIT, _DECIDING) and not self.buf:
            # Half-closed after sending its request: it is still owed the response.
            self.close_after_response = True
            return True
        self.abort()
        return False

    def pause_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.resume_reading()

    def pause_client_reading(self, why: str) -> None:
        if not self._paused_by and self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused_by.add(why)

    def resume_client_reading(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self.transport and not self.transport.is_closing():
            self.transport.resume_reading()

    def _close_both(self) -> None:
        """Both directions of a spliced stream ended: flush and close both sides."""
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.close()
        self._close_upstream()

    def abort(self) -> None:
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.abort()
        self._close_upstream(abort=True)

    # -- requests ---------------------------------------------------------------------

    def _process(self) -> None:
        """Advance the request side as far as the buffered bytes allow."""
        try:
            while self.buf and self.state not in (_WAIT, _DECIDING, _CLOSED, _SPLICE, _DRAIN):
                if self.state == _HEAD:
                    if not self._start_request():
                        return
                elif self.state == _BODY:
                    self._pass_body()
                elif self.state == _BUFFER:
                    self._buffer_body()
                elif self.state == _TAR:
                    self._tar_body()
        except ProtocolError as e:
            self._refuse(e.status, f"pullgate: {e.message}")
        except (InspectionError, RouteError) as e:
            self._refuse(
                e.status,
                e.message if e.message.startswith("pullgate:") else f"pullgate: {e.message}",
            )
        except TarScanError as e:
            self._refuse(400, f"pullgate: cannot inspect the {self._tar_what()}: {e}")

    def _tar_what(self) -> str:
        return self.tar_plan.what if self.tar_plan else "archive"

    def _start_request(self) -> bool:
        end = find_head_end(self.buf)
        if end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise ProtocolError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            return False
        head = parse_request_head(bytes(self.buf[:end]))
        del self.buf[:end]
        route = route_request(head.target)
        self.head, self.route = head, route
        self.request_done = False
        self.held, self.held_size = [], 0
        self.close_after_response = not head.keep_alive
        reader = BodyReader(head.content_length, head.chunked)
        self.reader = reader
        if not route.inspected:
            self._begin_forward(head)
            self.state = _BODY
            if reader.done:
                self._request_complete()
            return True
        plan = inspect_head(route, head, self.shim.policy())
        if isinstance(plan, Inspection):
            if self._apply(plan):
                self._begin_forward(head)
                self.state = _BODY
                if reader.done:
                    self._request_complete()
            return True
        if isinstance(plan, NeedJson):
            reader.want_payload = True
            self.payload = bytearray()
            self.held = [head.raw]
            self.state = _BUFFER
            if reader.done:
                self._json_ready()
            return True
        # NeedTar: the head goes now; the body streams through the scanner.
        reader.want_payload = True
        self.tar = TarScanner(plan.wanted)
        self.tar_plan = plan
        self.holding_tail = False
        self._begin_forward(head)
        self.state = _TAR
        if reader.done:
            self._tar_ready()
        return True

    def _begin_forward(self, head: RequestHead) -> None:
        self.response_done = False
        self.response = None
        self.rreader = None
        self._to_upstream(head.raw)

    def _pass_body(self) -> None:
        assert self.reader is not None
        n, _ = self.reader.feed(memoryview(self.buf))
        if n:
            self._to_upstream(bytes(self.buf[:n]))
            del self.buf[:n]
        if self.reader.done:
            self._request_complete()

    def _request_complete(self) -> None:
        """The whole request went upstream; wait for its response before reading on."""
        self.request_done = True
        self.state = _WAIT
        self.pause_client_reading("request")

    def _take_body(self) -> tuple[bytes, bytes]:
        """Consume this request's bytes from ``buf``: (raw bytes, payload without framing)."""
        assert self.reader is not None
        with memoryview(self.buf) as view:
            n, pieces = self.reader.feed(view)
            payload = b"".join(pieces)
            del pieces
        raw = bytes(self.buf[:n])
        del self.buf[:n]
        return raw, payload

    def _buffer_body(self) -> None:
        assert self.reader is not None
        raw, payload = self._take_body()
        self.payload += payload
        if raw:
            self.held.append(raw)
        if len(self.payload) > MAX_JSON_BODY:
            raise InspectionError(f"pullgate: request body larger than {MAX_JSON_BODY} bytes")
        if self.reader.done:
            self._json_ready()

    def _json_ready(self) -> None:
        assert self.route is not None
        inspection = inspect_json_body(self.route, bytes(self.payload))
        self.payload = bytearray()
        if inspection.lookups:
            self.state = _DECIDING
            self.pause_client_reading("deciding")
            asyncio.get_running_loop().create_task(self._lookup_then_decide(inspection))
            return
        self._finish_buffered(inspection)

    async def _lookup_then_decide(self, inspection: Inspection) -> None:
        wants = list(inspection.wants)
        try:
            for name in inspection.lookups:
                image = await self._inspect_local_image(name)
                if image is not None:
                    by_id = not any(w.input == name for w in inspection.wants)
                    wants += local_image_wants(name, image, by_id)
        except OSError as e:
            self._refuse(502, _upstream_error(self.shim.config.upstream, e))
            return
        if self.state == _CLOSED:
            return
        self.state = _BUFFER
        self.resume_client_reading("deciding")
        self._finish_buffered(Inspection(wants=tuple(wants), setting=inspection.setting))
        self._process()

    def _finish_buffered(self, inspection: Inspection) -> None:
        assert self.head is not None
        if not self._apply(inspection):
            return
        self.response_done = False
        self.response = None
        self.rreader = None
        for chunk in self.held:
            self._to_upstream(chunk)
        self.held = []
        self._request_complete()

    async def _inspect_local_image(self, name: str) -> LocalImage | None:
        """Ask the daemon what it has under ``name`` (None: it has nothing)."""
        reader, writer = await asyncio.open_unix_connection(str(self.shim.config.upstream))
        try:
            path = "/images/" + quote(name, safe="/:@") + "/json"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode(
                    "latin-1"
                )
            )
            raw = await asyncio.wait_for(reader.read(-1), timeout=30)
        finally:
            writer.close()
        head_end = raw.find(b"\r\n\r\n")
        status_line = raw[: raw.find(b"\r\n")].split()
        status = int(status_line[1]) if len(status_line) > 1 else 0
        if status == 404:
            return None
        body = raw[head_end + 4 :]
        if b"transfer-encoding: chunked" in raw[:head_end].lower():
            body = _dechunk(body)
        if status != 200:
            raise InspectionError(
                f"pullgate: the daemon could not describe image {name!r} (HTTP {status})", 502
            )
        info = json.loads(body)
        return LocalImage(list(info.get("RepoTags") or []), list(info.get("RepoDigests") or []))

    def _tar_body(self) -> None:
        assert self.reader is not None and self.tar is not None
        raw, payload = self._take_body()
        if raw:
            self.tar.feed(payload)
        self._tar_forward(raw)

    def _tar_forward(self, raw: bytes) -> None:
        """Forward scanned tar body bytes, or hold them once the archive may be ending."""
        assert self.reader is not None and self.tar is not None
        if raw:
            if not self.holding_tail and self.tar.end_started:
                self.holding_tail = True
            if self.holding_tail or self.reader.done:
                self.held.append(raw)
                self.held_size += len(raw)
                if self.held_size > _MAX_HELD_BYTES:
                    raise InspectionError(
                        f"pullgate: more than {_MAX_HELD_BYTES} bytes after the end of the "
                        f"{self._tar_what()}"
                    )
            else:
                self._to_upstream(raw)
        if self.reader.done:
            self._tar_ready()

    def _tar_ready(self) -> None:
        assert self.tar is not None and self.tar_plan is not None
        self.tar.finish()
        found = TarFindings(
            final={name: m.data for name, m in self.tar.members().items()},
            every=[(m.name, m.data) for m in self.tar.all_members()],
            links={**self.tar.symlinks(), **self.tar.hardlinks()},
        )
        inspection = self.tar_plan.finish(found)
        self.tar = None
        if not self._apply(inspection, abort_upstream=True):
            return
        for chunk in self.held:
            self._to_upstream(chunk)
        self.held, self.held_size = [], 0
        self._request_complete()

    # -- decisions --------------------------------------------------------------------

    def _apply(self, inspection: Inspection, *, abort_upstream: bool = False) -> bool:
        """Decide an inspection; on a denial answer 403 and return False."""
        assert self.head is not None and self.route is not None
        policy = self.shim.policy()
        now = datetime.now(UTC)
        endpoint = f"{self.head.method} {self.route.path}"
        denial: str | None = None
        setting = inspection.setting
        if setting is not None:
            verdict = "allow" if setting.allowed else "deny"
            message = None
            if not setting.allowed:
                message = f"pullgate: {setting.reason}."
                if setting.hint:
                    message += f" Instead, {setting.hint}."
                denial = message
            self.shim.sink.emit(
                DecisionEvent(
                    action=str(setting.action),
                    decision=verdict,
                    image=None,
                    input=None,
                    category=None,
                    rule=setting.setting,
                    reason=setting.reason,
                    policy=policy.label,
                    policy_serial=policy.serial,
                    endpoint=endpoint,
                    message=message,
                    peer=self.peer,
                )
            )
        for want in inspection.wants:
            message = self._decide_one(policy, want, now, endpoint)
            if message is not None and denial is None:
                denial = message
        if denial is None and (inspection.wants or setting) and self.shim.audit_gate:
            denial = self.shim.audit_gate()
        if denial is None:
            return True
        if abort_upstream:
            # The daemon has the head and part of the body: cut it off mid-body so it
            # never sees a complete request.
            self._close_upstream(abort=True)
            self.response_done = True
        self._refuse(403, denial, log=False)
        return False

    def _decide_one(self, policy: Policy, want: Wanted, now: datetime, endpoint: str) -> str | None:
        d = decide(
            policy,
            want.reference,
            now=now,
            host=self.shim.host,
            all_tags=want.all_tags,
        )
        message = None
        if d.verdict is not Verdict.ALLOW:
            context = "all tags" if want.all_tags else want.detail
            message = denial_message(d, context, verb=_VERBS.get(want.action, "pulling"))
        self.shim.sink.emit(
            DecisionEvent(
                action=str(want.action),
                decision=str(d.verdict),
                image=d.canonical if not want.all_tags else f"{d.reference.name} (all tags)",
                input=want.input,
                category=str(d.category),
                rule=d.rule,
                reason=d.reason,
                policy=d.policy,
                policy_serial=d.policy_serial,
                endpoint=endpoint,
                message=message,
                detail=want.detail,
                peer=self.peer,
            )
        )
        return message if d.verdict is Verdict.DENY else None

    def _refuse(self, status: int, message: str, *, log: bool = True) -> None:
        """Answer locally and close: the rest of this request is never forwarded."""
        if self.state == _CLOSED or self.transport is None:
            return
        if log:
            print(f"pullgate: refused a request: {message}", file=sys.stderr)
        if not self.response_done:
            # Part of this request already went upstream (a tar body): drop that side.
            self._close_upstream(abort=True)
        self._close_upstream()
        self.transport.write(_json_response(status, message, close=True))
        if self.reader is not None and self.reader.done and not self.buf:
            self.state = _CLOSED
            self.transport.close()
            return
        # The client may still be sending the body. Closing now would reset the
        # connection under it, and it would report "broken pipe" instead of our message:
        # end our side, then read and discard until it stops (bounded in bytes and time).
        self.state = _DRAIN
        self.drained = len(self.buf)
        self.buf.clear()
        self.resume_client_reading("request")
        self.resume_client_reading("deciding")
        if self.transport.can_write_eof():
            self.transport.write_eof()
        loop = asyncio.get_running_loop()
        self.drain_timer = loop.call_later(_DRAIN_SECONDS, self._end_drain)

    def _end_drain(self) -> None:
        self.state = _CLOSED
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if self.transport is not None:
            self.transport.close()

    # -- upstream ---------------------------------------------------------------------

    def _to_upstream(self, data: bytes) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.transport.is_closing():
            up.transport.write(data)
            return
        self.upstream_pending.append(data)
        if self.connecting is None and (
            up is None or up.transport is None or up.transport.is_closing()
        ):
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.shim.config.upstream
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: UpstreamProtocol(self), str(path)
            )
        except OSError as e:
            self.connecting = None
            self.upstream_pending = []
            self.response_done = True
            self._refuse(502, _upstream_error(path, e))
            return
        self.connecting = None
        if self.state == _CLOSED:
            assert protocol.transport is not None
            protocol.transport.close()
            return
        self.upstream = protocol
        assert protocol.transport is not None
        pending, self.upstream_pending = self.upstream_pending, []
        protocol.transport.writelines(pending)

    def _close_upstream(self, *, abort: bool = False) -> None:
        up = self.upstream
        self.upstream = None
        self.upstream_pending = []
        if up is not None and up.transport is not None:
            if abort:
                up.transport.abort()
            else:
                up.transport.close()

    def upstream_lost(self, up: UpstreamProtocol) -> None:
        if up is not self.upstream:
            return
        self.upstream = None
        if self.state == _CLOSED or self.transport is None:
            return
        if self.response_done and self.state == _HEAD and not self.buf:
            return  # idle keep-alive connection closed by the daemon; reconnect on demand
        self.transport.close()
        self.state = _CLOSED

    def upstream_eof(self) -> bool:
        if self.state == _SPLICE:
            self.daemon_eof = True
            if self.client_eof:
                self._close_both()
                return False
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
            return True
        if self.response_until_close and self.transport is not None:
            self.transport.close()
            self.state = _CLOSED
        return False

    # -- responses --------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.state in (_CLOSED, _DRAIN):
            return
        if self.state == _SPLICE or self.response_until_close:
            transport.write(data)
            return
        if self.response_done:
            # The daemon spoke out of turn (no request in flight): stop trusting framing.
            self.abort()
            return
        reader = self.rreader
        if not self.rbuf and reader is not None and not reader.done:
            # Fast path for body bytes (save, pull progress, logs): no copies.
            try:
                n, _ = reader.feed(memoryview(data))
            except ProtocolError as e:
                print(f"pullgate: bad response from the daemon: {e.message}", file=sys.stderr)
                self.abort()
                return
            transport.write(data if n == len(data) else data[:n])
            if n == len(data):
                if self._response_body_done():
                    self._response_complete()
                return
            data = data[n:]
        self.rbuf += data
        try:
            self._process_response()
        except ProtocolError as e:
            print(f"pullgate: bad response from the daemon: {e.message}", file=sys.stderr)
            self.abort()

    def _response_body_done(self) -> bool:
        return self.rreader is not None and self.rreader.done

    def _process_response(self) -> None:
        transport = self.transport
        assert transport is not None and self.head is not None
        while self.rbuf and not self.response_done:
            if self.response is None:
                end = find_head_end(self.rbuf)
                if end < 0:
                    if len(self.rbuf) > MAX_HEAD_BYTES:
                        raise ProtocolError(502, "response head from the daemon is too large")
                    return
                raw = bytes(self.rbuf[:end])
                del self.rbuf[:end]
                response = parse_response_head(raw, self.head.method)
                transport.write(raw)
                if 100 <= response.status < 200 and response.status != 101:
                    continue  # interim (100 Continue): the final response follows
                if self._is_upgrade(response):
                    self._splice()
                    return
                self.response = response
                if response.until_close:
                    self.response_until_close = True
                    self.close_after_response = True
                    if self.rbuf:
                        transport.write(bytes(self.rbuf))
                        self.rbuf.clear()
                    return
                self.rreader = BodyReader(response.content_length, response.chunked)
                if response.no_body:
                    self.rreader.done = True
                if not response.keep_alive:
                    self.close_after_response = True
            assert self.rreader is not None
            if not self.rreader.done:
                n, _ = self.rreader.feed(memoryview(self.rbuf))
                if n:
                    transport.write(bytes(self.rbuf[:n]))
                    del self.rbuf[:n]
            if self.rreader.done:
                self._response_complete()
        if self.response is not None and self.rreader is not None and self.rreader.done:
            self._response_complete()

    def _is_upgrade(self, response: ResponseHead) -> bool:
        if response.status == 101:
            return True
        if self.route is None or self.route.endpoint is not Endpoint.HIJACK:
            return False
        content_type = (response.get("content-type") or "").split(";")[0].strip().lower()
        return response.status == 200 and content_type in _RAW_STREAM_TYPES

    def _splice(self) -> None:
        """From now on bytes flow both ways untouched (attach, exec, BuildKit)."""
        transport = self.transport
        assert transport is not None
        self.state = _SPLICE
        self.response_done = True
        if self.rbuf:
            transport.write(bytes(self.rbuf))
            self.rbuf.clear()
        if self.buf:
            self._to_upstream(bytes(self.buf))
            self.buf.clear()
        self._paused_by.discard("request")
        self.resume_client_reading("splice")

    def _response_complete(self) -> None:
        if self.response_done:
            return
        self.response_done = True
        self.response = None
        self.rreader = None
        if self.rbuf:
            # The daemon sent more than one response: we cannot tell whose it is.
            self.abort()
            return
        if self.close_after_response or not self.request_done:
            if self.transport is not None:
                self.transport.close()
            self.state = _CLOSED
            self._close_upstream()
            return
        self.state = _HEAD
        self.resume_client_reading("request")
        if self.buf:
            self._process()


def _dechunk(body: bytes) -> bytes:
    reader = BodyReader(None, True, want_payload=True)
    _, pieces = reader.feed(memoryview(body))
    return b"".join(bytes(p) for p in pieces)


def shim_policy_holder(policy: Policy) -> Callable[[], Policy]:
    """A fixed policy (the refresher of a signed org policy swaps this later)."""

    def current() -> Policy:
        return policy

    return current
