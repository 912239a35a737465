"""Loading and validating policy documents: every error names the bad field's path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.core.policy.document import (
    Action,
    BuildsSetting,
    LoadSetting,
    Mode,
    PolicyError,
    load_policy,
)
from tests.policy_builders import document, policy


def _error(doc: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(json.dumps(doc))
    return info.value


def test_minimal_policy_gets_documented_defaults() -> None:
    p = load_policy(
        json.dumps(
            {
                "schema": "pullgate.policy/v1",
                "org": "acme",
                "serial": 1,
                "issued_at": "2026-01-01T00:00:00Z",
                "expires_at": "2026-02-01T00:00:00+01:00",
            }
        )
    )
    assert p.mode is Mode.ENFORCE
    assert p.hub.community is Action.DENY
    assert p.builds is BuildsSetting.DENY
    assert p.load is LoadSetting.CHECK
    assert p.expires_at.utcoffset() is not None


def test_misspelt_rule_field_is_named_with_its_path() -> None:
    rules = [{"id": f"r{i}", "match": "nginx", "action": "allow"} for i in range(3)] + [
        {"id": "r3", "match": "nginx", "acton": "deny"}
    ]
    err = _error(document(rules=rules))
    assert err.path == "rules[3].acton"
    assert "did you mean 'action'" in str(err)


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"schema": "pullgate.policy/v2"}, "schema", "pullgate.policy/v1"),
        ({"serial": "7"}, "serial", "integer"),
        ({"serial": True}, "serial", "integer"),
        ({"serial": -1}, "serial", "negative"),
        ({"org": None}, "org", "required"),
        ({"issued_at": "2026-11-01"}, "issued_at", "time zone"),
        ({"expires_at": "tomorrow"}, "expires_at", "RFC 3339"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "later than issued_at"),
        ({"mode": "audit"}, "mode", "enforce | monitor"),
        ({"require_sign_in": "yes"}, "require_sign_in", "true or false"),
        ({"builds": "check"}, "builds", "deny | allow"),
        ({"load": "maybe"}, "load", "deny | check | allow"),
        ({"on_create": "deny"}, "on_create", "check | allow"),
        ({"hub": {"community": "block"}}, "hub.community", "allow | deny"),
        ({"hub": {"org_namespaces": ["Acme"]}}, "hub.org_namespaces[0]", "namespace"),
        ({"hub": {"org_namespaces": ["acme/app"]}}, "hub.org_namespaces[0]", "namespace"),
        ({"hub": {"verified": "allow"}}, "hub.verified", "did you mean"),
        ({"registries": {"allow": ["https://ghcr.io"]}}, "registries.allow[0]", "host[:port]"),
        ({"registries": {"deny": ["ghcr.*.io"]}}, "registries.deny[0]", "first label"),
        ({"registries": {"default": "maybe"}}, "registries.default", "allow | deny"),
        ({"rules": {}}, "rules", "array"),
        ({"rules": [{"id": "a", "match": "nginx"}]}, "rules[0].action", "required"),
        (
            {"rules": [{"id": "a", "match": "Nginx", "action": "allow"}]},
            "rules[0].match",
            "lowercase",
        ),
        (
            {"rules": [{"id": "a", "match": "a//b", "action": "allow"}]},
            "rules[0].match",
            "component",
        ),
        (
            {"rules": [{"id": "a", "match": "nginx:[a]", "action": "allow"}]},
            "rules[0].match",
            "tag",
        ),
        (
            {"rules": [{"id": "a", "match": "nginx@sha256:12", "action": "allow"}]},
            "rules[0].match",
            "digest",
        ),
        (
            {"rules": [{"id": "a", "match": "x", "action": "allow", "groups": []}]},
            "rules[0].groups",
            "nobody",
        ),
        (
            {
                "rules": [
                    {"id": "a", "match": "x", "action": "allow"},
                    {"id": "a", "match": "y", "action": "deny"},
                ]
            },
            "rules[1].id",
            "duplicate",
        ),
        ({"messages": {"help": "x"}}, "messages.help", "unknown field"),
    ],
)
def test_invalid_field_is_refused_with_its_path(
    overrides: dict[str, Any], path: str, fragment: str
) -> None:
    err = _error(document(**overrides))
    assert err.path == path
    assert fragment in str(err)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"org": "a", "org": "b"}', "duplicate key 'org'"),
        (b'{"serial": NaN}', "NaN"),
        (b"[]", "expected an object"),
    ],
)
def test_malformed_documents_are_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        load_policy(data)


def test_rules_are_compiled_with_normalised_patterns() -> None:
    p = policy(
        rules=[
            {"id": "nginx", "match": "nginx", "action": "allow"},
            {"id": "alias", "match": "registry-1.docker.io/someuser/*", "action": "allow"},
            {"id": "ghcr", "match": "GHCR.io/acme/**:1.*", "action": "allow"},
        ]
    )
    assert p.rules[0].pattern.components == ("library", "nginx")
    assert p.rules[1].pattern.domain == "docker.io"
    assert (p.rules[2].pattern.domain, p.rules[2].pattern.tag) == ("ghcr.io", "1.*")
