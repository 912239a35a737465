"""The agent's event stream for the tray: a reader thread on ``GET /v1/events`` and a
status thread for ``GET /v1/status``, handing what they get to the Qt thread by signals.

Nothing polls. The reader blocks on the socket (the agent's keep-alive comes every 15 s);
when the stream fails it waits out an exponential backoff (0.5 s doubling to 30 s, with
jitter so that a restarted agent is not hit by every tray at once) on a ``threading.Event``
and tries again. The status thread blocks on a flag that is set on each (re)connection and
on ``policy`` and ``identity`` events; a burst of those is one fetch.

Floods and garbage: events wait in a bounded deque (the oldest beyond ``queue_limit`` are
dropped and counted); the Qt thread is told by one queued signal when the deque goes from
empty to not empty, and drains it whole, so ten thousand events cost one wake-up per batch,
not ten thousand. Lines over ``max_line`` and malformed JSON are skipped and counted. Each
failure is reported as a ``StreamState`` for the menu's status line.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PySide6.QtCore import QObject, Signal

from agent.control.client import ControlError, EventStream, control_request
from ui.model import StreamEvent, parse_stream_event, short

__all__ = ["Backoff", "EventFeed", "StreamState", "unreachable"]

STATUS_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnecting: ``first`` doubling up to ``cap``, times a jitter factor
    drawn from [1 - jitter, 1]; reset after a connection that lived ``healthy`` seconds."""

    first: float = 0.5
    cap: float = 30.0
    jitter: float = 0.25
    healthy: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.cap, self.first * 2.0 ** min(attempt, 30))
        return base * (1.0 - self.jitter * rand())


def unreachable(error: ControlError) -> str:
    """Why the control socket did not answer, in one word for the menu (the full error is
    on the status page): missing | refused | denied | timeout | other."""
    cause = error.__cause__
    if isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(cause, OSError):
        if cause.errno in {errno.ENOENT, errno.ENOTDIR}:
            return "missing"
        if cause.errno == errno.ECONNREFUSED:
            return "refused"
        if cause.errno in {errno.EACCES, errno.EPERM}:
            return "denied"
    return "other"


@dataclass(frozen=True)
class StreamState:
    """How the feed is doing, for the menu: connected or not, the last error, when the next
    attempt is (wall clock), and what was skipped."""

    connected: bool = False
    path: Path | None = None
    error: str | None = None
    cause: str | None = None  # why the agent is out of reach, a key of texts.MENU_AGENT_DOWN
    retry_at: float | None = None
    dropped: int = 0  # events dropped because the Qt thread fell behind (a flood)
    malformed: int = 0  # events whose JSON was not an event
    oversized: int = 0  # events dropped for a line or data over the cap


class EventFeed(QObject):
    """Start with ``start()``; ``stop()`` ends both threads promptly.

    Signals (queued to the Qt thread): ``events_ready`` (drain with ``take_events()``),
    ``status_changed(object)`` (the status document, or None when it could not be fetched),
    ``state_changed(object)`` (a ``StreamState``), ``decisions_loaded(object)`` (the body
    of ``/v1/decisions``, once, after the first connection).
    """

    events_ready = Signal()
    status_changed = Signal(object)
    state_changed = Signal(object)
    decisions_loaded = Signal(object)

    def __init__(
        self,
        candidates: Sequence[Path],
        *,
        parent: QObject | None = None,
        backoff: Backoff = Backoff(),
        timeout: float = 45.0,
        max_line: int = 256 * 1024,
        queue_limit: int = 5000,
        decisions_limit: int = 200,
    ) -> None:
        super().__init__(parent)
        if not candidates:
            raise ValueError("EventFeed needs at least one control socket path")
        self.candidates = tuple(candidates)
        self.backoff = backoff
        self.timeout = timeout
        self.max_line = max_line
        self.decisions_limit = decisions_limit
        self._queue: deque[StreamEvent] = deque()
        self._queue_limit = queue_limit
        self._lock = threading.Lock()
        self._signalled = False
        self._stop = threading.Event()
        self._want_status = threading.Event()
        self._want_decisions = True
        self._stream: EventStream | None = None
        self._state = StreamState()
        self._path = self.candidates[0]
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- control

    @property
    def path(self) -> Path:
        """The control socket that answered last (the first candidate before that)."""
        return self._path

    @property
    def state(self) -> StreamState:
        return self._state

    def start(self) -> None:
        if self._threads:
            return
        for target, name in ((self._read_loop, "events"), (self._status_loop, "status")):
            thread = threading.Thread(target=target, name=f"pullgate-tray-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._want_status.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def request_status(self) -> None:
        """Fetch ``/v1/status`` once soon (after an action that changed it)."""
        self._want_status.set()

    def take_events(self) -> list[StreamEvent]:
        """Everything waiting, oldest first; call from the Qt thread on ``events_ready``."""
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
            self._signalled = False
        return events

    # ----------------------------------------------------------------- the reader

    def _read_loop(self) -> None:
        attempt = 0
        index = 0
        while not self._stop.is_set():
            path = self.candidates[index % len(self.candidates)]
            started = time.monotonic()
            error, cause = self._follow(path)
            if self._stop.is_set():
                return
            if time.monotonic() - started >= self.backoff.healthy:
                attempt = 0
            if not self._state.connected:
                index += 1  # this socket did not answer: try the next candidate next time
            delay = self.backoff.delay(attempt)
            attempt += 1
            self._set_state(connected=False, error=error, cause=cause, retry_at=time.time() + delay)
            self.status_changed.emit(None)
            self._stop.wait(delay)

    def _follow(self, path: Path) -> tuple[str, str]:
        """One connection: returns why it ended, in full and as a cause (``unreachable``)."""
        stream = EventStream(path, timeout=self.timeout, max_line=self.max_line)
        self._stream = stream
        if self._stop.is_set():
            return "stopped", "other"
        try:
            stream.open()
        except ControlError as e:
            return short(e, 400), unreachable(e)
        self._path = path
        self._set_state(connected=True, path=path, error=None, cause=None, retry_at=None)
        self._want_status.set()
        before = self._state.oversized  # counted across connections
        try:
            for frame in stream.events():
                self._offer(parse_stream_event(frame.event, frame.data))
                if before + stream.parser.discarded != self._state.oversized:
                    self._set_state(oversized=before + stream.parser.discarded)
        except ControlError as e:
            return short(e, 400), unreachable(e)
        except Exception as e:  # whatever a squatter sends, the reader carries on
            return short(f"the event stream failed: {e!r}", 400), "other"
        finally:
            stream.close()
        return "stopped", "other"

    def _offer(self, event: StreamEvent) -> None:
        if event.malformed:
            self._set_state(malformed=self._state.malformed + 1)
            return
        if event.refetch_status:
            self._want_status.set()
        with self._lock:
            if len(self._queue) >= self._queue_limit:
                self._queue.popleft()
                dropped = True
            else:
                dropped = False
            self._queue.append(event)
            signal = not self._signalled
            self._signalled = True
        if dropped:
            self._set_state(dropped=self._state.dropped + 1)
        if signal:
            self.events_ready.emit()

    def _set_state(self, **changes: Any) -> None:
        with self._lock:
            current = self._state
            values = {**current.__dict__, **changes}
            new = StreamState(**values)
            if new == current:
                return
            self._state = new
        self.state_changed.emit(new)

    # ----------------------------------------------------------------- the status

    def _status_loop(self) -> None:
        while True:
            self._want_status.wait()
            if self._stop.is_set():
                return
            self._want_status.clear()
            if not self._state.connected:
                continue
            path = self._path
            try:
                code, body = control_request(path, "GET", "/v1/status", timeout=STATUS_TIMEOUT)
            except ControlError as e:
                self._set_state(error=short(e, 400))
                continue
            if code == 200 and isinstance(body, dict):
                self.status_changed.emit(body)
            else:
                message = body.get("message") if isinstance(body, dict) else None
                self._set_state(error=short(f"GET /v1/status: HTTP {code} {message or ''}", 400))
            if self._want_decisions and not self._stop.is_set():
                self._load_decisions(path)

    def _load_decisions(self, path: Path) -> None:
        try:
            code, body = control_request(
                path, "GET", f"/v1/decisions?limit={self.decisions_limit}", timeout=STATUS_TIMEOUT
            )
        except ControlError:
            return  # tried again after the next connection
        if code == 200:
            self._want_decisions = False
            self.decisions_loaded.emit(body)
