"""Small helpers for the local Unix sockets the agent serves and talks to."""

from __future__ import annotations

import errno
import http.client
import socket
import stat
import sys
from pathlib import Path

__all__ = ["UnixHTTPConnection", "claim_socket_path", "unix_stream_socket"]


def claim_socket_path(path: Path, what: str) -> None:
    """Reuse the path of a dead process's socket; refuse to steal a live one.

    ``what`` names the service in the error ("the shim", "the control API").
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)):  # a file or directory: not ours
        raise RuntimeError(f"{path} exists and is not a socket; {what} will not replace it")
    probe = unix_stream_socket()
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise RuntimeError(f"another process is already serving {what} on {path}")
    finally:
        probe.close()


def unix_stream_socket() -> socket.socket:
    """A unix stream socket; on Windows (named pipes only) an OSError."""
    if sys.platform == "win32":
        raise OSError(errno.EAFNOSUPPORT, "no unix sockets on Windows (named pipes)")
    else:
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket: the CLI's client of the control API, and
    the tests' direct line to a daemon."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = unix_stream_socket()
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
