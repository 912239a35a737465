"""The frozen ``pullgate`` (agent and CLI): ``agent.cli:main``, as the wheel's script."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
