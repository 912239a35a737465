"""The ``pullgate`` command line: one module per subcommand, wired up in ``main``."""

from agent.cli.main import main

__all__ = ["main"]
