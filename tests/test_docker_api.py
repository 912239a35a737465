"""The agent's own Docker API client: strict framing of the daemon's answers, against a
unix socket server that sends canned bytes."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.platform import docker_api
from agent.platform.docker_api import DockerAPIError, parse_response_head

Daemon = tuple[Path, list[bytes], list[bytes]]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A socket answering each connection with the next canned answer, then closing;
    also records what each request sent."""
    folder = Path(tempfile.mkdtemp(prefix="pgapi-", dir="/tmp"))
    path = folder / "d.sock"
    answers: list[bytes] = []
    requests: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                requests.append(data)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers, requests
    server.close()
    path.unlink()
    folder.rmdir()


def ask(path: Path, method: str = "GET", target: str = "/x") -> docker_api.Response:
    return asyncio.run(docker_api.request(path, method, target, timeout=5))


GOOD = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n"
    ),
    "close": b"HTTP/1.0 200 OK\r\n\r\nhello",
}


@pytest.mark.parametrize("framing", sorted(GOOD))
def test_each_framing_reads_the_same_body(daemon: Daemon, framing: str) -> None:
    path, answers, requests = daemon
    answers.append(GOOD[framing])
    answer = ask(path)
    assert (answer.status, answer.body) == (200, b"hello")
    assert requests[0].startswith(b"GET /x HTTP/1.1\r\nHost: docker\r\n")
    assert b"Connection: close\r\n" in requests[0]
    answers.append(GOOD[framing])
    sync = docker_api.request_sync(path, "GET", "/x")
    assert sync == answer


def test_no_body_for_204_and_head(daemon: Daemon) -> None:
    path, answers, _ = daemon
    answers += [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"]
    assert ask(path, "DELETE").status == 204
    assert ask(path, "HEAD").body == b""


BAD = {
    "bare LF in head": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "length and chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "gzip coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "signed length": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello",
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH\r\n\r\n",
    "nothing": b"",
    "space in name": b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_an_ambiguous_or_broken_answer_is_an_oserror(daemon: Daemon, case: str) -> None:
    path, answers, _ = daemon
    answers.append(BAD[case])
    with pytest.raises(DockerAPIError):
        ask(path)
    assert issubclass(DockerAPIError, OSError)


def test_a_body_past_the_limit_is_refused(daemon: Daemon) -> None:
    path, answers, _ = daemon
    answers.append(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000)
    with pytest.raises(DockerAPIError, match="larger than"):
        asyncio.run(docker_api.request(path, "GET", "/x", max_body=4096))


def test_repeated_headers_are_joined_and_names_lowered() -> None:
    status, headers = parse_response_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\na: 2 \r\nB:")
    assert (status, headers) == (404, {"a": "1, 2", "b": ""})


def test_a_target_cannot_smuggle_a_line() -> None:
    with pytest.raises(ValueError):
        docker_api.request_sync("/nonexistent", "GET", "/x HTTP/1.1\r\nX: y")


def test_stream_yields_events_as_they_come(daemon: Daemon) -> None:
    path, answers, _ = daemon
    answers.append(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{}\n\r\n9\r\n{"a": 1}\n\r\n0\r\n\r\n'
    )

    async def follow() -> list[bytes]:
        async with docker_api.stream(path, "/events", timeout=5) as answer:
            assert answer.status == 200
            return [chunk async for chunk in answer.chunks()]

    assert asyncio.run(follow()) == [b"{}\n", b'{"a": 1}\n']
