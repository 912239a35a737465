"""Pullgate agent: enforces container-image policy in front of the Docker socket.

The layers and their import rules: docs/architecture.md.
"""

__version__ = "0.1.0"
