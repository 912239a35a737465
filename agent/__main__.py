"""``python -m agent`` runs the ``pullgate`` command."""

import sys

from agent.cli.main import main

sys.exit(main())
