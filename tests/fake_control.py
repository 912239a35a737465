"""A stand-in for the agent's control socket that says whatever a test scripts: garbage,
huge lines, floods, wrong status codes. Used where a real agent cannot misbehave on
demand (the event-stream client and the tray must survive a squatter on the socket).

`FakeControl(path, routes)` serves each connection in a thread: it reads the request head,
looks up `routes[(method, path)]` (a callable that gets the connection's socket and writes
what it likes), and closes. Unknown routes get 404 JSON. `requests` lists what was asked.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FakeControl", "Route", "json_answer", "sse_head"]

Route = Callable[[socket.socket], None]


def sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )


def json_answer(status: int, body: Any) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


class FakeControl:
    def __init__(self, path: Path, routes: Mapping[tuple[str, str], Route]) -> None:
        self.path = path
        self.routes = dict(routes)
        self.requests: list[tuple[str, str]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._stopped = threading.Event()
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def count(self, method: str, target: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == (method, target))

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            target = target.split("?", 1)[0]
            with self._lock:
                self.requests.append((method, target))
            route = self.routes.get((method, target))
            if route is None:
                conn.sendall(json_answer(404, {"message": f"no route {method} {target}"}))
            else:
                route(conn)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
