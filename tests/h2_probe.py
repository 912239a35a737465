"""Raw HTTP/2 and evidence helpers for the hostile BuildKit tests.

What the well-behaved client (tests/buildkit_client.py) will not do: frames written by
hand after an ``h2c`` upgrade of the shim's socket. And how the tests tell what really
happened: the agent's resident memory, and what the daemon asked the registry mirror
for (BuildKit keeps the bases it pulls in its own store, not as images, so
``images_of`` alone cannot tell a pulled base).
"""

from __future__ import annotations

import socket
import struct
import uuid
from pathlib import Path

import h2.config
import h2.connection

from bench.realdocker import DockerEnv
from tests.agent_process import DENIED_REPOSITORY

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS_TYPE, PING = 0x0, 0x1, 0x3, 0x4, 0x6
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    """One HTTP/2 frame; ``length`` declares another length than the payload's."""
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def raw_upgrade(socket_path: Path, path: str = "/grpc") -> tuple[socket.socket, bytes]:
    """``POST path`` upgraded to h2c on the shim's socket: the socket once the 101 is
    read, and what came after it. A ``/session`` names a fresh session."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(socket_path))
    head = [f"POST {path} HTTP/1.1", "Host: localhost", "Upgrade: h2c", "Connection: Upgrade"]
    if path == "/session":
        head += [
            f"X-Docker-Expose-Session-Uuid: {uuid.uuid4().hex}",
            "X-Docker-Expose-Session-Name: pullgate-hostile",
            f"X-Docker-Expose-Session-Sharedkey: {uuid.uuid4().hex}",
            "X-Docker-Expose-Session-Grpc-Method: /grpc.health.v1.Health/Check",
        ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the 101: {buf!r}"
        buf += chunk
    status, rest = buf.split(b"\r\n\r\n", 1)
    assert status.startswith(b"HTTP/1.1 101"), status
    return sock, rest


def raw_grpc(socket_path: Path) -> tuple[socket.socket, h2.connection.H2Connection]:
    """A ``/grpc`` tunnel with an ``h2`` client connection whose bytes the test sends."""
    sock, _ = raw_upgrade(socket_path, "/grpc")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def call_headers(method: str) -> list[tuple[str, str]]:
    """The request headers of a gRPC call of ``method`` (``/package.Service/Method``)."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def rss_kib(pid: int) -> int:
    """A process's resident memory (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def registry_offset(env: DockerEnv) -> int:
    """Where the registry mirror's log ends now: pass it to ``registry_fetches``."""
    return env.registry_log.stat().st_size


def registry_fetches(env: DockerEnv, offset: int, repository: str = DENIED_REPOSITORY) -> list[str]:
    """What the daemon asked the registry mirror of ``repository`` since ``offset``."""
    with env.registry_log.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode("utf-8", "replace").splitlines()
    return [line[:200] for line in lines if f"/v2/{repository}/" in line]
