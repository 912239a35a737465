"""Strict HTTP/1.1 message framing for the socket shim, without sockets (sans-IO).

The shim forwards bytes it has parsed, so the daemon must read them exactly as we did:
any message two parsers could frame differently (request smuggling) is refused here.
Heads are parsed by llhttp (``httptools``) with its strict defaults — it already refuses
``Content-Length`` with ``Transfer-Encoding``, duplicate lengths, obs-fold, bare CR and
bare LF — and then checked further for what Go's ``net/http`` (dockerd) would read
differently: absolute-form targets, ``Transfer-Encoding`` other than one ``chunked``,
``Transfer-Encoding`` in HTTP/1.0. Bodies are framed here (``BodyReader``) so that the
caller knows exactly where a message ends and where the next one, or an upgraded stream,
begins — something llhttp's callbacks do not tell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import httptools

__all__ = [
    "MAX_HEAD_BYTES",
    "BodyReader",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "find_head_end",
    "parse_request_head",
    "parse_response_head",
]

MAX_HEAD_BYTES: Final = 64 * 1024
_MAX_CHUNK_LINE: Final = 4096
_MAX_TRAILER_BYTES: Final = 16 * 1024

_METHOD_RE = re.compile(rb"[A-Z]{1,20}")
_CHUNK_SIZE_RE = re.compile(rb"([0-9a-fA-F]{1,15})(?:;[\t\x20-\x7e]*)?")
_TRAILER_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*")


class ProtocolError(Exception):
    """A message that cannot be framed unambiguously. ``status`` is the reply to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Collector:
    """llhttp callbacks for one head: collects the target and headers."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


@dataclass(frozen=True, slots=True)
class _Head:
    headers: tuple[tuple[str, str], ...]
    raw: bytes
    version: str

    def get(self, name: str) -> str | None:
        """The only value of header ``name`` (lower-case), None if absent.

        Raises ProtocolError when it is present more than once: which copy a server
        reads is exactly the kind of ambiguity smuggling lives on.
        """
        found = None
        for key, value in self.headers:
            if key == name:
                if found is not None:
                    raise ProtocolError(400, f"duplicate {name} header")
                found = value
        return found

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (``Connection``) lists ``token``."""
        for key, value in self.headers:
            if key == name and any(t.strip().lower() == token for t in value.split(",")):
                return True
        return False


@dataclass(frozen=True, slots=True)
class RequestHead(_Head):
    method: str = ""
    target: str = ""
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    upgrade: str | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(frozen=True, slots=True)
class ResponseHead(_Head):
    status: int = 0
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    no_body: bool = False

    @property
    def until_close(self) -> bool:
        """No framing: the body runs until the connection closes (or is a raw stream)."""
        return not self.no_body and not self.chunked and self.content_length is None


_BARE_LF_RE = re.compile(rb"(?<!\r)\n")


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line that ends a head, or -1 if not there yet.

    A bare LF anywhere in an unfinished head is refused at once: a lenient server would
    read ``\n\n`` as the end of the head, and waiting for ``\r\n\r\n`` would hang.
    """
    i = buf.find(b"\r\n\r\n", max(0, start - 3))
    if i >= 0:
        return i + 4
    if _BARE_LF_RE.search(buf):
        raise ProtocolError(400, "malformed request: bare LF line ending")
    return -1


def _decode_headers(pairs: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t"))
        for name, value in pairs
    )


def _framing(head: _Head, *, request: bool) -> tuple[int | None, bool]:
    te = head.get("transfer-encoding")
    cl = head.get("content-length")
    if te is not None:
        if cl is not None:
            raise ProtocolError(400, "Content-Length together with Transfer-Encoding")
        if te.lower() != "chunked":
            raise ProtocolError(
                501 if request else 502, f"unsupported Transfer-Encoding {te!r} (only chunked)"
            )
        if head.version != "1.1":
            raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 message")
        return None, True
    if cl is not None:
        if not cl.isascii() or not cl.isdigit() or len(cl) > 18:
            raise ProtocolError(400, f"invalid Content-Length {cl!r}")
        return int(cl), False
    return None, False


_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade"})


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse and check one request head (``raw`` ends with the blank line).

    This runs for every request through the shim, so it touches only the headers that
    decide framing; the rest are decoded once, cheaply, for ``get``.
    """
    if len(raw) > MAX_HEAD_BYTES:
        raise ProtocolError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; what follows belongs to the upgraded protocol
    except httptools.HttpParserError as e:
        raise ProtocolError(400, f"malformed request: {e}") from e
    if not collector.done:
        raise ProtocolError(400, "malformed request: incomplete head")
    method = parser.get_method()
    if not _METHOD_RE.fullmatch(method):
        raise ProtocolError(400, f"unsupported method {method.decode('latin-1')!r}")
    url = collector.url
    if not url.startswith(b"/"):
        raise ProtocolError(400, "request target must be a path (origin-form)")
    if not url.isascii():
        raise ProtocolError(400, "request target is not ASCII")
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise ProtocolError(505, f"unsupported HTTP version {version}")
    framing: dict[bytes, list[bytes]] = {}
    for name, value in collector.headers:
        key = name.lower()
        if key in _FRAMING_HEADERS:
            framing.setdefault(key, []).append(value.strip(b" \t"))
    content_length, chunked = _request_framing(framing, version)
    connection = b",".join(framing.get(b"connection", ())).lower()
    tokens = {t.strip() for t in connection.split(b",")} if connection else set()
    upgrade = None
    if b"upgrade" in tokens:
        values = framing.get(b"upgrade", [])
        if len(values) > 1:
            raise ProtocolError(400, "duplicate upgrade header")
        upgrade = values[0].decode("latin-1") if values else None
    keep_alive = b"close" not in tokens if version == "1.1" else b"keep-alive" in tokens
    return RequestHead(
        _decode_headers(collector.headers),
        raw,
        version,
        method=method.decode("ascii"),
        target=url.decode("ascii"),
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        upgrade=upgrade,
    )


def _request_framing(framing: dict[bytes, list[bytes]], version: str) -> tuple[int | None, bool]:
    te = framing.get(b"transfer-encoding")
    cl = framing.get(b"content-length")
    if te is not None:
        if len(te) > 1:
            raise ProtocolError(400, "duplicate transfer-encoding header")
        if cl is not None:
            raise ProtocolError(400, "Content-Length together with Transfer-Encoding")
        if te[0].lower() != b"chunked":
            raise ProtocolError(501, f"unsupported Transfer-Encoding {te[0]!r} (only chunked)")
        if version != "1.1":
            raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 message")
        return None, True
    if cl is not None:
        if len(cl) > 1:
            raise ProtocolError(400, "duplicate content-length header")
        value = cl[0]
        if not value.isdigit() or len(value) > 18:
            raise ProtocolError(400, f"invalid Content-Length {value!r}")
        return int(value), False
    return None, False


class _ResponseCollector(_Collector):
    __slots__ = ()


def parse_response_head(raw: bytes, request_method: str) -> ResponseHead:
    """Parse one response head from the daemon."""
    if len(raw) > MAX_HEAD_BYTES:
        raise ProtocolError(502, "response head from the daemon is too large")
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        raise ProtocolError(502, f"malformed response from the daemon: {e}") from e
    if not collector.done:
        raise ProtocolError(502, "malformed response from the daemon: incomplete head")
    status = parser.get_status_code()
    version = parser.get_http_version()
    base = _Head(_decode_headers(collector.headers), raw, version)
    no_body = request_method == "HEAD" or status in (204, 304) or 100 <= status < 200
    content_length, chunked = (None, False) if no_body else _framing(base, request=False)
    if version == "1.1":
        keep_alive = not base.has_token("connection", "close")
    else:
        keep_alive = base.has_token("connection", "keep-alive")
    return ResponseHead(
        base.headers,
        raw,
        version,
        status=status,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        no_body=no_body,
    )


# --- bodies ---------------------------------------------------------------------------

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


@dataclass
class BodyReader:
    """Frames one message body: ``feed`` says how many bytes belong to it.

    ``payload`` pieces (the body without chunk framing) are returned only when
    ``want_payload`` is set, so pass-through traffic costs a counter update.
    """

    content_length: int | None = None
    chunked: bool = False
    want_payload: bool = False
    remaining: int = 0
    done: bool = False
    _state: int = _SIZE
    _line: bytearray = field(default_factory=bytearray)
    _trailer_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.chunked:
            self.remaining = self.content_length or 0
            self.done = self.remaining == 0

    def feed(self, data: memoryview) -> tuple[int, list[memoryview]]:
        """Consume the body's bytes from the start of ``data``.

        Returns how many bytes of ``data`` belong to this body (forward them as they
        are) and, if wanted, the payload pieces among them.
        """
        if self.done:
            return 0, []
        if not self.chunked:
            n = min(self.remaining, len(data))
            self.remaining -= n
            self.done = self.remaining == 0
            return n, [data[:n]] if self.want_payload and n else []
        return self._feed_chunked(data)

    def _feed_chunked(self, data: memoryview) -> tuple[int, list[memoryview]]:
        pos = 0
        end = len(data)
        payload: list[memoryview] = []
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                n = min(self.remaining, end - pos)
                if self.want_payload:
                    payload.append(data[pos : pos + n])
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                self._line.append(data[pos])
                pos += 1
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise ProtocolError(400, "malformed chunked body: missing CRLF after data")
                    self._line.clear()
                    self._state = _SIZE
            else:
                pos = self._feed_line(data, pos, end)
        return pos, payload

    def _feed_line(self, data: memoryview, pos: int, end: int) -> int:
        """Accumulate a chunk-size or trailer line; act on it once complete."""
        chunk = bytes(data[pos : min(end, pos + _MAX_CHUNK_LINE)])
        lf = chunk.find(b"\n")
        take = len(chunk) if lf < 0 else lf + 1
        self._line += chunk[:take]
        pos += take
        if lf < 0:
            if len(self._line) > _MAX_CHUNK_LINE:
                raise ProtocolError(400, "malformed chunked body: line too long")
            return pos
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise ProtocolError(400, "malformed chunked body: bare LF or CR")
        line = line[:-2]
        if self._state == _SIZE:
            m = _CHUNK_SIZE_RE.fullmatch(line)
            if m is None:
                raise ProtocolError(400, f"malformed chunk size line {line[:40]!r}")
            size = int(m.group(1), 16)
            if size:
                self.remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILER
            return pos
        # trailer section: header lines until an empty one
        if not line:
            self.done = True
            self._state = _DONE
            return pos
        self._trailer_bytes += len(line)
        if self._trailer_bytes > _MAX_TRAILER_BYTES or not _TRAILER_RE.fullmatch(line):
            raise ProtocolError(400, "malformed chunked trailer")
        return pos
