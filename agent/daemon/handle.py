"""A handle on a running agent for another thread: ask it to stop, learn when it serves.

On Linux and macOS the agent stops on SIGTERM/SIGINT. A Windows service has no signals:
the Service Control Manager calls the service's control handler on a thread of its own
(``SvcStop``, ``SvcShutdown``), while ``run_agent`` runs the event loop on the service's
main thread. ``AgentHandle`` carries the stop across (``call_soon_threadsafe``) and tells
the service when the agent is ready, so it reports ``SERVICE_RUNNING`` only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

__all__ = ["AgentHandle"]


class AgentHandle:
    """Given to ``run_agent`` in ``AgentOptions.handle``; thread-safe.

    A stop asked for before the event loop runs is kept and done as soon as it does, so a
    service stopped during its start still stops (after closing what it opened).
    """

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Callable[[], None] | None = None
        self._stop_requested = False
        self._on_ready = on_ready
        self.ready = threading.Event()

    def request_stop(self) -> None:
        """Ask the agent to stop (from any thread); it returns from ``run_agent``."""
        with self._lock:
            self._stop_requested = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            # RuntimeError: the loop already closed, the agent has stopped.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop)

    @property
    def stop_requested(self) -> bool:
        with self._lock:
            return self._stop_requested

    # ---------------------------------------------------------------- for run_agent

    def attach(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        """Called on the loop's thread once it runs: ``stop`` ends the agent."""
        with self._lock:
            self._loop, self._stop = loop, stop
            early = self._stop_requested
        if early:
            stop()

    def mark_ready(self) -> None:
        """Called on the loop's thread once the shim serves."""
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def detach(self) -> None:
        """Called as the loop ends: later stops have nothing to do."""
        with self._lock:
            self._loop = self._stop = None
