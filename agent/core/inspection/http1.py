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
from typing import Final

import httptools

__all__ = [
    "MAX_HEAD_BYTES",
    "BodyReader",
    "ProtocolError",
    "RequestHead",
    "find_head_end",
    "parse_request_head",
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


class RequestHead:
    """One parsed request head. ``raw`` is forwarded to the daemon byte for byte.

    Every request through the shim builds one, and most are never looked at again, so
    the headers stay as llhttp handed them over until something asks (``headers``).
    """

    __slots__ = (
        "_pairs",
        "chunked",
        "content_length",
        "keep_alive",
        "method",
        "raw",
        "target",
        "upgrade",
        "version",
    )

    def __init__(  # noqa: PLR0917 - one field each, built in one place only
        self,
        pairs: list[tuple[bytes, bytes]],
        raw: bytes,
        version: str,
        method: str,
        target: str,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        upgrade: str | None,
    ) -> None:
        self._pairs = pairs
        self.raw = raw
        self.version = version
        self.method = method
        self.target = target
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """(lower-case name, value without surrounding blanks), in order."""
        return tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t"))
            for name, value in self._pairs
        )

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

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


#: The first line of an HTTP/2 client's connection preface (RFC 9113 section 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n"
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade"})
#: Methods dockerd serves, decoded once; any other is still checked by _METHOD_RE.
_METHODS = {m: m.decode("ascii") for m in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD")}


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse and check one request head (``raw`` ends with the blank line).

    This runs for every request through the shim, so it touches only the headers that
    decide framing and leaves the rest undecoded.
    """
    if len(raw) > MAX_HEAD_BYTES:
        raise ProtocolError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    if raw.startswith(_H2_PREFACE):
        raise ProtocolError(
            505,
            "HTTP/2 connection preface: this socket speaks the Docker API over HTTP/1.1 "
            "(HTTP/2 with prior knowledge is not accepted; BuildKit's HTTP/2 tunnels start "
            "as HTTP/1.1 upgrades)",
        )
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
    raw_method = parser.get_method()
    method = _METHODS.get(raw_method)
    if method is None:
        if not _METHOD_RE.fullmatch(raw_method):
            raise ProtocolError(400, f"unsupported method {raw_method.decode('latin-1')!r}")
        method = raw_method.decode("ascii")
    url = collector.url
    if url[:1] != b"/":
        raise ProtocolError(400, "request target must be a path (origin-form)")
    if not url.isascii():
        raise ProtocolError(400, "request target is not ASCII")
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise ProtocolError(505, f"unsupported HTTP version {version}")
    framing: dict[bytes, list[bytes]] | None = None
    for name, value in collector.headers:
        key = name.lower()
        if key in _FRAMING_HEADERS:
            if framing is None:
                framing = {}
            framing.setdefault(key, []).append(value.strip(b" \t"))
    content_length: int | None = None
    chunked = False
    upgrade = None
    keep_alive = version == "1.1"
    if framing is not None:
        content_length, chunked = _request_framing(framing, version)
        connection = b",".join(framing.get(b"connection", ())).lower()
        tokens = {t.strip() for t in connection.split(b",")} if connection else set()
        if b"upgrade" in tokens:
            values = framing.get(b"upgrade", [])
            if len(values) > 1:
                raise ProtocolError(400, "duplicate upgrade header")
            upgrade = values[0].decode("latin-1") if values else None
        keep_alive = b"close" not in tokens if version == "1.1" else b"keep-alive" in tokens
    return RequestHead(
        collector.headers,
        raw,
        version,
        method,
        url.decode("ascii"),
        content_length,
        chunked,
        keep_alive,
        upgrade,
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


# --- bodies ---------------------------------------------------------------------------

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class BodyReader:
    """Frames one message body: ``feed`` says how many bytes belong to it.

    ``payload`` pieces (the body without chunk framing) are returned only when
    ``want_payload`` is set, so pass-through traffic costs a counter update.
    """

    __slots__ = (
        "_line",
        "_state",
        "_trailer_bytes",
        "chunked",
        "content_length",
        "done",
        "remaining",
        "want_payload",
    )

    def __init__(
        self, content_length: int | None = None, chunked: bool = False, want_payload: bool = False
    ) -> None:
        self.content_length = content_length
        self.chunked = chunked
        self.want_payload = want_payload
        self.remaining = 0 if chunked else content_length or 0
        self.done = not chunked and self.remaining == 0
        self._state = _SIZE
        self._line = bytearray()
        self._trailer_bytes = 0

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
