"""``pullgate service``: the Windows service's entry point (the MSI's ServiceInstall runs
``pullgate.exe service``). The Service Control Manager starts it as LocalSystem; it runs
``pullgate agent`` with the arguments that follow, inside the service
(``agent.daemon.winservice``), where Windows can see it start and ask it to stop.

Nothing heavy is imported until the service runs: if the agent cannot be imported on
this machine, the service reports that in the Event Log and stops with an error, instead
of exiting before it ever answered the SCM (error 1053, and the MSI's install rolled
back).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.daemon.handle import AgentHandle

EXIT_NOT_WINDOWS = 2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "service",
        help="run the agent as the Windows service PullgateAgent (Windows only)",
        description=(
            "The entry point of the Windows service PullgateAgent, which the MSI installs "
            "and the Service Control Manager starts; `pullgate agent` in a console. "
            "Arguments after `--` are `pullgate agent`'s; none are needed (paths default "
            "to %%ProgramData%%\\Pullgate, settings come from the policy key)."
        ),
    )
    parser.add_argument(
        "agent_args",
        nargs=argparse.REMAINDER,
        metavar="-- AGENT-OPTION",
        help="`pullgate agent` options, after `--`",
    )
    parser.set_defaults(run=run)


def run_agent_in_service(agent_args: Sequence[str], handle: AgentHandle) -> int:
    """``pullgate agent AGENT_ARGS`` with the service's handle (its stop and readiness)."""
    from agent.cli import agent_cmd  # noqa: PLC0415 - inside the service (see above)
    from agent.cli.main import build_parser  # noqa: PLC0415

    argv = ["agent", *agent_args]
    return agent_cmd.run(build_parser(argv).parse_args(argv), handle=handle)


def agent_arguments(args: argparse.Namespace) -> list[str]:
    """The agent's arguments: what follows ``--`` (argparse keeps the ``--``)."""
    rest: list[str] = list(args.agent_args)
    return rest[1:] if rest[:1] == ["--"] else rest


def run(args: argparse.Namespace) -> int:
    agent_args = agent_arguments(args)
    if sys.platform == "win32":
        import functools  # noqa: PLC0415

        from agent.daemon import winservice  # noqa: PLC0415 - pywin32, Windows only

        return winservice.serve(functools.partial(run_agent_in_service, agent_args))
    else:  # an else, so that mypy --platform win32 sees no unreachable code here
        print(
            "pullgate service: the Windows service's entry point; on this system the "
            "service manager (systemd, launchd) runs `pullgate agent`",
            file=sys.stderr,
        )
        return EXIT_NOT_WINDOWS
