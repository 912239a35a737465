"""Entry point of the ``pullgate`` command: parse arguments, dispatch to a subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    admin,
    agent_cmd,
    audit_cmd,
    check,
    context_cmd,
    policy_cmd,
    status_cmd,
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullgate",
        description="Enforce your organisation's container image policy on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"pullgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check.register(commands)
    agent_cmd.register(commands)
    policy_cmd.register(commands)
    status_cmd.register(commands)
    context_cmd.register(commands)
    audit_cmd.register(commands)
    admin.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    result: int = args.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
