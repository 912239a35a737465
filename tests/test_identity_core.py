"""The agent's pure ID-token rules (agent/core/identity.py): header and claim checks, each
refusal's reason code, and the lifetime of a binding. Values in, verdicts out: no provider,
no clock but the one passed in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from agent.core.decision import Identity
from agent.core.identity import (
    ASYMMETRIC_ALGORITHMS,
    Binding,
    Expectations,
    RefusalReason,
    TokenRefusedError,
    VerifiedClaims,
    check_claims,
    check_header,
    token_digest,
)

NOW = 1_800_000_000.0
ISSUER = "https://idp.acme.test"
CLIENT = "pullgate-cli"
EXPECT = Expectations(issuer=ISSUER, client_id=CLIENT, allowed_domains=("acme.test",))
ADVERTISED = frozenset({"RS256", "ES256"})
R = RefusalReason


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid token's claims at NOW; an override of None removes the claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": CLIENT,
        "iat": NOW - 5,
        "exp": NOW + 3600,
        "email": "alice@acme.test",
        "email_verified": True,
        "name": "Alice",
        "groups": ["platform", "developers"],
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def refusal(call: Callable[[], object]) -> TokenRefusedError:
    with pytest.raises(TokenRefusedError) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------- header

HEADER_REFUSALS = [
    ("no alg", {"kid": "k"}, R.MALFORMED),
    ("alg not a string", {"alg": ["RS256"]}, R.MALFORMED),
    ("alg none", {"alg": "none"}, R.BAD_ALGORITHM),
    ("alg None spelled", {"alg": "None"}, R.BAD_ALGORITHM),
    ("HS256", {"alg": "HS256", "kid": "k"}, R.BAD_ALGORITHM),
    ("HS512", {"alg": "HS512"}, R.BAD_ALGORITHM),
    ("asymmetric but not advertised", {"alg": "PS256"}, R.BAD_ALGORITHM),
    ("lower-case rs256", {"alg": "rs256"}, R.BAD_ALGORITHM),
    ("kid not a string", {"alg": "RS256", "kid": 7}, R.MALFORMED),
    ("kid empty", {"alg": "RS256", "kid": ""}, R.MALFORMED),
    ("kid too long", {"alg": "RS256", "kid": "k" * 513}, R.MALFORMED),
]


@pytest.mark.parametrize(
    ("header", "reason"),
    [pytest.param(h, r, id=name) for name, h, r in HEADER_REFUSALS],
)
def test_check_header_refuses(header: dict[str, Any], reason: RefusalReason) -> None:
    assert refusal(lambda: check_header(header, ADVERTISED)).reason is reason


@pytest.mark.parametrize(
    "header",
    [{"alg": "RS256", "kid": "rs256-1"}, {"alg": "ES256"}, {"alg": "RS256", "kid": "k" * 512}],
)
def test_check_header_accepts_advertised_public_key_algorithms(header: dict[str, Any]) -> None:
    assert check_header(header, ADVERTISED) == header["alg"]


def test_no_symmetric_algorithm_is_ever_acceptable_even_if_advertised() -> None:
    advertised = frozenset({"HS256", "HS384", "HS512", "none", "RS256"})
    assert not {"HS256", "HS384", "HS512", "none"} & ASYMMETRIC_ALGORITHMS
    for alg in ("HS256", "HS384", "HS512", "none"):
        error = refusal(lambda alg=alg: check_header({"alg": alg}, advertised))  # type: ignore[misc]
        assert error.reason is R.BAD_ALGORITHM
        assert "public-key" in error.message


# --------------------------------------------------------------------------- claims

CLAIM_REFUSALS: list[tuple[str, dict[str, Any], RefusalReason]] = [
    ("another issuer", {"iss": "https://evil.test"}, R.WRONG_ISSUER),
    ("issuer with a trailing slash", {"iss": ISSUER + "/"}, R.WRONG_ISSUER),
    ("no issuer", {"iss": None}, R.WRONG_ISSUER),
    ("another audience", {"aud": "another-app"}, R.WRONG_AUDIENCE),
    ("no audience", {"aud": None}, R.WRONG_AUDIENCE),
    ("audience not a string or list", {"aud": 42}, R.WRONG_AUDIENCE),
    ("audience list without us", {"aud": ["a", "b"]}, R.WRONG_AUDIENCE),
    ("several audiences, no azp", {"aud": [CLIENT, "another-app"]}, R.WRONG_AUDIENCE),
    ("azp of another client", {"azp": "another-app"}, R.WRONG_AUDIENCE),
    (
        "several audiences, azp another",
        {"aud": [CLIENT, "another-app"], "azp": "another-app"},
        R.WRONG_AUDIENCE,
    ),
    ("expired beyond the leeway", {"exp": NOW - 61}, R.EXPIRED),
    ("expired exactly at the leeway", {"exp": NOW - 60}, R.EXPIRED),
    ("nbf beyond the leeway", {"nbf": NOW + 61}, R.NOT_YET_VALID),
    ("iat in the future", {"iat": NOW + 61, "exp": NOW + 3600}, R.NOT_YET_VALID),
    ("stale: issued 30 min ago, exp ahead", {"iat": NOW - 1800}, R.STALE),
    ("stale just past age + leeway", {"iat": NOW - 661}, R.STALE),
    ("no exp", {"exp": None}, R.MALFORMED),
    ("no iat", {"iat": None}, R.MALFORMED),
    ("exp a string", {"exp": str(int(NOW + 3600))}, R.MALFORMED),
    ("exp a bool", {"exp": True}, R.MALFORMED),
    ("exp infinite", {"exp": float("inf")}, R.MALFORMED),
    ("iat NaN", {"iat": float("nan")}, R.MALFORMED),
    ("nbf a string", {"nbf": "now"}, R.MALFORMED),
    ("no subject", {"sub": None}, R.MALFORMED),
    ("empty subject", {"sub": ""}, R.MALFORMED),
    ("subject not a string", {"sub": 12}, R.MALFORMED),
    ("no email", {"email": None}, R.NO_EMAIL),
    ("email without @", {"email": "alice"}, R.NO_EMAIL),
    ("email with two @", {"email": "alice@evil.test@acme.test"}, R.NO_EMAIL),
    ("email not a string", {"email": ["alice@acme.test"]}, R.NO_EMAIL),
    ("email_verified false", {"email_verified": False}, R.EMAIL_NOT_VERIFIED),
    ("email_verified a string", {"email_verified": "true"}, R.EMAIL_NOT_VERIFIED),
    ("email_verified 1", {"email_verified": 1}, R.EMAIL_NOT_VERIFIED),
    ("email_verified missing", {"email_verified": None}, R.EMAIL_NOT_VERIFIED),
    ("another domain", {"email": "carol@contractor.test"}, R.DOMAIN_NOT_ALLOWED),
    ("a subdomain", {"email": "eve@evil.acme.test"}, R.DOMAIN_NOT_ALLOWED),
    ("a suffix domain", {"email": "eve@notacme.test"}, R.DOMAIN_NOT_ALLOWED),
    ("groups a string", {"groups": "platform"}, R.BAD_GROUPS),
    ("groups with a number", {"groups": ["platform", 1]}, R.BAD_GROUPS),
    ("groups with an empty name", {"groups": [""]}, R.BAD_GROUPS),
    ("groups too many", {"groups": [f"g{i}" for i in range(1001)]}, R.BAD_GROUPS),
    ("groups an object", {"groups": {"platform": True}}, R.BAD_GROUPS),
    # The first rule broken decides: issuer before time, time before email.
    ("wrong issuer and expired", {"iss": "https://evil.test", "exp": NOW - 999}, R.WRONG_ISSUER),
    ("expired and unverified", {"exp": NOW - 999, "email_verified": False}, R.EXPIRED),
]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [pytest.param(o, r, id=name) for name, o, r in CLAIM_REFUSALS],
)
def test_check_claims_refuses(overrides: dict[str, Any], reason: RefusalReason) -> None:
    error = refusal(lambda: check_claims(claims(**overrides), EXPECT, NOW))
    assert error.reason is reason, error.message
    assert error.message and str(error) == error.message


CLAIM_ACCEPTS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("expired within the leeway", {"exp": NOW - 59}),
    ("nbf within the leeway", {"nbf": NOW + 59}),
    ("nbf in the past", {"nbf": NOW - 10}),
    ("iat within the leeway ahead", {"iat": NOW + 59}),
    ("iat at the edge of max age + leeway", {"iat": NOW - 660}),
    ("float times", {"iat": NOW - 0.5, "exp": NOW + 0.5}),
    ("audience list with azp us", {"aud": ["another-app", CLIENT], "azp": CLIENT}),
    ("one audience in a list", {"aud": [CLIENT]}),
    ("azp us", {"azp": CLIENT}),
    ("upper-case domain", {"email": "Alice@ACME.Test"}),
    ("no groups claim", {"groups": None}),
    ("no name", {"name": None}),
]


@pytest.mark.parametrize("overrides", [pytest.param(o, id=name) for name, o in CLAIM_ACCEPTS])
def test_check_claims_accepts(overrides: dict[str, Any]) -> None:
    verified = check_claims(claims(**overrides), EXPECT, NOW)
    assert verified.subject == "alice"
    assert verified.issuer == ISSUER


def test_accepted_claims_are_typed_and_groups_sorted_without_duplicates() -> None:
    verified = check_claims(
        claims(groups=["platform", "developers", "platform"], name="A" * 600), EXPECT, NOW
    )
    assert verified == VerifiedClaims(
        subject="alice",
        email="alice@acme.test",
        name=None,  # too long to be shown: dropped, not refused
        groups=("developers", "platform"),
        issuer=ISSUER,
        issued_at=NOW - 5,
        expires_at=NOW + 3600,
    )


def test_groups_come_from_the_configured_claim_only() -> None:
    expect = Expectations(issuer=ISSUER, client_id=CLIENT, groups_claim="roles")
    verified = check_claims(claims(roles=["admins"]), expect, NOW)
    assert verified.groups == ("admins",)
    assert check_claims(claims(), expect, NOW).groups == ()  # "groups" is not "roles"
    assert refusal(lambda: check_claims(claims(roles="admins"), expect, NOW)).reason is (
        R.BAD_GROUPS
    )


def test_no_allowed_domains_lets_any_verified_email_in() -> None:
    expect = Expectations(issuer=ISSUER, client_id=CLIENT)
    assert check_claims(claims(email="carol@contractor.test"), expect, NOW).email == (
        "carol@contractor.test"
    )
    error = refusal(lambda: check_claims(claims(email_verified=False), expect, NOW))
    assert error.reason is R.EMAIL_NOT_VERIFIED


def test_leeway_and_max_age_come_from_the_expectations() -> None:
    assert EXPECT.leeway == timedelta(seconds=60)
    assert EXPECT.max_token_age == timedelta(minutes=10)
    strict = Expectations(
        issuer=ISSUER, client_id=CLIENT, leeway=timedelta(0), max_token_age=timedelta(seconds=30)
    )
    assert refusal(lambda: check_claims(claims(exp=NOW), strict, NOW)).reason is R.EXPIRED
    assert refusal(lambda: check_claims(claims(iat=NOW - 31), strict, NOW)).reason is R.STALE
    assert check_claims(claims(iat=NOW - 29), strict, NOW).issued_at == NOW - 29


def test_refusal_messages_escape_control_characters_from_the_token() -> None:
    error = refusal(lambda: check_claims(claims(iss="https://x\x1b[2J\r\n.test"), EXPECT, NOW))
    assert error.reason is R.WRONG_ISSUER
    assert "\x1b" not in error.message and "\n" not in error.message and "\r" not in error.message


def test_refusal_messages_cut_a_huge_claim() -> None:
    error = refusal(lambda: check_claims(claims(aud="a" * 10_000), EXPECT, NOW))
    assert error.reason is R.WRONG_AUDIENCE
    assert len(error.message) < 400


# --------------------------------------------------------------------------- bindings


def _binding(accepted: float = NOW, max_age: float = 300) -> Binding:
    verified = check_claims(claims(), EXPECT, NOW)
    return Binding(uid=1000, claims=verified, accepted_at=accepted, expires_at=accepted + max_age)


@pytest.mark.parametrize(
    ("at", "live"),
    [(NOW, True), (NOW + 299.999, True), (NOW + 300, False), (NOW + 10_000, False)],
)
def test_binding_lives_until_max_age_after_acceptance(at: float, live: bool) -> None:
    assert _binding().live(at) is live


def test_binding_outlives_neither_its_max_age_nor_is_cut_by_token_expiry() -> None:
    # identity_max_age, not the ID token's exp, decides: the per-user side renews in time.
    binding = _binding(max_age=7200)
    assert binding.claims.expires_at == NOW + 3600
    assert binding.live(NOW + 3601)
    assert not binding.live(NOW + 7200)


def test_binding_gives_the_decision_engine_email_and_groups() -> None:
    binding = _binding()
    assert binding.identity == Identity("alice@acme.test", frozenset({"developers", "platform"}))
    assert binding.to_json() == {
        "uid": 1000,
        "email": "alice@acme.test",
        "subject": "alice",
        "name": "Alice",
        "groups": ["developers", "platform"],
        "issuer": ISSUER,
        "accepted_at": NOW,
        "expires_at": NOW + 300,
        "token_expires_at": NOW + 3600,
    }


def test_token_digest_keys_on_what_was_signed_not_on_the_signature_spelling() -> None:
    assert token_digest("a.b.c") == token_digest("a.b.c")
    assert token_digest("a.b.c") != token_digest("a.x.c")
    assert token_digest("a.b.c") != token_digest("x.b.c")
    assert len(token_digest("a.b.c")) == 64
    # Padding, or the other ECDSA signature of the same header and claims: the same token.
    assert token_digest("a.b.c") == token_digest("a.b.c==")
    assert token_digest("a.b.c") == token_digest("a.b.d")


ENTRA = "https://login.microsoftonline.com/7f0c1d5e-0000-4000-8000-000000000001/v2.0"


@pytest.mark.parametrize(
    ("issuer", "claims", "accepted"),
    [
        pytest.param(ENTRA, {"xms_edov": True}, True, id="Entra, no email_verified, xms_edov"),
        pytest.param(ENTRA, {"xms_edov": False}, False, id="Entra, xms_edov false"),
        pytest.param(ENTRA, {}, False, id="Entra, neither"),
        pytest.param(
            ENTRA, {"email_verified": False, "xms_edov": True}, False, id="explicit false wins"
        ),
        pytest.param(
            "https://idp.example", {"xms_edov": True}, False, id="xms_edov from another issuer"
        ),
    ],
)
def test_xms_edov_counts_only_from_entra_and_only_without_email_verified(
    issuer: str, claims: dict[str, Any], accepted: bool
) -> None:
    now = 1_800_000_000.0
    token = {
        "iss": issuer,
        "aud": "pullgate",
        "sub": "dave",
        "iat": now,
        "exp": now + 600,
        "email": "dave@acme.test",
        **claims,
    }
    expect = Expectations(issuer, "pullgate")
    if accepted:
        assert check_claims(token, expect, now).email == "dave@acme.test"
    else:
        with pytest.raises(TokenRefusedError) as refused:
            check_claims(token, expect, now)
        assert refused.value.reason is RefusalReason.EMAIL_NOT_VERIFIED
