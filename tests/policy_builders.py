"""Small helpers that build policy documents for tests."""

from __future__ import annotations

import copy
from typing import Any

from agent.core.policy.document import Policy, parse_policy

BASE: dict[str, Any] = {
    "schema": "pullgate.policy/v1",
    "org": "acme",
    "serial": 7,
    "issued_at": "2026-11-01T00:00:00Z",
    "expires_at": "2027-11-01T00:00:00Z",
    "hub": {
        "org_namespaces": ["acme"],
        "official": "allow",
        "verified_publisher": "allow",
        "sponsored_oss": "deny",
        "community": "deny",
        "verified_publisher_namespaces": ["verifiedco", "bitnami"],
        "sponsored_oss_namespaces": ["opensrc"],
    },
}


def document(**overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def policy(**overrides: Any) -> Policy:
    return parse_policy(document(**overrides), source="test policy")
