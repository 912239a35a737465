"""The decision engine: may this identity pull this image under this policy, and why not?

``decide`` is a pure function of (policy, reference, identity, time): no clock, file or
socket is read here, so ``pullgate check``, the socket shim and the tests all get the
same answer for the same inputs.

Order of evaluation (documented in docs/policy.md):
1. ``require_sign_in`` without an identity denies everything.
2. Rules that match the reference, apply to the identity's groups and have not expired:
   the most specific wins (digest, exact repository with tag, exact repository, longer
   literal prefix); on a tie, deny wins. Rules beat categories.
3. Otherwise the category: Docker Hub categories from ``hub``, other registries from
   ``registries`` (most specific host pattern wins, deny on a tie, else ``default``).
In ``monitor`` mode a deny becomes ``would_deny``: allowed, but recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from urllib.parse import quote

from agent.core.category import Category, classify
from agent.core.official_images import OFFICIAL_IMAGES
from agent.core.policy.document import Action, HostPattern, Mode, Policy, Rule
from agent.core.reference import DEFAULT_TAG, Reference, hub_view

__all__ = ["Decision", "Identity", "Remediation", "Verdict", "decide"]


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    WOULD_DENY = "would_deny"


@dataclass(frozen=True)
class Identity:
    """The signed-in person: their email and the groups the identity provider asserts."""

    email: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Remediation:
    """What to do instead of the denied pull."""

    alternative: str | None = None
    hint: str | None = None
    help_url: str | None = None
    contact: str | None = None


@dataclass(frozen=True)
class Decision:
    """One decision, with everything the denial message, audit record and UI need."""

    verdict: Verdict
    reference: Reference
    category: Category
    rule: str
    reason: str
    policy: str
    policy_serial: int
    remediation: Remediation = field(default_factory=Remediation)

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY

    @property
    def canonical(self) -> str:
        return self.reference.canonical


@dataclass(frozen=True)
class _Outcome:
    action: Action
    rule_id: str
    reason: str
    rule: Rule | None = None


def decide(
    policy: Policy,
    ref: Reference,
    *,
    now: datetime,
    identity: Identity | None = None,
    user: str = "",
    host: str = "",
    all_tags: bool = False,
) -> Decision:
    """Decide whether ``ref`` may be pulled. ``user`` and ``host`` only fill the help URL.

    ``all_tags`` is a pull of every tag of a repository (``docker pull -a``): it is
    decided as ``:latest`` and is denied as well when any rule denies some tag of it.
    """
    view = hub_view(ref).with_default_tag()
    category = classify(policy.hub, view)
    outcome = _evaluate(policy, view, category, identity, now)
    if all_tags and outcome.action is Action.ALLOW:
        outcome = _all_tags_outcome(policy, view, identity, now) or outcome
    verdict = Verdict.ALLOW
    remediation = Remediation()
    if outcome.action is Action.DENY:
        verdict = Verdict.WOULD_DENY if policy.mode is Mode.MONITOR else Verdict.DENY
        remediation = _remediation(
            policy, view, category, outcome, identity, now, user or _email(identity), host
        )
    return Decision(
        verdict=verdict,
        reference=ref.with_default_tag(),
        category=category,
        rule=outcome.rule_id,
        reason=outcome.reason,
        policy=policy.label,
        policy_serial=policy.serial,
        remediation=remediation,
    )


def _all_tags_outcome(
    policy: Policy, view: Reference, identity: Identity | None, now: datetime
) -> _Outcome | None:
    for i in policy.index.match(view, any_tag=True):
        rule = policy.rules[i]
        constrained = rule.pattern.tag is not None or rule.pattern.digest is not None
        if constrained and rule.action is Action.DENY and _rule_applies(rule, identity, now):
            return _Outcome(
                Action.DENY,
                rule.id,
                f"pulling all tags of {view.name} includes tags that rule {rule.id!r} "
                f"({rule.match}) of {policy.label} denies",
                rule,
            )
    return None


def _email(identity: Identity | None) -> str:
    return identity.email if identity else ""


def _evaluate(
    policy: Policy,
    view: Reference,
    category: Category,
    identity: Identity | None,
    now: datetime,
) -> _Outcome:
    if policy.require_sign_in and identity is None:
        return _Outcome(
            Action.DENY,
            "require_sign_in",
            f"{policy.label} requires you to sign in before pulling images",
        )
    rule = _best_rule(policy, view, identity, now)
    if rule is not None:
        verb = "allows" if rule.action is Action.ALLOW else "denies"
        reason = rule.message or f"rule {rule.id!r} ({rule.match}) of {policy.label} {verb} it"
        return _Outcome(rule.action, rule.id, reason, rule)
    if category is Category.REGISTRY:
        return _registry_outcome(policy, view)
    action = _category_action(policy, category)
    if action is Action.ALLOW:
        return _Outcome(
            action, f"category:{category}", f"{category.label} are allowed by {policy.label}"
        )
    return _Outcome(
        action, f"category:{category}", f"{category.label} are not allowed by {policy.label}"
    )


def _category_action(policy: Policy, category: Category) -> Action:
    hub = policy.hub
    return {
        Category.ORG: Action.ALLOW,
        Category.OFFICIAL: hub.official,
        Category.VERIFIED_PUBLISHER: hub.verified_publisher,
        Category.SPONSORED_OSS: hub.sponsored_oss,
        Category.COMMUNITY: hub.community,
    }[category]


def _rule_applies(rule: Rule, identity: Identity | None, now: datetime) -> bool:
    if rule.expires_at is not None and now >= rule.expires_at:
        return False
    if rule.groups is None:
        return True
    return identity is not None and not rule.groups.isdisjoint(identity.groups)


def _best_rule(
    policy: Policy, view: Reference, identity: Identity | None, now: datetime
) -> Rule | None:
    best: Rule | None = None
    best_key: tuple[tuple[int, int, int, int], int, int] | None = None
    for i in policy.index.match(view):
        rule = policy.rules[i]
        if not _rule_applies(rule, identity, now):
            continue
        # Higher specificity wins; on a tie deny beats allow; then the earlier rule.
        key = (rule.pattern.specificity, 1 if rule.action is Action.DENY else 0, -i)
        if best_key is None or key > best_key:
            best, best_key = rule, key
    return best


def _split_host(domain: str) -> tuple[str, str | None]:
    if domain.startswith("["):
        end = domain.find("]")
        return domain[: end + 1], domain[end + 2 :] or None
    host, _, port = domain.partition(":")
    return host, port or None


def _registry_outcome(policy: Policy, view: Reference) -> _Outcome:
    host, port = _split_host(view.domain)
    regs = policy.registries
    best: tuple[tuple[int, int], int, Action, HostPattern, str] | None = None
    for action, patterns, name in (
        (Action.ALLOW, regs.allow, "allow"),
        (Action.DENY, regs.deny, "deny"),
    ):
        for i, pattern in enumerate(patterns):
            if pattern.matches(host, port):
                key = (pattern.specificity(), 1 if action is Action.DENY else 0)
                if best is None or key > best[:2]:
                    best = (*key, action, pattern, f"registries.{name}[{i}]")
    if best is not None:
        _, _, action, pattern, where = best
        listed = "allowed" if action is Action.ALLOW else "denied"
        return _Outcome(
            action,
            where,
            f"registry {view.domain} is {listed} by {where} ({pattern.text}) of {policy.label}",
        )
    listed = "allowed" if regs.default is Action.ALLOW else "not allowed"
    return _Outcome(
        regs.default,
        "registries.default",
        f"images from registry {view.domain} are {listed} by {policy.label} (registries.default)",
    )


def _remediation(  # noqa: PLR0917 - private helper; every argument is distinct
    policy: Policy,
    view: Reference,
    category: Category,
    outcome: _Outcome,
    identity: Identity | None,
    now: datetime,
    user: str,
    host: str,
) -> Remediation:
    hint = None
    alternative = None
    rule = outcome.rule
    if (
        rule is not None
        and view.tag == DEFAULT_TAG
        and rule.pattern.tag is not None
        and rule.pattern.matches_tag_literally(DEFAULT_TAG)
    ):
        hint = (
            f"{policy.label} requires a pinned version: use {view.familiar_name()}:<version> "
            f"or {view.familiar_name()}@sha256:<digest> instead of :latest"
        )
    elif outcome.rule_id != "require_sign_in":
        alternative = _official_alternative(policy, view, category, identity, now)
    if outcome.rule_id == "require_sign_in":
        hint = "sign in with `pullgate login` (or the Pullgate tray), then pull again"
    template = rule.url if rule is not None and rule.url else policy.messages.help_url
    help_url = None
    if template:
        help_url = _fill_template(
            template,
            image=view.canonical,
            category=str(category),
            rule=outcome.rule_id,
            user=user,
            host=host,
        )
    return Remediation(alternative, hint, help_url, policy.messages.contact)


def _official_alternative(
    policy: Policy,
    view: Reference,
    category: Category,
    identity: Identity | None,
    now: datetime,
) -> str | None:
    """The Docker Official Image of the same name, if it exists and this policy allows it."""
    name = view.path.rsplit("/", 1)[-1]
    if category is Category.OFFICIAL or name not in OFFICIAL_IMAGES:
        return None
    candidate = Reference("docker.io", f"library/{name}", view.tag)
    official = classify(policy.hub, candidate)
    outcome = _evaluate(policy, candidate, official, identity, now)
    if outcome.action is not Action.ALLOW:
        return None
    return candidate.familiar_string() if view.tag != DEFAULT_TAG else candidate.familiar_name()


def _fill_template(template: str, **values: str) -> str:
    """Fill ``{image}``-style placeholders, URL-quoted; unknown braces are left alone."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", quote(value, safe=""))
    return out
