"""The agent's event bus: every event, to whoever subscribes, in the order emitted.

A failing subscriber never breaks the request that emitted the event (it is reported on
stderr and the others still get it).
"""

from __future__ import annotations

import sys

from agent.core.events import Event, Subscriber

__all__ = ["DecisionSink", "StderrSubscriber"]


class DecisionSink:
    """Fan-out of decision events; a failing subscriber never breaks a request."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as e:
                print(f"pullgate: decision subscriber failed: {e!r}", file=sys.stderr)


class StderrSubscriber:
    """Every event as one JSON object per line on stderr: the agent's log, for a service
    manager's journal (the audit log is the record)."""

    def __call__(self, event: Event) -> None:
        sys.stderr.write(event.json_text + "\n")
        sys.stderr.flush()
