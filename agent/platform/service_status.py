"""What a Windows service tells the Service Control Manager, and when: a state machine.

The SCM waits for a service through ``SERVICE_START_PENDING`` (with a checkpoint that goes
up and a wait hint it may not exceed), ``SERVICE_RUNNING`` (accepting stop and shutdown),
``SERVICE_STOP_PENDING`` and ``SERVICE_STOPPED`` with an exit code; a service that reports
nothing within 30 s of its start is killed with error 1053, and one that reports
``SERVICE_RUNNING`` before it serves makes ``ServiceControl Wait="yes"`` (the MSI) and
``Start-Service`` return too early. ``ServiceLifecycle`` holds the legal moves as a table
(like h11's ``_state.py``) and turns each into the ``SERVICE_STATUS`` values to report;
``agent.daemon.winservice`` only hands them to ``SetServiceStatus``. Pure, so tested on
Linux; the numbers are winsvc.h's and winerror.h's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "ERROR_SERVICE_SPECIFIC_ERROR",
    "SERVICE_ACCEPT_SHUTDOWN",
    "SERVICE_ACCEPT_STOP",
    "SERVICE_WIN32_OWN_PROCESS",
    "IllegalServiceMoveError",
    "ServiceLifecycle",
    "ServiceState",
    "ServiceStatus",
    "exit_message",
]

SERVICE_WIN32_OWN_PROCESS: Final = 0x10
SERVICE_ACCEPT_STOP: Final = 0x1
SERVICE_ACCEPT_SHUTDOWN: Final = 0x4
NO_ERROR: Final = 0
ERROR_SERVICE_SPECIFIC_ERROR: Final = 1066

START_WAIT_HINT_MS: Final = 30_000
"""The agent is ready in well under a second; loading a large cached policy or an audit
directory on a slow disk must still not look like a hung start."""
STOP_WAIT_HINT_MS: Final = 15_000
"""Closing the listeners and flushing the audit log; the SCM's own limit at shutdown is
about 20 s (WaitToKillServiceTimeout)."""


class ServiceState(IntEnum):
    STOPPED = 1
    START_PENDING = 2
    STOP_PENDING = 3
    RUNNING = 4


class IllegalServiceMoveError(RuntimeError):
    """A move the SCM's protocol does not allow (our bug, not the system's)."""


@dataclass(frozen=True)
class ServiceStatus:
    """One ``SERVICE_STATUS``, in the order of ``win32service.SetServiceStatus``'s tuple."""

    state: ServiceState
    controls_accepted: int
    win32_exit_code: int = NO_ERROR
    service_exit_code: int = 0
    checkpoint: int = 0
    wait_hint_ms: int = 0

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int]:
        return (
            SERVICE_WIN32_OWN_PROCESS,
            int(self.state),
            self.controls_accepted,
            self.win32_exit_code,
            self.service_exit_code,
            self.checkpoint,
            self.wait_hint_ms,
        )


_MOVES: Final[dict[ServiceState | None, frozenset[ServiceState]]] = {
    None: frozenset({ServiceState.START_PENDING}),
    # A pending state may be reported again (the checkpoint goes up); a failed start goes
    # straight to STOPPED with its exit code.
    ServiceState.START_PENDING: frozenset(
        {
            ServiceState.START_PENDING,
            ServiceState.RUNNING,
            ServiceState.STOP_PENDING,
            ServiceState.STOPPED,
        }
    ),
    ServiceState.RUNNING: frozenset({ServiceState.STOP_PENDING, ServiceState.STOPPED}),
    ServiceState.STOP_PENDING: frozenset({ServiceState.STOP_PENDING, ServiceState.STOPPED}),
    ServiceState.STOPPED: frozenset(),
}


class ServiceLifecycle:
    """The service's state and the status report for each move.

    Stop and shutdown are accepted only while running: during the start the agent has
    nothing to stop yet, and a stop asked for then is remembered by the agent's handle
    (``agent.daemon.main.AgentHandle``) and done once the loop runs.
    """

    def __init__(self) -> None:
        self.state: ServiceState | None = None
        self._checkpoint = 0
        self.stop_requested = False

    def _move(self, state: ServiceState) -> None:
        if state not in _MOVES[self.state]:
            was = self.state.name if self.state is not None else "nothing reported"
            raise IllegalServiceMoveError(f"service status: {was} -> {state.name}")
        self._checkpoint = self._checkpoint + 1 if state == self.state else 1
        self.state = state

    def start_pending(self) -> ServiceStatus:
        self._move(ServiceState.START_PENDING)
        return ServiceStatus(
            ServiceState.START_PENDING,
            0,
            checkpoint=self._checkpoint,
            wait_hint_ms=START_WAIT_HINT_MS,
        )

    def running(self) -> ServiceStatus:
        self._move(ServiceState.RUNNING)
        return ServiceStatus(ServiceState.RUNNING, SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN)

    def stop_pending(self) -> ServiceStatus:
        self._move(ServiceState.STOP_PENDING)
        return ServiceStatus(
            ServiceState.STOP_PENDING,
            0,
            checkpoint=self._checkpoint,
            wait_hint_ms=STOP_WAIT_HINT_MS,
        )

    def request_stop(self) -> ServiceStatus | None:
        """SvcStop or SvcShutdown: the STOP_PENDING to report, or None when a stop is
        already under way (the SCM may send shutdown after stop)."""
        if self.stop_requested or self.state in (ServiceState.STOP_PENDING, ServiceState.STOPPED):
            return None
        self.stop_requested = True
        return self.stop_pending()

    def stopped(self, agent_exit_code: int) -> ServiceStatus:
        """The final report: ``pullgate agent``'s exit code (0, 1 serving failed, 2 bad
        configuration) as the service-specific code, so ``sc query`` shows it and the
        recovery actions (``sc failureflag 1``) restart a service that failed."""
        self._move(ServiceState.STOPPED)
        if agent_exit_code == 0:
            return ServiceStatus(ServiceState.STOPPED, 0)
        return ServiceStatus(
            ServiceState.STOPPED,
            0,
            win32_exit_code=ERROR_SERVICE_SPECIFIC_ERROR,
            service_exit_code=agent_exit_code,
        )


def exit_message(service: str, agent_exit_code: int, last_lines: list[str], log_path: str) -> str:
    """The Event Log text for a service whose agent returned ``agent_exit_code``: what
    happened, the agent's last words (its own one-line errors name the key or file), and
    where the rest is."""
    meaning = {
        0: "stopped",
        1: "stopped: serving failed",
        2: "could not start: the configuration cannot be used",
    }.get(agent_exit_code, "stopped with an error")
    text = f"{service} {meaning} (exit code {agent_exit_code})."
    if last_lines:
        text += "\n\n" + "\n".join(line.rstrip("\n") for line in last_lines[-10:])
    return f"{text}\n\nThe agent's output: {log_path}"
