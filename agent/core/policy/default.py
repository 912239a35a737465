"""The built-in policy, used only when no organisation policy is configured.

It mirrors a sensible Image Access Management baseline: Docker Official Images and
Verified Publisher images (an empty publisher list until the org provides one) are
allowed, Sponsored OSS and community images are denied, other registries are allowed.
It is enforced, never merely monitored, so a fresh install already protects.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.core.policy.document import (
    Action,
    BuildsSetting,
    HubSettings,
    LoadSetting,
    Mode,
    OnCreateSetting,
    Policy,
    RegistrySettings,
)

__all__ = ["DEFAULT_POLICY_SOURCE", "default_policy"]

DEFAULT_POLICY_SOURCE = "the built-in default policy"


def default_policy() -> Policy:
    """A fresh copy of the built-in policy (serial 0, never expires)."""
    return Policy(
        org="",
        serial=0,
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=datetime(9999, 12, 31, tzinfo=UTC),
        mode=Mode.ENFORCE,
        require_sign_in=False,
        hub=HubSettings(
            org_namespaces=frozenset(),
            official=Action.ALLOW,
            verified_publisher=Action.ALLOW,
            sponsored_oss=Action.DENY,
            community=Action.DENY,
        ),
        registries=RegistrySettings(default=Action.ALLOW),
        rules=(),
        # BuildKit builds cannot be inspected, so the safe default refuses them; the
        # classic builder is inspected in full.
        builds=BuildsSetting.DENY,
        load=LoadSetting.CHECK,
        on_create=OnCreateSetting.CHECK,
        source=DEFAULT_POLICY_SOURCE,
    )
