"""``pullgate policy status|refresh``: the org policy as the running agent sees it.

``refresh`` asks the control API (``POST /v1/policy/refresh``); where it does not answer,
a unix agent is sent SIGHUP. On Windows the agent is a service with no signals: the
control pipe is the only way, and the failure says what to do instead."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.status_cmd import refresh_overdue
from agent.control.client import ControlError, first_answer
from agent.core.text import printable
from agent.daemon.policy_manager import read_status
from agent.platform.paths import default_state_dir

if TYPE_CHECKING:
    import psutil

EXIT_OK = 0
EXIT_PROBLEM = 1


def register(commands: Any) -> None:
    parser = commands.add_parser("policy", help="the org policy: status, refresh")
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    status = sub.add_parser("status", help="org, serial, expiry, age, source, state, errors")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state-dir", metavar="DIR")
    status.set_defaults(run=run_status)
    refresh = sub.add_parser("refresh", help="ask the running agent to fetch the policy now")
    refresh.add_argument("--state-dir", metavar="DIR")
    refresh.add_argument("--timeout", type=float, default=30.0)
    refresh.add_argument("--control", metavar="PATH", help="the agent's control socket")
    refresh.set_defaults(run=run_refresh)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _agent_pid(state_dir: Path) -> int | None:
    if sys.platform == "win32":
        return _service_pid(state_dir)
    else:
        process = _agent_process(state_dir)
        return None if process is None else process.pid


def _service_pid(state_dir: Path) -> int | None:
    """On Windows, the agent named by ``agent.pid`` if it is the ``PullgateAgent``
    service's process as the Service Control Manager reports it (the service runs as
    LocalSystem, whose process a user cannot inspect; the SCM answers anyone)."""
    try:
        pid = int((state_dir / "agent.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pid == _scm_agent_pid() else None


def _scm_agent_pid() -> int | None:
    """The ``PullgateAgent`` service's process id, the Service Control Manager's word."""
    if sys.platform == "win32":
        from agent.platform.pipe_client import agent_service_pid  # noqa: PLC0415

        return agent_service_pid()
    else:
        return None


def _agent_process(state_dir: Path) -> psutil.Process | None:
    """The running agent named by ``agent.pid``, or None.

    A pid file can outlive its agent (a crash, a reboot) and its number be reused by any
    process; 0 and -1 would name a process group or every process. So the pid must be
    above 1, the process must run ``pullgate agent`` (or ``python -m agent agent``), run as
    the pid file's owner, and — when its command line names a ``--state-dir`` — serve this
    state directory. Signal it through the returned object: psutil refuses to signal a
    process that has since exited and whose pid was reused.
    """
    if sys.platform == "win32":
        return None  # the LocalSystem service: _service_pid
    else:
        import psutil  # noqa: PLC0415 - only when the agent has to be found

        pidfile = state_dir / "agent.pid"
        try:
            pid = int(pidfile.read_text().strip())
            owner = pidfile.stat().st_uid
        except (OSError, ValueError):
            return None
        if pid <= 1:
            return None
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                command = process.cmdline()
                uid = process.uids().real
            if uid != owner or not _is_agent_command(command):
                return None
            named = _named_state_dir(command)
            if named is not None and not _same_dir(Path(process.cwd()) / named, state_dir):
                return None
        except (psutil.Error, OSError):
            return None
        return process


def _is_agent_command(command: list[str]) -> bool:
    """``… pullgate agent …`` or ``… -m agent agent …``."""
    for i, word in enumerate(command[:-1]):
        if Path(word).name == "pullgate" and command[i + 1] == "agent":
            return True
        if word == "-m" and command[i + 1 : i + 3] == ["agent", "agent"]:
            return True
    return False


def _named_state_dir(command: list[str]) -> str | None:
    for i, word in enumerate(command):
        if word == "--state-dir" and i + 1 < len(command):
            return command[i + 1]
        if word.startswith("--state-dir="):
            return word.partition("=")[2]
    return None


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve(strict=True) == b.resolve(strict=True)
    except (OSError, RuntimeError):
        return False


def _print_status(status: dict[str, Any]) -> None:
    fields = [
        ("org", status.get("org")),
        ("serial", status.get("serial")),
        ("issued", status.get("issued_at")),
        ("expires", status.get("expires_at")),
        ("age", _age(status.get("age_seconds"))),
        ("source", status.get("source")),
        ("state", f"{status.get('state')} (stale_behavior {status.get('stale_behavior')})"),
        ("enforcing", status.get("enforcing")),
        ("policy url", status.get("policy_url")),
        ("last fetch", status.get("last_fetch_at")),
        ("last error", status.get("last_fetch_error")),
        ("last refusal", status.get("last_refusal")),
        ("refresh", _refresh_line(status)),
        ("refresh error", status.get("last_refresh_error")),
        ("next refresh", status.get("next_refresh_at")),
    ]
    for name, value in fields:
        if value is not None:
            print(printable(f"{name + ':':<14}{value}"))  # a state file may hold escapes
    if status.get("clock_behind"):
        print("warning:      the system clock is behind the newest accepted policy")
    overdue = refresh_overdue(status)
    if overdue is not None:
        print(printable(f"warning:      {overdue}"))


def _refresh_line(status: dict[str, Any]) -> str | None:
    loop = status.get("refresh_loop")
    if loop is None:
        return None
    failures = status.get("refresh_failures")
    if isinstance(failures, int) and failures:
        return f"loop {loop}, {failures} failed in a row"
    return f"loop {loop}"


def refresh_broken(status: dict[str, Any]) -> bool:
    """A refresh loop that stopped or is stuck (overdue by more than a whole fetch), that
    failed for a reason other than the network, or whose latest download was refused
    (unsigned, rolled back, another org's: the agent stops taking updates).

    A failed download alone is not: a laptop offline is normal and keeps its policy (it
    is shown, and ``doctor`` reports it)."""
    return (
        status.get("refresh_loop") in ("dead", "stopped")
        or bool(status.get("last_refresh_error"))
        or bool(status.get("last_refusal"))
        or refresh_overdue(status) is not None
    )


def _age(seconds: object) -> str | None:
    if not isinstance(seconds, int | float):
        return None
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def run_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    status = read_status(state_dir)
    if status is None:
        print(f"pullgate policy status: no agent status in {state_dir}", file=sys.stderr)
        return EXIT_PROBLEM
    status["agent_running"] = _agent_pid(state_dir) is not None
    if not status["agent_running"] and status.get("refresh_loop") == "running":
        status["refresh_loop"] = "not running"  # its last status; no agent runs it now
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
        if not status["agent_running"]:
            print("warning:      the agent is not running (this is its last status)")
    problem = (
        status.get("state") in ("expired", "fallback")
        or not status["agent_running"]
        or refresh_broken(status)
    )
    return EXIT_PROBLEM if problem else EXIT_OK


def _refresh_via_control(args: argparse.Namespace) -> int | ControlError:
    """Ask the agent's control API; the error when no agent answers there."""
    try:
        _, status, body = first_answer(
            args.control, "POST", "/v1/policy/refresh", timeout=args.timeout
        )
    except ControlError as e:
        return e
    message = body.get("result") or body.get("message") if isinstance(body, dict) else body
    print(printable(f"pullgate policy refresh: {message}"))
    refused = isinstance(message, str) and message.startswith("refused:")
    return EXIT_OK if status == 200 and not refused else EXIT_PROBLEM


WINDOWS_REFRESH_HINT = (
    "On Windows the agent (the PullgateAgent service) refreshes only when asked through "
    "its control pipe, or by itself on its schedule. Check that the service runs "
    "(`Get-Service PullgateAgent`); an administrator can restart it "
    "(`Restart-Service PullgateAgent`), and it fetches the policy as it starts."
)


def run_refresh(args: argparse.Namespace) -> int:
    answered = _refresh_via_control(args)
    if isinstance(answered, int):
        return answered
    if sys.platform == "win32":
        print(f"pullgate policy refresh: the agent is not reachable: {answered}", file=sys.stderr)
        print(WINDOWS_REFRESH_HINT, file=sys.stderr)
        return EXIT_PROBLEM
    else:  # SIGHUP to the agent named by the pid file, then wait for its next fetch
        state_dir = _state_dir(args)
        agent = _agent_process(state_dir)
        if agent is None:
            print(
                f"pullgate policy refresh: the agent is not running (no live Pullgate agent named "
                f"by the pid file in {state_dir})",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
        before = (read_status(state_dir) or {}).get("last_fetch_at")
        import psutil  # noqa: PLC0415

        try:
            agent.send_signal(signal.SIGHUP)  # refused if the pid now names another process
        except psutil.Error as e:  # gone, or not ours to signal
            print(f"pullgate policy refresh: the agent is not running ({e})", file=sys.stderr)
            return EXIT_PROBLEM
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            status = read_status(state_dir) or {}
            if status.get("last_fetch_at") != before:
                _print_status(status)
                failed = status.get("last_fetch_error") or status.get("last_refusal")
                return EXIT_PROBLEM if failed else EXIT_OK
            time.sleep(0.1)
        print("pullgate policy refresh: the agent did not report a fetch in time", file=sys.stderr)
        return EXIT_PROBLEM
