"""What Docker Desktop mode does the same way on every platform: the supervised rescan of
who is signed in, and each endpoint's own approvals for its bypass monitor.

``agent.daemon.desktop`` (macOS, Linux: a unix socket per logged-in user) and
``agent.daemon.windows_endpoints`` (Windows: a pair of pipes per signed-in user) differ in
how they find users and serve them, not in how a failing pass is reported or in which
decisions explain what a user's daemon did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.core.events import NoticeEvent
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger

__all__ = ["EndpointSink", "RescanLoop"]


class RescanLoop:
    """Runs ``rescan`` now and then every ``interval`` seconds, as a supervised task: an
    error in one pass is counted, kept for status and reported once per distinct message
    as a ``desktop-failure`` notice, and the next pass runs (one user's bad socket path or
    a bug must not stop the others' endpoints or the agent); if the task itself ends,
    status says ``running: false`` and a notice says why."""

    def __init__(
        self,
        rescan: Callable[[], Awaitable[None]],
        sink: DecisionSink,
        *,
        interval: float,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._rescan = rescan
        self.sink = sink
        self.interval = interval
        self.details = dict(details or {})  # for the failure notices
        self.task: asyncio.Task[None] | None = None
        self.scans = 0
        self.errors = 0
        self.last_error: str | None = None
        self.failing = False  # the last pass failed
        self._closing = False

    async def start(self) -> None:
        """One pass now (those signed in are served before the agent says "ready"), then
        the loop."""
        await self.run_once()
        self.task = asyncio.get_running_loop().create_task(self._run(), name="desktop-rescan")
        self.task.add_done_callback(self._ended)

    async def stop(self) -> None:
        self._closing = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def status(self) -> dict[str, Any]:
        """``running``, ``scans``, ``errors``, ``failing``, ``last_error`` (in that order,
        for ``GET /v1/status``'s ``desktop``)."""
        return {
            "running": self.task is not None and not self.task.done(),
            "scans": self.scans,
            "errors": self.errors,
            "failing": self.failing,
            "last_error": self.last_error,
        }

    async def run_once(self) -> None:
        """One pass; an error is counted and reported, never raised."""
        try:
            await self._rescan()
            self.scans += 1
            self.failing = False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.errors += 1
            self.failing = True
            message = f"{type(e).__name__}: {e}"
            if message != self.last_error:  # once per distinct error, not every pass
                self.sink.emit(
                    NoticeEvent(
                        action="desktop-failure",
                        outcome="failure",
                        severity="warning",
                        reason=f"pullgate: Docker Desktop mode's rescan failed: {message}",
                        details=dict(self.details),
                    )
                )
            self.last_error = message

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run_once()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._closing or task.cancelled():
            return
        error = task.exception()
        self.last_error = f"the rescan task ended: {error!r}"
        self.sink.emit(
            NoticeEvent(
                action="desktop-failure",
                outcome="failure",
                severity="warning",
                reason=f"pullgate: Docker Desktop mode stopped following logins: {error!r}",
            )
        )


class EndpointSink(DecisionSink):
    """One user's endpoint's events: every one to the agent's ``sink``, and its allowed
    decisions into that endpoint's own ``ledger``.

    The endpoint's bypass monitor watches the daemon that endpoint forwards to, so only
    what went through that endpoint explains what the daemon did: a ledger shared by all
    endpoints let one user's allowed pull explain another user's direct pull of the
    same image within the window."""

    def __init__(self, sink: DecisionSink, ledger: ApprovalLedger) -> None:
        super().__init__()
        self.ledger = ledger
        self.subscribe(sink.emit)
        self.subscribe(ledger)  # emit is synchronous: approved before the shim forwards
