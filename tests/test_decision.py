"""The decision engine: categories, registries, rule specificity, identity and time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent.core.category import Category
from agent.core.decision import Decision, Identity, Verdict, decide
from agent.core.messages import denial_message
from agent.core.policy.default import default_policy
from agent.core.policy.document import Policy
from agent.core.reference import parse_normalized_named
from tests.policy_builders import policy

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def check(p: Policy, image: str, identity: Identity | None = None, **kw: Any) -> Decision:
    return decide(p, parse_normalized_named(image), now=kw.pop("now", NOW), identity=identity, **kw)


@pytest.mark.parametrize(
    ("image", "category", "verdict"),
    [
        ("alpine", Category.OFFICIAL, Verdict.ALLOW),
        ("library/nginx:1.27", Category.OFFICIAL, Verdict.ALLOW),
        ("acme/app", Category.ORG, Verdict.ALLOW),
        ("verifiedco/db", Category.VERIFIED_PUBLISHER, Verdict.ALLOW),
        ("opensrc/tool", Category.SPONSORED_OSS, Verdict.DENY),
        ("someuser/tool", Category.COMMUNITY, Verdict.DENY),
        ("library/nested/image", Category.COMMUNITY, Verdict.DENY),
        ("registry-1.docker.io/someuser/tool", Category.COMMUNITY, Verdict.DENY),
        ("registry.hub.docker.com/library/alpine", Category.OFFICIAL, Verdict.ALLOW),
        ("ghcr.io/someuser/tool", Category.REGISTRY, Verdict.ALLOW),
        ("localhost:5000/anything", Category.REGISTRY, Verdict.ALLOW),
    ],
)
def test_categories_decide_when_no_rule_matches(
    image: str, category: Category, verdict: Verdict
) -> None:
    d = check(policy(), image)
    assert (d.category, d.verdict) == (category, verdict)
    assert d.rule == f"category:{category}" or category is Category.REGISTRY


def test_org_namespace_is_allowed_even_when_all_hub_categories_are_denied() -> None:
    hub = {"org_namespaces": ["acme"], "official": "deny", "verified_publisher": "deny"}
    p = policy(hub=hub)
    assert check(p, "acme/app").verdict is Verdict.ALLOW
    assert check(p, "alpine").verdict is Verdict.DENY


def test_default_policy_allows_official_and_denies_community() -> None:
    p = default_policy()
    assert check(p, "alpine").verdict is Verdict.ALLOW
    d = check(p, "someuser/tool")
    assert d.verdict is Verdict.DENY
    assert "community" in d.reason and "built-in default policy" in d.reason
    assert check(p, "quay.io/prometheus/node-exporter").verdict is Verdict.ALLOW


@pytest.mark.parametrize(
    ("registries", "image", "verdict", "rule"),
    [
        ({"default": "deny"}, "ghcr.io/acme/app", Verdict.DENY, "registries.default"),
        (
            {"default": "deny", "allow": ["ghcr.io"]},
            "ghcr.io/acme/app",
            Verdict.ALLOW,
            "registries.allow[0]",
        ),
        (
            {"default": "deny", "allow": ["ghcr.io"]},
            "GHCR.IO/acme/app",
            Verdict.ALLOW,
            "registries.allow[0]",
        ),
        (
            {"default": "deny", "allow": ["ghcr.io:443"]},
            "ghcr.io:5000/acme/app",
            Verdict.DENY,
            "registries.default",
        ),
        ({"deny": ["evil.example"]}, "evil.example:5000/x", Verdict.DENY, "registries.deny[0]"),
        ({"deny": ["*.example.com"]}, "a.b.example.com/x", Verdict.DENY, "registries.deny[0]"),
        ({"deny": ["*.example.com"]}, "example.com/x", Verdict.ALLOW, "registries.default"),
        (
            {"deny": ["*.example.com"], "allow": ["good.example.com"]},
            "good.example.com/x",
            Verdict.ALLOW,
            "registries.allow[0]",
        ),
        (
            {"deny": ["reg.example.com"], "allow": ["reg.example.com"]},
            "reg.example.com/x",
            Verdict.DENY,
            "registries.deny[0]",
        ),
        (
            {"default": "deny", "allow": ["[::1]:5000"]},
            "[::1]:5000/x",
            Verdict.ALLOW,
            "registries.allow[0]",
        ),
    ],
)
def test_registry_lists(
    registries: dict[str, Any], image: str, verdict: Verdict, rule: str
) -> None:
    d = check(policy(registries=registries), image)
    assert (d.verdict, d.rule) == (verdict, rule)


def test_registry_list_never_applies_to_docker_hub() -> None:
    d = check(policy(registries={"deny": ["docker.io"], "default": "deny"}), "alpine")
    assert d.verdict is Verdict.ALLOW and d.category is Category.OFFICIAL


def rules(*specs: tuple[str, str, str], **extra: Any) -> Policy:
    return policy(
        rules=[{"id": i, "match": m, "action": a, **extra.get(i, {})} for i, m, a in specs]
    )


def test_rules_beat_categories() -> None:
    p = rules(("tool", "someuser/tool", "allow"), ("no-ubuntu", "ubuntu", "deny"))
    assert check(p, "someuser/tool").verdict is Verdict.ALLOW
    assert check(p, "someuser/other").verdict is Verdict.DENY
    d = check(p, "ubuntu:22.04")
    assert (d.verdict, d.rule) == (Verdict.DENY, "no-ubuntu")


@pytest.mark.parametrize(
    ("image", "rule"),
    [
        ("someuser/tool", "exact-repo"),
        ("someuser/tool:1.0", "repo-with-tag"),
        ("someuser/tool:1.0-rc1", "repo-with-tag-glob"),
        ("someuser/tool@sha256:" + "a" * 64, "digest"),
        ("someuser/other", "namespace"),
        ("someuser/deep/er", "namespace-deep"),
        ("anyone/tool", "any-tool"),
    ],
)
def test_most_specific_rule_wins(image: str, rule: str) -> None:
    p = rules(
        ("any-tool", "*/tool", "allow"),
        ("namespace-deep", "someuser/**", "deny"),
        ("namespace", "someuser/*", "allow"),
        ("exact-repo", "someuser/tool", "deny"),
        ("repo-with-tag-glob", "someuser/tool:1.0-*", "deny"),
        ("repo-with-tag", "someuser/tool:1.0", "allow"),
        ("digest", "someuser/tool@sha256:" + "a" * 64, "allow"),
    )
    assert check(p, image).rule == rule


def test_longer_literal_prefix_wins_among_wildcards() -> None:
    p = rules(("all-ghcr", "ghcr.io/**", "deny"), ("acme-ghcr", "ghcr.io/acme/**", "allow"))
    assert check(p, "ghcr.io/acme/team/app").rule == "acme-ghcr"
    assert check(p, "ghcr.io/other/app").rule == "all-ghcr"


def test_deny_wins_a_tie() -> None:
    p = rules(("allow-a", "someuser/*", "allow"), ("deny-a", "someuser/*", "deny"))
    d = check(p, "someuser/tool")
    assert (d.verdict, d.rule) == (Verdict.DENY, "deny-a")


def test_globstar_matches_zero_components_and_domain_globs() -> None:
    p = rules(("everything", "docker.io/**", "deny"), ("corp", "*.corp.example/**", "deny"))
    assert check(p, "alpine").rule == "everything"
    assert check(p, "reg.corp.example/a/b/c").rule == "corp"
    assert check(p, "corp.example/a").rule == "registries.default"


def test_component_glob_matches_within_one_component() -> None:
    p = rules(("team", "acme-*/app", "allow"))
    assert check(p, "acme-web/app").rule == "team"
    assert check(p, "acme/web/app").rule != "team"


def test_rule_on_hub_alias_and_case_cannot_be_bypassed() -> None:
    p = rules(("no-tool", "someuser/tool", "deny"), ("all", "*/*", "allow"))
    for image in (
        "someuser/tool",
        "registry-1.docker.io/someuser/tool",
        "REGISTRY.HUB.DOCKER.COM/someuser/tool",
        "docker.io:443/someuser/tool",
        "index.docker.io/someuser/tool:latest",
    ):
        assert check(p, image).verdict is Verdict.DENY, image


def test_rule_groups_apply_only_to_members() -> None:
    p = rules(("data-team", "someuser/tool", "allow"), **{"data-team": {"groups": ["data"]}})
    assert check(p, "someuser/tool").verdict is Verdict.DENY
    outsider = Identity("bob@acme.example", frozenset({"web"}))
    assert check(p, "someuser/tool", outsider).verdict is Verdict.DENY
    member = Identity("ann@acme.example", frozenset({"data", "web"}))
    assert check(p, "someuser/tool", member).verdict is Verdict.ALLOW


def test_expired_rule_no_longer_applies() -> None:
    p = rules(
        ("temp", "someuser/tool", "allow"), **{"temp": {"expires_at": "2026-12-01T00:00:00Z"}}
    )
    assert check(p, "someuser/tool").verdict is Verdict.ALLOW
    later = datetime(2026, 12, 1, tzinfo=UTC)
    assert check(p, "someuser/tool", now=later).verdict is Verdict.DENY


def test_require_sign_in_denies_without_identity() -> None:
    p = policy(require_sign_in=True)
    d = check(p, "alpine")
    assert (d.verdict, d.rule) == (Verdict.DENY, "require_sign_in")
    assert d.remediation.hint is not None and "pullgate login" in d.remediation.hint
    assert check(p, "alpine", Identity("ann@acme.example")).verdict is Verdict.ALLOW


def test_monitor_mode_allows_and_marks_would_deny() -> None:
    d = check(policy(mode="monitor"), "someuser/tool")
    assert d.verdict is Verdict.WOULD_DENY and d.allowed


def test_denied_community_image_suggests_allowed_official_alternative() -> None:
    d = check(policy(), "someuser/nginx")
    assert d.remediation.alternative == "nginx"
    d = check(policy(), "someuser/nginx:1.27")
    assert d.remediation.alternative == "nginx:1.27"


def test_no_alternative_when_official_image_is_also_denied_or_unknown() -> None:
    p = rules(("no-nginx", "nginx", "deny"))
    assert check(p, "someuser/nginx").remediation.alternative is None
    assert check(policy(), "someuser/not-an-official-image").remediation.alternative is None


def test_latest_denied_by_pinning_rule_says_to_pin() -> None:
    p = rules(("pin", "**:latest", "deny"))
    d = check(p, "alpine")
    assert d.verdict is Verdict.DENY and d.rule == "pin"
    assert d.remediation.hint is not None
    assert "alpine:<version>" in d.remediation.hint and ":latest" in d.remediation.hint
    assert check(p, "alpine:3.20").verdict is Verdict.ALLOW


def test_help_url_template_is_filled_and_quoted() -> None:
    p = policy(
        messages={
            "help_url": "https://it.acme.example/images?i={image}&c={category}&r={rule}&u={user}&h={host}",
            "contact": "#platform-help",
        }
    )
    d = check(p, "someuser/tool", user="ann smith", host="laptop-7")
    assert d.remediation.help_url == (
        "https://it.acme.example/images?i=docker.io%2Fsomeuser%2Ftool%3Alatest"
        "&c=community&r=category%3Acommunity&u=ann%20smith&h=laptop-7"
    )
    assert d.remediation.contact == "#platform-help"


def test_rule_message_and_url_override_defaults() -> None:
    p = rules(
        ("no-tool", "someuser/tool", "deny"),
        **{
            "no-tool": {
                "message": "someuser/tool is known to mine coins",
                "url": "https://x.example/{rule}",
            }
        },
    )
    d = check(p, "someuser/tool")
    assert d.reason == "someuser/tool is known to mine coins"
    assert d.remediation.help_url == "https://x.example/no-tool"


def test_denial_message_contract() -> None:
    d = check(default_policy(), "someuser/nginx")
    msg = denial_message(d)
    assert msg.startswith("pullgate: ")
    assert "docker.io/someuser/nginx:latest" in msg
    assert "community" in msg
    assert "'nginx'" in msg
    assert "\n" not in msg


def test_denial_message_never_contains_exit_code_changing_phrases() -> None:
    p = rules(
        ("x", "someuser/tool", "deny"),
        **{"x": {"message": "Permission denied: No such file or directory"}},
    )
    msg = denial_message(check(p, "someuser/tool")).lower()
    assert "permission denied" not in msg and "no such file or directory" not in msg


def test_decision_against_ten_thousand_rules_is_correct() -> None:
    specs = [(f"r{i}", f"ns{i % 500}/app{i}", "allow" if i % 2 else "deny") for i in range(10_000)]
    p = rules(*specs, ("ns-glob", "ns7/**", "allow"))
    assert check(p, "ns7/app7").rule == "r7"
    assert check(p, "ns7/app7").verdict is Verdict.ALLOW
    assert check(p, "ns7/unknown").rule == "ns-glob"
    assert check(p, "ns8/app8").verdict is Verdict.DENY


def test_pull_of_all_tags_is_denied_when_a_rule_denies_some_tag() -> None:
    p = rules(("no-rc", "acme/app:*-rc*", "deny"))
    ref = parse_normalized_named("acme/app")
    assert decide(p, ref, now=NOW).verdict is Verdict.ALLOW
    d = decide(p, ref, now=NOW, all_tags=True)
    assert (d.verdict, d.rule) == (Verdict.DENY, "no-rc")
    assert "all tags" in d.reason
    assert decide(policy(), ref, now=NOW, all_tags=True).verdict is Verdict.ALLOW
