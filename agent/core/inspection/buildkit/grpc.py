"""gRPC message framing over an HTTP/2 stream, without HTTP/2 and without sockets.

A gRPC stream's DATA frames carry length-prefixed messages: one compressed-flag byte,
a 4-byte big-endian length, then the message (gRPC over HTTP/2, "Length-Prefixed-Message").
HTTP/2 splits them wherever flow control likes, so :class:`MessageReader` reassembles
them from arbitrary chunks. The tunnel owns the connection; this module only turns bytes
into messages and back, and writes the trailers that end a call with a status.
"""

from __future__ import annotations

__all__ = [
    "CANCELLED",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "MAX_MESSAGE",
    "MAX_STATUS_MESSAGE",
    "OK",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNKNOWN",
    "GrpcFramingError",
    "MessageReader",
    "frame",
    "status_trailers",
]

# Status codes (google.golang.org/grpc/codes) the shim answers with.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNAVAILABLE = 14

#: Largest message read by default. BuildKit's own limit is 16 MiB for most calls; a
#: file sync sends 32 KiB data packets, a solve request a few KiB to a few MiB of LLB.
MAX_MESSAGE = 16 * 1024 * 1024

_PREFIX = 5
_UNCOMPRESSED, _COMPRESSED = 0, 1


class GrpcFramingError(ValueError):
    """The peer's stream is not a sequence of readable gRPC messages."""


class MessageReader:
    """Reassembles the messages of one direction of one gRPC stream.

    ``feed`` only buffers what is incomplete, so a message split at any byte reads the
    same. Compressed messages are refused, not passed: what the shim cannot read it
    cannot decide on (BuildKit's clients and daemon do not compress).
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        if max_message < 0:
            raise ValueError("max_message must not be negative")
        self._max = max_message
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back (its prefix included)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order; raise on a bad prefix."""
        self._buffer += data
        messages: list[bytes] = []
        start = 0
        buffer = self._buffer
        while len(buffer) - start >= _PREFIX:
            flag = buffer[start]
            if flag == _COMPRESSED:
                raise GrpcFramingError(
                    "the peer sent a compressed gRPC message, which Pullgate cannot read"
                )
            if flag != _UNCOMPRESSED:
                raise GrpcFramingError(f"invalid gRPC compressed-flag byte {flag}")
            length = int.from_bytes(buffer[start + 1 : start + _PREFIX], "big")
            if length > self._max:
                raise GrpcFramingError(
                    f"gRPC message of {length} bytes is over the {self._max}-byte limit"
                )
            end = start + _PREFIX + length
            if len(buffer) < end:
                break
            messages.append(bytes(buffer[start + _PREFIX : end]))
            start = end
        if start:
            del buffer[:start]
        return messages


def frame(payload: bytes) -> bytes:
    """One uncompressed gRPC message carrying ``payload``."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("a gRPC message holds at most 4 GiB")
    return bytes([_UNCOMPRESSED]) + len(payload).to_bytes(4, "big") + payload


MAX_STATUS_MESSAGE = 2048
"""The longest ``grpc-message`` the shim sends, in characters (before percent-encoding)."""


def status_trailers(code: int, message: str) -> list[tuple[str, str]]:
    """The trailers that end a call with ``code``: ``grpc-status`` and ``grpc-message``.

    The message is percent-encoded as the gRPC HTTP/2 spec requires: printable ASCII
    (space to ``~``) except ``%`` stays as is, every other byte of its UTF-8 is ``%XX``;
    clients decode it back, so the user reads Pullgate's text in the build output.
    """
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"invalid gRPC status code {code}")
    if len(message) > MAX_STATUS_MESSAGE:
        # Messages quote what a client sent (an error it reported, a path): a megabyte of
        # it would cost seconds of HPACK encoding on the event loop, and no client shows it.
        message = message[: MAX_STATUS_MESSAGE - 1] + "\u2026"
    encoded = "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
        for byte in message.encode("utf-8", "replace")
    )
    return [("grpc-status", str(code)), ("grpc-message", encoded)]
