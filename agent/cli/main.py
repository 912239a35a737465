"""Entry point of the ``pullgate`` command: parse arguments, dispatch to a subcommand.

Only the chosen subcommand's module is imported: the agent must not pay, in start time
and memory, for the admin tools' cryptography or the CLI's HTTP client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__

EXIT_USAGE = 2

#: Subcommand → module with ``register(commands)``, in the order ``--help`` lists them.
COMMANDS = {
    "check": "agent.cli.check",
    "agent": "agent.cli.agent_cmd",
    "service": "agent.cli.service_cmd",
    "policy": "agent.cli.policy_cmd",
    "status": "agent.cli.status_cmd",
    "doctor": "agent.cli.status_cmd",
    "context": "agent.cli.context_cmd",
    "audit": "agent.cli.audit_cmd",
    "login": "agent.cli.login_cmd",
    "whoami": "agent.cli.login_cmd",
    "logout": "agent.cli.login_cmd",
    "admin": "agent.cli.admin",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullgate",
        description="Enforce your organisation's container image policy on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"pullgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    args = list(sys.argv[1:] if argv is None else argv)
    chosen = args[0] if args and args[0] in COMMANDS else None
    modules = [COMMANDS[chosen]] if chosen else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    result: int = args.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
