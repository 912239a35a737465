"""The last-known-good policy on disk, written so that a crash never leaves half a file.

Only envelopes the policy store accepted are written here, and what is read back is
verified again before use: the cache is a copy, never a source of trust.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.core import strict_json
from agent.core.policy.trust import HighWater
from agent.daemon.policy_fetch import usable_etag
from agent.platform.files import FileTooLargeError, atomic_write, read_capped

__all__ = ["CachedPolicy", "PolicyCache"]

# The envelope limit of agent.core.policy.envelope (not imported: it loads cryptography).
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_STATE_BYTES = 1024 * 1024


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
            envelope = read_capped(self.envelope_path, MAX_ENVELOPE_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cannot read cached policy {self.envelope_path}: {e.strerror}")
        except FileTooLargeError as e:
            problems.append(f"ignoring cached policy: {e}")
        high_water = None
        etag = None
        try:
            state = strict_json.loads(
                read_capped(self.state_path, MAX_STATE_BYTES, follow_symlinks=False)
            )
            if not isinstance(state, dict):
                raise ValueError("expected a JSON object")
            high_water = HighWater.from_json(state.get("high_water"))
            raw_etag = state.get("etag")
            # Sent back as If-None-Match: one that requests refuses (leading space, CR,
            # LF) would fail every fetch, so an edited ETag is dropped, not sent.
            etag = usable_etag(raw_etag)
            if raw_etag is not None and etag is None:
                problems.append(f"ignoring an unusable ETag in {self.state_path}")
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:  # StrictJSONError and FileTooLargeError too
            problems.append(f"ignoring unreadable policy state {self.state_path}: {e}")
        return CachedPolicy(envelope, high_water, etag, tuple(problems))

    def save(self, envelope: bytes, high_water: HighWater, etag: str | None) -> None:
        """Envelope first, then the state that refers to it."""
        atomic_write(self.envelope_path, envelope)
        self.save_state(high_water, etag)

    def save_state(self, high_water: HighWater, etag: str | None) -> None:
        state = {"high_water": high_water.to_json(), "etag": etag}
        atomic_write(self.state_path, json.dumps(state, indent=2).encode() + b"\n")
