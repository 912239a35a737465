"""The Windows service ``PullgateAgent``: ``pullgate service``, started by the Service
Control Manager as LocalSystem (packaging/windows/Pullgate.wxs installs it).

Windows only (pywin32); never imported elsewhere: ``agent.cli.service_cmd`` imports it
under ``sys.platform == "win32"``, and mypy checks it with ``--platform win32``
(scripts/test.sh). What is decided here is decided in pure modules
tested on Linux: the status reports (``agent.platform.service_status``), the paths and
names (``agent.platform.windows``), the stop across threads (``agent.daemon.handle``).

The flow: ``serve`` sends the agent's output to ``%ProgramData%\\Pullgate\\Logs\\agent.log``
(a service has no console), then hands the process to the SCM's dispatcher, which calls
``PullgateService.SvcRun`` on the service's main thread. That reports START_PENDING,
runs the agent (``pullgate agent`` with the service's arguments: the managed config
from the registry, the paths from ``agent.platform.windows``), whose handle reports
RUNNING once the shim serves. The agent is imported only then, so an agent that cannot
even be imported is reported in the Event Log and as a failed start, not as a service
that never answered (error 1053). ``SvcStop``/``SvcShutdown`` come on the
SCM's control thread: they report STOP_PENDING and ask the agent's loop to stop. When
``run_agent`` returns, pywin32's framework reports SERVICE_STOPPED: without an error if
``SvcRun`` returns, with one if it raises, which it does for a non-zero exit so the
recovery actions (``sc failureflag 1``) restart the service. Start, stop and failures go
to the Event Log (Application, source ``PullgateAgent``).

Never run here: there is no Windows machine (docs/deploy/windows.md).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import os
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import pywintypes
import servicemanager
import win32service
import win32serviceutil

from agent.daemon.handle import AgentHandle
from agent.platform import windows
from agent.platform.service_output import OutputTail, open_service_log
from agent.platform.service_status import (
    ServiceLifecycle,
    ServiceState,
    ServiceStatus,
    exit_message,
)

__all__ = ["AgentMain", "PullgateService", "ServiceFailedError", "serve"]

AgentMain = Callable[[AgentHandle], int]
"""Runs the agent until the handle stops it; returns ``pullgate agent``'s exit code."""

ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063


class ServiceFailedError(RuntimeError):
    """Raised from ``SvcRun`` so that the service stops with an error code."""


class PullgateService(win32serviceutil.ServiceFramework):
    _svc_name_ = windows.SERVICE_NAME
    _svc_display_name_ = windows.SERVICE_DISPLAY_NAME
    agent_main: ClassVar[AgentMain | None] = None
    output: ClassVar[OutputTail | None] = None
    log_path: ClassVar[str] = ""

    def __init__(self, args: Iterable[str]) -> None:
        super().__init__(args)
        self._lock = threading.Lock()
        self._lifecycle = ServiceLifecycle()
        self._last: ServiceStatus | None = None
        self._handle = AgentHandle(on_ready=self._on_ready)

    # ---------------------------------------------------------------- status

    def _report(self, status: ServiceStatus | None) -> None:
        """SetServiceStatus; called with ``_lock`` held so reports keep their order."""
        if status is None:
            return
        self._last = status
        try:
            win32service.SetServiceStatus(self.ssh, status.as_tuple())
        except pywintypes.error as e:  # the SCM is gone: nothing left to tell
            servicemanager.LogWarningMsg(f"{self._svc_name_}: SetServiceStatus failed: {e}")

    def _on_ready(self) -> None:
        """On the agent's loop thread, once the shim serves."""
        with self._lock:
            if self._lifecycle.state is ServiceState.START_PENDING:
                self._report(self._lifecycle.running())
        servicemanager.LogMsg(
            servicemanager.EVENTLOG_INFORMATION_TYPE,
            servicemanager.PYS_SERVICE_STARTED,
            (self._svc_name_, ""),
        )

    # ---------------------------------------------------------------- the SCM's calls

    def SvcStop(self) -> None:  # noqa: N802 - pywin32's names
        with self._lock:
            self._report(self._lifecycle.request_stop())
        self._handle.request_stop()

    def SvcShutdown(self) -> None:  # noqa: N802
        self.SvcStop()

    def SvcInterrogate(self) -> None:  # noqa: N802
        with self._lock:
            self._report(self._last)

    def SvcRun(self) -> None:  # noqa: N802
        with self._lock:
            self._report(self._lifecycle.start_pending())
        code = self._run_agent()
        with self._lock:
            if self._lifecycle.state is not ServiceState.STOP_PENDING:
                self._report(self._lifecycle.stop_pending())
            self._lifecycle.stopped(code)  # pywin32 reports it once SvcRun is done
        lines = list(self.output.lines) if self.output is not None else []
        message = exit_message(self._svc_name_, code, lines, self.log_path)
        if code == 0:
            servicemanager.LogMsg(
                servicemanager.EVENTLOG_INFORMATION_TYPE,
                servicemanager.PYS_SERVICE_STOPPED,
                (self._svc_name_, ""),
            )
            return
        servicemanager.LogErrorMsg(message)
        raise ServiceFailedError(message)

    def _run_agent(self) -> int:
        main = type(self).agent_main
        if main is None:
            servicemanager.LogErrorMsg(f"{self._svc_name_}: started without the agent")
            return 1
        try:
            return main(self._handle)
        except SystemExit as e:  # argparse on bad service arguments
            return e.code if isinstance(e.code, int) else 2
        except Exception:
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            servicemanager.LogErrorMsg(f"{self._svc_name_}: the agent failed:\n{text}")
            return 1


def serve(main: AgentMain) -> int:
    """Run as the service: the process belongs to the SCM's dispatcher until it stops.

    Started by hand (not by the SCM), say so and return 2 instead of waiting."""
    console = sys.stderr
    log_path = Path(windows.agent_log_path(os.environ))
    output = OutputTail(open_service_log(log_path))
    PullgateService.agent_main = main
    PullgateService.output = output
    PullgateService.log_path = str(log_path)
    sys.stdout = sys.stderr = output
    servicemanager.Initialize(windows.EVENT_SOURCE, None)
    servicemanager.PrepareToHostSingle(PullgateService)
    try:
        servicemanager.StartServiceCtrlDispatcher()  # type: ignore[no-untyped-call]
    except pywintypes.error as e:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if e.winerror == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT and console is not None:
            print(
                f"pullgate service: only the Service Control Manager starts this "
                f"(Start-Service {windows.SERVICE_NAME}); in a console run `pullgate agent`",
                file=console,
            )
        elif console is not None:
            print(f"pullgate service: {e}", file=console)
        return 2
    return 0
