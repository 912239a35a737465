"""Strict HTTP/1.1 framing: what two parsers could read differently is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.inspection.http1 import (
    BodyReader,
    ProtocolError,
    find_head_end,
    parse_request_head,
)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_simple_request_head() -> None:
    h = parse_request_head(
        head("POST /v1.41/images/create?fromImage=alpine HTTP/1.1", "Host: docker")
    )
    assert (h.method, h.target, h.version) == (
        "POST",
        "/v1.41/images/create?fromImage=alpine",
        "1.1",
    )
    assert h.keep_alive and not h.has_body and h.upgrade is None


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (head("POST /a HTTP/1.1", "Content-Length: 1", "Transfer-Encoding: chunked"), 400, ""),
        (head("POST /a HTTP/1.1", "Content-Length: 1", "Content-Length: 1"), 400, ""),
        (
            head("POST /a HTTP/1.1", "Transfer-Encoding: chunked, identity"),
            400,
            "Transfer-Encoding",
        ),
        (head("POST /a HTTP/1.1", "Transfer-Encoding: gzip"), 400, "Transfer-Encoding"),
        (
            head("POST /a HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
            400,
            "Transfer-Encoding",
        ),
        (head("POST /a HTTP/1.0", "Transfer-Encoding: chunked"), 400, "HTTP/1.0"),
        (head("POST /a HTTP/1.1", "X: a", " b"), 400, ""),
        (b"POST /a HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, ""),
        (b"POST /a HTTP/1.1\nHost: x\n\n", 400, ""),
        (head("post /a HTTP/1.1"), 400, ""),
        (head("POST http://docker/images/create HTTP/1.1"), 400, "origin-form"),
        (head("POST * HTTP/1.1"), 400, ""),
        (head("POST /a HTTP/2.0"), 505, ""),
        (head("POST /a HTTP/1.1", "Content-Length: +5"), 400, ""),
        (head("POST /a HTTP/1.1", "Content-Length: 5 5"), 400, ""),
        (head("POST /a HTTP/1.1", "Bad Header: x"), 400, ""),
        (head("POST /a\x00 HTTP/1.1"), 400, ""),
        (head("POST /a HTTP/1.1", "X: " + "a" * 70_000), 431, ""),
    ],
)
def test_ambiguous_or_malformed_request_heads_are_refused(
    raw: bytes, status: int, fragment: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request_head(raw)
    assert info.value.status == status
    assert fragment in info.value.message


def test_http2_connection_preface_is_named_not_called_incomplete() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request_head(b"PRI * HTTP/2.0\r\n\r\n")
    assert info.value.status == 505
    assert "HTTP/2 connection preface" in info.value.message


def test_upgrade_and_connection_tokens() -> None:
    h = parse_request_head(
        head("POST /containers/x/attach HTTP/1.1", "Connection: Upgrade", "Upgrade: tcp")
    )
    assert h.upgrade == "tcp"
    h = parse_request_head(head("GET /_ping HTTP/1.1", "Connection: keep-alive, close"))
    assert not h.keep_alive
    assert not parse_request_head(head("GET /_ping HTTP/1.0")).keep_alive


def test_find_head_end_across_chunks() -> None:
    buf = bytearray(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
    assert find_head_end(buf) == -1
    buf += b"\nrest"
    assert buf[: find_head_end(buf)].endswith(b"\r\n\r\n")


def feed_all(reader: BodyReader, data: bytes, step: int) -> tuple[int, bytes]:
    used = 0
    payload = b""
    while used < len(data) and not reader.done:
        piece = memoryview(data)[used : used + step]
        n, pieces = reader.feed(piece)
        payload += b"".join(bytes(p) for p in pieces)
        used += n
        if n < len(piece):
            break
    return used, payload


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_chunked_body_framing_any_split(step: int) -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"
    reader = BodyReader(None, True, want_payload=True)
    used, payload = feed_all(reader, body + b"NEXT", step)
    assert reader.done and used == len(body) and payload == b"hello world"


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # missing CRLF after data
        b"zz\r\n",  # not hex
        b"5\nhello\r\n",  # bare LF
        b"-1\r\n",
        b"5 \r\nhello\r\n",  # whitespace Go would trim
        b"1" * 20 + b"\r\n",  # oversized
        b"0\r\nbad trailer\r\n\r\n",
    ],
)
def test_malformed_chunked_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        feed_all(BodyReader(None, True), body, 1)


def test_content_length_body_stops_at_length() -> None:
    reader = BodyReader(4, False, want_payload=True)
    used, payload = feed_all(reader, b"abcdNEXT", 3)
    assert (used, payload, reader.done) == (4, b"abcd", True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=8), st.integers(1, 16))
def test_chunked_reader_never_fails_with_anything_but_protocol_error(
    parts: list[bytes], step: int
) -> None:
    data = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p) + b"0\r\n\r\n"
    reader = BodyReader(None, True, want_payload=True)
    used, payload = feed_all(reader, data, step)
    assert reader.done and payload == b"".join(parts) and used == len(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_request_head(data + b"\r\n\r\n")
    with contextlib.suppress(ProtocolError):
        feed_all(BodyReader(None, True), data, 5)
