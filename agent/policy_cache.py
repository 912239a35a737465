"""The last-known-good policy on disk, written so that a crash never leaves half a file.

Only envelopes the policy store accepted are written here, and what is read back is
verified again before use: the cache is a copy, never a source of trust.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.files import atomic_write
from agent.policy_store import HighWater

__all__ = ["CachedPolicy", "PolicyCache"]


@dataclass(frozen=True)
class CachedPolicy:
    envelope: bytes | None
    high_water: HighWater | None
    etag: str | None
    problems: tuple[str, ...]


class PolicyCache:
    """``policy.envelope`` (the accepted bytes) and ``policy-state.json`` (high water)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.envelope_path = directory / "policy.envelope"
        self.state_path = directory / "policy-state.json"

    def load(self) -> CachedPolicy:
        problems: list[str] = []
        envelope = None
        try:
            envelope = self.envelope_path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cannot read cached policy {self.envelope_path}: {e.strerror}")
        high_water = None
        etag = None
        try:
            state = json.loads(self.state_path.read_text())
            high_water = HighWater.from_json(state.get("high_water"))
            raw_etag = state.get("etag")
            etag = raw_etag if isinstance(raw_etag, str) else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            problems.append(f"ignoring unreadable policy state {self.state_path}: {e}")
        return CachedPolicy(envelope, high_water, etag, tuple(problems))

    def save(self, envelope: bytes, high_water: HighWater, etag: str | None) -> None:
        """Envelope first, then the state that refers to it."""
        atomic_write(self.envelope_path, envelope)
        self.save_state(high_water, etag)

    def save_state(self, high_water: HighWater, etag: str | None) -> None:
        state = {"high_water": high_water.to_json(), "etag": etag}
        atomic_write(self.state_path, json.dumps(state, indent=2).encode() + b"\n")
