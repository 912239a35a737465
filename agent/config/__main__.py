"""``python -m agent.config --check``: check the managed config as the agent will read it."""

import sys

from agent.config.managed import main

sys.exit(main())
