"""Pullgate agent: image references, policy, decisions, and (later) the socket shim."""

__version__ = "0.1.0"
