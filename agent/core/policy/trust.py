"""Which signed policy to trust: accept or refuse an envelope, and how fresh it is.

Pure, like python-tuf's trusted metadata set: bytes, the trust settings, the high-water
state and a ``now`` go in; an accepted policy or a ``PolicyRefusedError`` naming the
reason comes out. Downloading and writing the cache are not handled here — the caller
persists an envelope only after this module accepted it.

Rules (for admins: docs/admin-guide.md): the signatures of at least ``threshold`` trusted
keys verify; ``org`` matches; ``serial`` is higher than the highest accepted (equal only
with identical bytes, which means "nothing new"); a new envelope's ``issued_at`` is not in
the future beyond a small skew (judged by the clock floor when the clock runs behind it);
the policy is not expired beyond the grace period. The highest ``issued_at`` ever
accepted is kept as a clock floor: a clock set back is reported and not obeyed, so
setting the clock back cannot revive an old policy or postpone expiry. The high-water
state records its org; one recorded for another org (the config's org was changed) does
not bind this org's policies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.core.durations import format_duration
from agent.core.policy.document import (
    Action,
    HubSettings,
    Mode,
    Policy,
    PolicyError,
    RegistrySettings,
    load_policy,
)

if TYPE_CHECKING:
    from agent.core.policy.envelope import PublicKey

__all__ = [
    "Accepted",
    "Freshness",
    "HighWater",
    "PolicyRefusedError",
    "StaleBehavior",
    "TrustSettings",
    "effective_policy",
    "evaluate_envelope",
    "freshness",
]

MAX_FUTURE_SKEW = timedelta(minutes=5)


class PolicyRefusedError(Exception):
    """An envelope that must not become the policy; ``reason`` says why, for people."""

    def __init__(self, reason: str, *, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # signature | invalid | org | rollback | future | expired | conflict


class Freshness(StrEnum):
    FRESH = "fresh"
    STALE = "stale"  # past expires_at, within the offline grace period
    EXPIRED = "expired"  # past expires_at + grace: stale_behavior applies


class StaleBehavior(StrEnum):
    """What the agent does once the cached policy is past ``expires_at`` + ``offline_grace``."""

    ENFORCE_LAST = "enforce-last"
    MONITOR = "monitor"
    DENY_ALL = "deny-all"


@dataclass(frozen=True)
class TrustSettings:
    org: str
    trusted_keys: tuple[PublicKey, ...]
    threshold: int = 1
    offline_grace: timedelta = timedelta(days=7)
    stale_behavior: StaleBehavior = StaleBehavior.ENFORCE_LAST


@dataclass(frozen=True)
class HighWater:
    """What has been accepted before: rollback and clock-floor protection."""

    serial: int
    payload_sha256: str
    issued_at_floor: datetime
    # The org whose policies these are; None in a state written before it was recorded.
    # Another org's serials say nothing about this org's (after an org change in config).
    org: str | None = None

    def to_json(self) -> dict[str, object]:
        value: dict[str, object] = {
            "serial": self.serial,
            "payload_sha256": self.payload_sha256,
            "issued_at_floor": self.issued_at_floor.isoformat(),
        }
        if self.org is not None:
            value["org"] = self.org
        return value

    @classmethod
    def from_json(cls, value: object) -> HighWater:
        if not isinstance(value, dict):
            raise ValueError("high-water state must be an object")
        serial = value.get("serial")
        digest = value.get("payload_sha256")
        floor = value.get("issued_at_floor")
        if not isinstance(serial, int) or not isinstance(digest, str) or not isinstance(floor, str):
            raise ValueError("high-water state has missing or mistyped fields")
        if isinstance(serial, bool) or serial < 0:
            raise ValueError("high-water serial must be a non-negative integer")
        org = value.get("org")
        if org is not None and not isinstance(org, str):
            raise ValueError("high-water org must be a string")
        parsed = datetime.fromisoformat(floor)
        if parsed.tzinfo is None:
            raise ValueError("high-water issued_at_floor needs a time zone")
        try:
            return cls(serial, digest, parsed.astimezone(UTC), org)
        except OverflowError as e:  # year 1 or 9999 with an offset
            raise ValueError(f"high-water issued_at_floor is out of range: {e}") from None


@dataclass(frozen=True)
class Accepted:
    policy: Policy
    envelope: bytes
    high_water: HighWater
    new: bool  # False: the same policy again ("nothing new", not a failure)
    signers: tuple[str, ...]


def effective_now(now: datetime, high_water: HighWater | None) -> tuple[datetime, bool]:
    """The time to judge freshness by, and whether the clock runs behind the floor."""
    if high_water is not None and now + MAX_FUTURE_SKEW < high_water.issued_at_floor:
        return high_water.issued_at_floor, True
    return now, False


def evaluate_envelope(
    data: bytes,
    settings: TrustSettings,
    high_water: HighWater | None,
    now: datetime,
    *,
    source: str,
    allow_expired: bool = False,
) -> Accepted:
    """Accept ``data`` as the policy, or raise ``PolicyRefusedError``.

    ``allow_expired`` is for the agent's own cache: a cached policy that has expired is
    still the last-known-good one, and ``stale_behavior`` — not a refusal — decides what
    happens past its grace.
    """
    from agent.core.policy.envelope import EnvelopeError, verify_envelope  # noqa: PLC0415 - cryptography

    try:
        verified = verify_envelope(data, settings.trusted_keys, settings.threshold)
    except EnvelopeError as e:
        raise PolicyRefusedError(f"signature check failed: {e}", kind="signature") from e
    try:
        policy = load_policy(verified.payload, source=source)
    except PolicyError as e:
        raise PolicyRefusedError(
            f"signed payload is not a valid policy: {e}", kind="invalid"
        ) from e
    if policy.org != settings.org:
        raise PolicyRefusedError(
            f"policy is for org {policy.org!r}, this machine belongs to {settings.org!r}",
            kind="org",
        )
    digest = hashlib.sha256(verified.payload).hexdigest()
    if high_water is not None and high_water.org not in (None, settings.org):
        # Recorded for another org: this machine's org was changed in its config. The old
        # org's serials and clock floor do not bind the new org's policies.
        high_water = None
    judged_now, _ = effective_now(now, high_water)
    new = True
    if high_water is not None:
        if policy.serial < high_water.serial:
            raise PolicyRefusedError(
                f"rollback: serial {policy.serial} is lower than the accepted serial "
                f"{high_water.serial}",
                kind="rollback",
            )
        if policy.serial == high_water.serial:
            if digest != high_water.payload_sha256:
                raise PolicyRefusedError(
                    f"serial {policy.serial} was already accepted with different content; "
                    "a changed policy needs a higher serial",
                    kind="conflict",
                )
            new = False
    # "Future" is judged by the same clock as expiry: the floor when the clock runs behind
    # it. An envelope already accepted (same serial, same bytes: the cache after a restart)
    # is not judged again, so a clock set back cannot discard the policy in force.
    if new and policy.issued_at > judged_now + MAX_FUTURE_SKEW:
        raise PolicyRefusedError(
            f"issued_at {policy.issued_at.isoformat()} is in the future (clock now "
            f"{judged_now.isoformat()})",
            kind="future",
        )
    if new and not allow_expired and judged_now > policy.expires_at + settings.offline_grace:
        raise PolicyRefusedError(
            f"policy expired at {policy.expires_at.isoformat()}, beyond the offline grace "
            f"of {format_duration(settings.offline_grace)}",
            kind="expired",
        )
    floor = policy.issued_at
    if high_water is not None and high_water.issued_at_floor > floor:
        floor = high_water.issued_at_floor
    return Accepted(
        policy=policy,
        envelope=data,
        high_water=HighWater(
            max(policy.serial, high_water.serial if high_water else 0), digest, floor, policy.org
        ),
        new=new,
        signers=verified.signers,
    )


def freshness(policy: Policy, now: datetime, grace: timedelta) -> Freshness:
    if now <= policy.expires_at:
        return Freshness.FRESH
    if now <= policy.expires_at + grace:
        return Freshness.STALE
    return Freshness.EXPIRED


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def effective_policy(
    policy: Policy, now: datetime, grace: timedelta, behavior: StaleBehavior
) -> tuple[Policy, Freshness]:
    """The policy to enforce now: past expiry plus grace, ``stale_behavior`` applies."""
    state = freshness(policy, now, grace)
    if state is Freshness.FRESH:
        return policy, state
    note = f"expired {_age(now - policy.expires_at)} ago"
    if state is Freshness.STALE:
        return replace(policy, note=f"{note}, within the offline grace"), state
    note += f"; stale_behavior {behavior}"
    if behavior is StaleBehavior.ENFORCE_LAST:
        return replace(policy, note=note), state
    if behavior is StaleBehavior.MONITOR:
        return replace(policy, mode=Mode.MONITOR, note=note), state
    deny = Action.DENY
    return (
        replace(
            policy,
            note=note,
            hub=HubSettings(
                official=deny, verified_publisher=deny, sponsored_oss=deny, community=deny
            ),
            registries=RegistrySettings(default=deny),
            rules=(),
            mode=Mode.ENFORCE,
        ),
        state,
    )
