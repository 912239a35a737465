"""A Windows named pipe as the byte stream ``http.client`` wants, without pywin32.

``agent.platform.pipe_client`` (Windows only) opens the agent's control pipe and hands
over the few calls that touch it (``PipeOps``: start an overlapped read or write, wait
for it, cancel it). Everything decided around those calls lives here, so it runs and is
tested on Linux against a stand-in with the same behaviour:

- ``PipeChannel``: a read or write waits at most its timeout; on timeout, or when another
  thread asks the stream to stop, the operation is cancelled and waited for before its
  buffer is let go, and what it transferred in the meantime is kept; the server closing
  its end (ERROR_BROKEN_PIPE and kin) is the end of the stream, as a socket's empty read;
- ``PipeSocket``: the socket-shaped object ``http.client`` reads and writes
  (``sendall``, ``makefile("rb")``, ``settimeout``, ``shutdown``, ``close``), with a
  socket's rule that closing it leaves an open reader (an ``HTTPResponse`` still being
  read) working until that reader is closed too;
- ``PipeHTTPConnection``: ``http.client`` over a channel, the shape of
  ``unix_sockets.UnixHTTPConnection``;
- ``pipe_os_error``: Windows error codes as the ``OSError`` a socket would raise
  (``FileNotFoundError`` for a pipe that does not exist, ``PermissionError``,
  ``TimeoutError``...), with a sentence for the ones a user meets.
"""

from __future__ import annotations

import errno
import http.client
import io
import math
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Final, Protocol, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ENDED_WINERRORS",
    "ERROR_ACCESS_DENIED",
    "ERROR_BROKEN_PIPE",
    "ERROR_FILE_NOT_FOUND",
    "ERROR_OPERATION_ABORTED",
    "ERROR_PIPE_BUSY",
    "ERROR_SEM_TIMEOUT",
    "INFINITE",
    "MAX_IO",
    "PendingIO",
    "PipeCallError",
    "PipeChannel",
    "PipeHTTPConnection",
    "PipeOps",
    "PipeSocket",
    "Wait",
    "pipe_os_error",
    "timeout_ms",
]

# winerror.h
ERROR_FILE_NOT_FOUND: Final = 2
ERROR_PATH_NOT_FOUND: Final = 3
ERROR_ACCESS_DENIED: Final = 5
ERROR_BROKEN_PIPE: Final = 109
ERROR_SEM_TIMEOUT: Final = 121
ERROR_BAD_PATHNAME: Final = 161
ERROR_PIPE_BUSY: Final = 231
ERROR_NO_DATA: Final = 232
ERROR_PIPE_NOT_CONNECTED: Final = 233
ERROR_OPERATION_ABORTED: Final = 995
INFINITE: Final = 0xFFFFFFFF

ENDED_WINERRORS: Final = frozenset({ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED})
"""The server closed its end (or is closing it): the end of the stream."""

MAX_IO: Final = 64 * 1024
"""Bytes asked of one ReadFile or given to one WriteFile."""

_ERRNO: Final = {
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_PATH_NOT_FOUND: errno.ENOENT,
    ERROR_BAD_PATHNAME: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_BROKEN_PIPE: errno.EPIPE,
    ERROR_NO_DATA: errno.EPIPE,
    ERROR_PIPE_NOT_CONNECTED: errno.EPIPE,
    ERROR_SEM_TIMEOUT: errno.ETIMEDOUT,
    ERROR_PIPE_BUSY: errno.EBUSY,
    ERROR_OPERATION_ABORTED: errno.ECANCELED,
}
_WORDS: Final = {
    errno.ENOENT: "no such pipe (the agent serves one to each user signed in to this "
    "machine while its service runs: `Get-Service PullgateAgent`)",
    errno.EACCES: "access denied (the pipe admits only the user it was made for, "
    "LocalSystem and administrators)",
    errno.ETIMEDOUT: "every instance of the pipe stayed busy",
}


class PipeCallError(Exception):
    """A Windows call on the pipe failed: its error code and Windows's words for it
    (what pywin32's ``pywintypes.error`` carries), without pywin32."""

    def __init__(self, winerror: int, strerror: str) -> None:
        super().__init__(winerror, strerror)
        self.winerror = winerror
        self.strerror = strerror


def pipe_os_error(winerror: int, strerror: str, pipe: str) -> OSError:
    """The ``OSError`` a socket would raise for this Windows error: the errno picks the
    subclass (``FileNotFoundError``, ``PermissionError``, ``TimeoutError``,
    ``BrokenPipeError``), so callers that judge socket errors (the tray's "agent not
    running" or "no permission") judge pipes alike. Other codes are EIO, the code kept in
    the text."""
    code = _ERRNO.get(winerror, errno.EIO)
    words = _WORDS.get(code) or f"{strerror.rstrip('. ')} (Windows error {winerror})"
    return OSError(code, words, pipe)


def timeout_ms(timeout: float | None) -> int:
    """A timeout in seconds as a wait's milliseconds: None waits for ever (INFINITE); a
    positive fraction of a millisecond still waits one, not zero."""
    if timeout is None:
        return INFINITE
    return max(0, min(INFINITE - 1, math.ceil(timeout * 1000)))


class Wait(Enum):
    """How a wait on an operation and the stop event ended (``WaitForMultipleObjects``,
    which names the first signalled handle, so a finished operation wins over a stop)."""

    DONE = "done"
    STOPPED = "stopped"
    TIMED_OUT = "timed out"


class PendingIO(Protocol):
    """One overlapped ReadFile or WriteFile, started."""

    def wait(self, timeout_ms: int) -> Wait:
        """Until the operation finishes, the stop event is set, or the time is up."""
        ...

    def cancel(self) -> None:
        """Ask Windows to cancel it (the thread that started it calls this)."""
        ...

    def result(self) -> int:
        """Bytes transferred, once it has settled (waits for a cancel to take effect);
        ``PipeCallError`` if it failed or was cancelled before transferring anything."""
        ...

    def data(self, count: int) -> bytes:
        """A read's first ``count`` bytes."""
        ...


class PipeOps(Protocol):
    """The calls a ``PipeChannel`` makes on one open pipe (pywin32's on Windows)."""

    def start_read(self, size: int) -> PendingIO: ...

    def start_write(self, data: bytes) -> PendingIO: ...

    def stop(self) -> None:
        """Set the stop event (from any thread): a wait in progress returns STOPPED."""
        ...

    def close(self) -> None: ...


class PipeChannel:
    """A connected pipe as reads and writes with timeouts; ``interrupt`` (from any thread)
    ends a read blocked in another; ``close`` releases the pipe."""

    def __init__(self, ops: PipeOps, name: str) -> None:
        self.ops = ops
        self.name = name
        self._stopped = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # interrupt (any thread) never touches a closed pipe

    def read_into(self, buffer: memoryview, timeout: float | None) -> int:
        """Bytes read into ``buffer``; 0 at the end of the stream (the server closed its
        end, or ``interrupt`` was called); ``TimeoutError`` when nothing came in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.is_set() and len(buffer):
            try:
                pending = self.ops.start_read(min(len(buffer), MAX_IO))
            except PipeCallError as e:
                if e.winerror in ENDED_WINERRORS:
                    return 0
                raise pipe_os_error(e.winerror, e.strerror, self.name) from e
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            count = self._settle(pending, left, timeout)
            if count is None:
                return 0
            if count:
                buffer[:count] = pending.data(count)
                return count
            # A zero-length write by the server completes a read with nothing; that is
            # not the end of the stream (only ERROR_BROKEN_PIPE is): wait on, within time.
        return 0

    def write(self, data: memoryview, timeout: float | None) -> int:
        """Bytes of ``data`` written (at most ``MAX_IO``); ``BrokenPipeError`` when the
        server has gone or the stream was interrupted, ``TimeoutError`` when the pipe took
        nothing in time."""
        if self._stopped.is_set():
            raise BrokenPipeError(errno.EPIPE, "the stream was closed", self.name)
        try:
            pending = self.ops.start_write(bytes(data[:MAX_IO]))
        except PipeCallError as e:
            raise pipe_os_error(e.winerror, e.strerror, self.name) from e
        count = self._settle(pending, timeout, timeout)
        if count is None:
            raise BrokenPipeError(errno.EPIPE, "the agent closed the pipe", self.name)
        return count

    def _settle(self, pending: PendingIO, left: float | None, timeout: float | None) -> int | None:
        """Wait for an operation; bytes transferred, or None when the pipe ended or the
        stream was stopped. A timed-out or stopped operation is cancelled and waited for
        (its buffer must outlive it), and what it transferred before the cancel counts."""
        outcome = pending.wait(timeout_ms(left))
        if outcome is not Wait.DONE:
            pending.cancel()
        try:
            count = pending.result()
        except PipeCallError as e:
            if e.winerror in ENDED_WINERRORS:
                return None
            if e.winerror != ERROR_OPERATION_ABORTED or outcome is Wait.DONE:
                raise pipe_os_error(e.winerror, e.strerror, self.name) from e
            count = 0  # cancelled before anything moved
        if outcome is Wait.DONE or count:
            return count
        if outcome is Wait.STOPPED:
            return None
        raise TimeoutError(
            errno.ETIMEDOUT, f"the pipe was silent for {timeout or 0:g} s", self.name
        )

    def interrupt(self) -> None:
        """End the stream from any thread: a blocked read returns the end of the stream,
        later reads too, and writes fail. Nothing once closed (its handles may have been
        reused by then)."""
        with self._lock:
            if self._closed:
                return
            self._stopped.set()
            self.ops.stop()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopped.set()
        self.ops.close()


class _Reader(io.RawIOBase):
    """``PipeSocket.makefile("rb")``'s raw stream: reads through the socket, and counts as
    a reference to it until closed (as ``socket.SocketIO`` does)."""

    def __init__(self, sock: PipeSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._drop_reader()


class PipeSocket:
    """The socket-shaped face of a ``PipeChannel``, for ``http.client``.

    Closing it while a reader from ``makefile`` is open (``http.client`` closes the
    connection as soon as an answer with ``Connection: close`` has its head, and reads the
    body after) closes the pipe only when that reader is closed too, as a socket does.
    ``shutdown`` interrupts a read blocked in another thread (``EventStream.close``)."""

    def __init__(self, channel: PipeChannel, timeout: float | None) -> None:
        self.channel = channel
        self._timeout = timeout
        self._readers = 0
        self._closed = False
        self._lock = threading.Lock()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """All of ``data``, within the timeout in total (a socket's rule since 3.5)."""
        view = memoryview(data).cast("B")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while view:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            written = self.channel.write(view, left)
            if written <= 0:
                raise OSError(errno.EIO, "the pipe took nothing", self.channel.name)
            view = view[written:]

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        return self.channel.read_into(view, self._timeout)

    def recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: self.recv_into(buffer)])

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedReader:
        """A buffered reader (only ``rb``: ``http.client`` writes with ``sendall``)."""
        if mode != "rb":
            raise ValueError(f"PipeSocket.makefile: only 'rb', not {mode!r}")
        with self._lock:
            self._readers += 1
        size = buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(_Reader(self), size)

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        self.channel.interrupt()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            last = self._readers <= 0
        if last:
            self.channel.close()

    def _drop_reader(self) -> None:
        with self._lock:
            self._readers -= 1
            last = self._closed and self._readers <= 0
        if last:
            self.channel.close()


class PipeHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a pipe: the shape of ``UnixHTTPConnection``, with ``open``
    (the pipe's name, the timeout) connecting and checking whoever serves it."""

    def __init__(
        self,
        pipe: str,
        timeout: float | None,
        opener: Callable[[str, float | None], PipeChannel],
    ) -> None:
        super().__init__("localhost", timeout=timeout)
        self.pipe = pipe
        self._opener = opener

    def connect(self) -> None:
        channel = self._opener(self.pipe, self.timeout)
        # Duck-typed: http.client uses sendall, makefile("rb") and close of its socket.
        self.sock = cast(socket.socket, PipeSocket(channel, self.timeout))
