"""The real OpenID provider of the sign-in tests behaves as issue 13 needs.

Against tests/oidc (npm oidc-provider 9) started by tests/oidc_provider.py: discovery,
the device flow (pending, slow_down, expiry, denial, success with email/email_verified/
groups in the ID token), authorization code + PKCE on loopback redirects, refresh-token
rotation, revocation, and key rotation. The session fixture runs over HTTPS with a private
CA; one private provider per module runs over plain HTTP and signs with ES256 (rotation
there does not disturb other tests' keys).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

from tests.agent_process import skip_or_fail
from tests.oidc_provider import (
    CLIENT_ID,
    Account,
    OIDCProvider,
    OIDCProviderError,
    TokenResponse,
    missing_requirements,
    pkce_pair,
    start_oidc_provider,
    stop_oidc_provider,
)

FAST = {"device_interval": 1, "slow_down_increment": 1}
"""Device-flow settings that keep these tests quick."""


@pytest.fixture(scope="module")
def plain_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    """A private provider over plain HTTP whose client gets ES256 ID tokens."""
    problems = missing_requirements()
    if problems:
        skip_or_fail("OpenID provider unavailable: " + "; ".join(problems))
    provider = start_oidc_provider(
        tmp_path_factory.mktemp("oidc-plain"), tls=False, id_token_alg="ES256", settings=FAST
    )
    try:
        yield provider
    finally:
        stop_oidc_provider(provider)


def _pending_then(provider: OIDCProvider, device_code: str, interval: float) -> TokenResponse:
    """Poll politely (every `interval` s) while authorization_pending; the first other answer."""
    for _ in range(30):
        time.sleep(interval + 0.1)
        answer = provider.poll_device_token(device_code)
        if answer.error != "authorization_pending":
            return answer
    raise AssertionError("still pending after 30 polls")


def _redirect_query(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


# --------------------------------------------------------------------------- discovery


def test_discovery_document_advertises_what_sign_in_needs(oidc_provider: OIDCProvider) -> None:
    doc = oidc_provider.discovery()
    assert doc["issuer"] == oidc_provider.issuer
    assert oidc_provider.issuer.startswith("https://127.0.0.1:")
    assert doc["device_authorization_endpoint"] == oidc_provider.issuer + "/device/auth"
    assert doc["revocation_endpoint"] == oidc_provider.issuer + "/token/revocation"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["id_token_signing_alg_values_supported"]) == {"RS256", "ES256"}
    assert {"authorization_code", "refresh_token"} <= set(doc["grant_types_supported"])
    assert "urn:ietf:params:oauth:grant-type:device_code" in doc["grant_types_supported"]
    assert {"openid", "email", "groups", "offline_access"} <= set(doc["scopes_supported"])
    assert {"email", "email_verified", "groups"} <= set(doc["claims_supported"])
    assert "none" in doc["token_endpoint_auth_methods_supported"]  # the public client


def test_discovery_is_https_only_trusted_through_the_private_ca(
    oidc_provider: OIDCProvider,
) -> None:
    assert oidc_provider.ca_bundle is not None
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(oidc_provider.issuer + "/.well-known/openid-configuration", timeout=10)


def test_jwks_publishes_public_rsa_and_ec_keys_with_kids(oidc_provider: OIDCProvider) -> None:
    keys = oidc_provider.jwks()["keys"]
    assert {(k["kty"], k["alg"]) for k in keys} == {("RSA", "RS256"), ("EC", "ES256")}
    assert all(k["kid"] and k["use"] == "sig" for k in keys)
    assert not any("d" in k for k in keys)  # no private members
    assert set(oidc_provider.signing_kids().values()) == {k["kid"] for k in keys}


def test_plain_http_issuer_option(plain_provider: OIDCProvider) -> None:
    assert plain_provider.issuer.startswith("http://127.0.0.1:")
    assert plain_provider.discovery()["issuer"] == plain_provider.issuer
    assert plain_provider.ca_bundle is None


# --------------------------------------------------------------------------- device flow


def test_device_flow_happy_path_id_token_carries_email_and_groups(
    oidc_provider: OIDCProvider,
) -> None:
    with oidc_provider.settings(**FAST):
        start = oidc_provider.device_authorization()
        assert start.interval == 1
        assert start.expires_in == 600
        assert start.verification_uri == oidc_provider.issuer + "/device"
        assert start.verification_uri_complete == (
            f"{oidc_provider.issuer}/device?user_code={start.user_code}"
        )
        time.sleep(start.interval + 0.1)
        assert oidc_provider.poll_device_token(start.device_code).error == ("authorization_pending")
        oidc_provider.approve_device(start.user_code, "alice")
        tokens = _pending_then(oidc_provider, start.device_code, start.interval)
    assert tokens.ok, tokens
    assert tokens.body["token_type"] == "Bearer"
    assert set(tokens.body["scope"].split()) == {
        "openid",
        "email",
        "profile",
        "groups",
        "offline_access",
    }
    assert tokens.field("refresh_token")
    id_token = tokens.field("id_token")
    assert jwt.get_unverified_header(id_token)["alg"] == "RS256"
    claims = oidc_provider.verify_id_token(id_token)
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == CLIENT_ID
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@acme.test"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["developers", "platform"]
    assert claims["exp"] - claims["iat"] == 3600
    # The device code is spent.
    time.sleep(start.interval + 0.1)
    assert oidc_provider.poll_device_token(start.device_code).error == "invalid_grant"


def test_device_flow_user_types_the_code_on_the_bare_verification_page(
    oidc_provider: OIDCProvider,
) -> None:
    with oidc_provider.settings(**FAST):
        start = oidc_provider.device_authorization()
        # Users type codes in any case, with or without the dash.
        typed = start.user_code.replace("-", "").lower()
        oidc_provider.approve_device(typed, "dave", via_complete_uri=False)
        tokens = _pending_then(oidc_provider, start.device_code, start.interval)
    claims = oidc_provider.verify_id_token(tokens.field("id_token"))
    assert (claims["email"], claims["email_verified"]) == ("dave@acme.test", False)


def test_device_flow_other_accounts_other_claims(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(device_interval=0):
        carol = oidc_provider.device_login("carol")
        erin = oidc_provider.device_login("erin")
    carol_claims = oidc_provider.verify_id_token(carol.field("id_token"))
    assert carol_claims["email"] == "carol@contractor.test"
    assert carol_claims["groups"] == ["contractors"]
    assert oidc_provider.verify_id_token(erin.field("id_token"))["groups"] == []


def test_device_flow_without_groups_scope_has_no_groups_claim(
    oidc_provider: OIDCProvider,
) -> None:
    with oidc_provider.settings(device_interval=0):
        tokens = oidc_provider.device_login("bob", scope="openid email")
    claims = oidc_provider.verify_id_token(tokens.field("id_token"))
    assert claims["email"] == "bob@acme.test"
    assert "groups" not in claims
    assert "refresh_token" not in tokens.body  # no offline_access, no refresh token


def test_device_flow_slow_down_when_polled_too_fast(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(**FAST):
        start = oidc_provider.device_authorization()
        # Sooner than `interval` after the authorization (or the last poll): slow_down,
        # and the interval this device code needs grows by slow_down_increment each time.
        first = oidc_provider.poll_device_token(start.device_code)
        assert first.status == 400
        assert first.error == "slow_down"
        time.sleep(start.interval + 0.1)  # the old interval is no longer enough
        assert oidc_provider.poll_device_token(start.device_code).error == "slow_down"
        time.sleep(start.interval + 2 * 1 + 0.1)  # interval + 2 increments
        assert oidc_provider.poll_device_token(start.device_code).error == ("authorization_pending")


def test_device_flow_expired_token(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(device_interval=0, device_code_ttl=1):
        start = oidc_provider.device_authorization()
        assert start.expires_in == 1
        time.sleep(1.5)
        answer = oidc_provider.poll_device_token(start.device_code)
        assert (answer.status, answer.error) == (400, "expired_token")
        # The user is told too.
        with pytest.raises(OIDCProviderError, match="code you entered is incorrect"):
            oidc_provider.approve_device(start.user_code, "alice")


@pytest.mark.parametrize("at_login", [False, True], ids=["abort-on-confirm", "abort-on-login"])
def test_device_flow_access_denied(oidc_provider: OIDCProvider, at_login: bool) -> None:
    with oidc_provider.settings(device_interval=0):
        start = oidc_provider.device_authorization()
        oidc_provider.deny_device(start.user_code, at_login=at_login)
        answer = oidc_provider.poll_device_token(start.device_code)
    assert (answer.status, answer.error) == (400, "access_denied")


def test_device_flow_unknown_user_code_and_wrong_password_refused(
    oidc_provider: OIDCProvider,
) -> None:
    with pytest.raises(OIDCProviderError, match="not accepted"):
        oidc_provider.approve_device("BCDF-GHJK", "alice")
    start = oidc_provider.device_authorization()
    impostor = Account("alice", "alice@acme.test", (), password="guess")
    with pytest.raises(OIDCProviderError, match="refused"):
        oidc_provider.approve_device(start.user_code, impostor)


def test_device_flow_on_plain_http_with_es256(plain_provider: OIDCProvider) -> None:
    tokens = plain_provider.device_login("bob")
    id_token = tokens.field("id_token")
    assert jwt.get_unverified_header(id_token)["alg"] == "ES256"
    assert plain_provider.verify_id_token(id_token)["groups"] == ["developers"]


# --------------------------------------------------------------------------- code + PKCE


def test_code_flow_pkce_loopback_any_port(oidc_provider: OIDCProvider) -> None:
    for port in (50001, 61234):
        redirect_uri = f"http://127.0.0.1:{port}/callback"
        verifier, challenge = pkce_pair()
        url = oidc_provider.authorization_url(
            redirect_uri=redirect_uri, code_challenge=challenge, state="s-1", nonce="n-1"
        )
        location = oidc_provider.authorize_in_browser(url, "bob", redirect_uri=redirect_uri)
        assert location.startswith(redirect_uri + "?")
        query = _redirect_query(location)
        assert query["state"] == "s-1"
        assert query["iss"] == oidc_provider.issuer  # RFC 9207
        tokens = oidc_provider.exchange_code(
            query["code"], code_verifier=verifier, redirect_uri=redirect_uri
        )
        assert tokens.ok, tokens
        assert tokens.field("refresh_token")
        claims = oidc_provider.verify_id_token(tokens.field("id_token"))
        assert (claims["sub"], claims["nonce"]) == ("bob", "n-1")
        assert claims["groups"] == ["developers"]
        assert claims["email_verified"] is True


def test_code_flow_wrong_verifier_refused_and_code_single_use(
    oidc_provider: OIDCProvider,
) -> None:
    redirect_uri = "http://127.0.0.1:50002/callback"
    verifier, challenge = pkce_pair()
    url = oidc_provider.authorization_url(
        redirect_uri=redirect_uri, code_challenge=challenge, state="s"
    )
    code = _redirect_query(
        oidc_provider.authorize_in_browser(url, "alice", redirect_uri=redirect_uri)
    )["code"]
    wrong = oidc_provider.exchange_code(
        code, code_verifier=pkce_pair()[0], redirect_uri=redirect_uri
    )
    assert (wrong.status, wrong.error) == (400, "invalid_grant")
    # oidc-provider 9 does not spend the code on a failed PKCE check: the right verifier
    # still works, once.
    right = oidc_provider.exchange_code(code, code_verifier=verifier, redirect_uri=redirect_uri)
    assert right.ok, right
    again = oidc_provider.exchange_code(code, code_verifier=verifier, redirect_uri=redirect_uri)
    assert again.error == "invalid_grant"


def test_code_flow_requires_pkce_s256(oidc_provider: OIDCProvider) -> None:
    redirect_uri = "http://127.0.0.1:50003/callback"
    url = oidc_provider.authorization_url(redirect_uri=redirect_uri, code_challenge="x", state="s")
    without = url.replace("code_challenge=x&", "").replace("&code_challenge_method=S256", "")
    with oidc_provider.http() as browser:
        answer = browser.get(without, allow_redirects=False, timeout=10)
    query = _redirect_query(answer.headers["Location"])
    assert query["error"] == "invalid_request"
    assert "PKCE" in query["error_description"]
    plain = url.replace("code_challenge_method=S256", "code_challenge_method=plain")
    with oidc_provider.http() as browser:
        answer = browser.get(plain, allow_redirects=False, timeout=10)
    assert _redirect_query(answer.headers["Location"])["error"] == "invalid_request"


def test_code_flow_refuses_unregistered_redirects(oidc_provider: OIDCProvider) -> None:
    _, challenge = pkce_pair()
    for redirect_uri in (
        "http://127.0.0.1:50004/elsewhere",
        "http://localhost:50004/callback",
        "http://192.0.2.1:50004/callback",
    ):
        url = oidc_provider.authorization_url(
            redirect_uri=redirect_uri, code_challenge=challenge, state="s"
        )
        with oidc_provider.http() as browser:
            answer = browser.get(url, allow_redirects=False, timeout=10)
        # The provider shows an error page; it never redirects to an unregistered URI.
        assert answer.status_code == 400, redirect_uri
        assert "redirect_uri did not match" in answer.text


def test_code_flow_user_denies(oidc_provider: OIDCProvider) -> None:
    redirect_uri = "http://127.0.0.1:50005/callback"
    _, challenge = pkce_pair()
    url = oidc_provider.authorization_url(
        redirect_uri=redirect_uri, code_challenge=challenge, state="s-deny"
    )
    location = oidc_provider.authorize_in_browser(
        url, "alice", redirect_uri=redirect_uri, deny=True
    )
    query = _redirect_query(location)
    assert (query["error"], query["state"]) == ("access_denied", "s-deny")
    assert "code" not in query


def test_code_flow_without_prompt_consent_gets_no_refresh_token(
    oidc_provider: OIDCProvider,
) -> None:
    """oidc-provider drops offline_access from an authorization request without
    prompt=consent (OpenID Connect Core 11): the browser login must send it."""
    redirect_uri = "http://127.0.0.1:50006/callback"
    verifier, challenge = pkce_pair()
    url = oidc_provider.authorization_url(
        redirect_uri=redirect_uri, code_challenge=challenge, state="s", prompt=None
    )
    code = _redirect_query(
        oidc_provider.authorize_in_browser(url, "bob", redirect_uri=redirect_uri)
    )["code"]
    tokens = oidc_provider.exchange_code(code, code_verifier=verifier, redirect_uri=redirect_uri)
    assert tokens.ok
    assert "refresh_token" not in tokens.body
    assert "offline_access" not in tokens.body["scope"].split()


# --------------------------------------------------------------------------- refresh, revoke


def test_refresh_rotates_and_a_reused_refresh_token_kills_the_grant(
    oidc_provider: OIDCProvider,
) -> None:
    first = oidc_provider.code_login("alice", port=50010)
    old_refresh = first.field("refresh_token")
    refreshed = oidc_provider.refresh(old_refresh)
    assert refreshed.ok, refreshed
    new_refresh = refreshed.field("refresh_token")
    assert new_refresh != old_refresh  # rotated (public client)
    claims = oidc_provider.verify_id_token(refreshed.field("id_token"))
    assert (claims["email"], claims["groups"]) == ("alice@acme.test", ["developers", "platform"])
    assert "jti" not in claims  # oidc-provider's ID tokens have none: replay checks hash them
    # Reusing the rotated-out token is refused, and revokes the whole grant.
    reused = oidc_provider.refresh(old_refresh)
    assert (reused.status, reused.error) == (400, "invalid_grant")
    assert oidc_provider.refresh(new_refresh).error == "invalid_grant"


def test_refresh_without_rotation_setting_keeps_the_token(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(rotate_refresh_tokens=False, device_interval=0):
        tokens = oidc_provider.device_login("bob")
        refresh_token = tokens.field("refresh_token")
        for _ in range(2):
            again = oidc_provider.refresh(refresh_token)
            assert again.ok, again
            assert again.field("refresh_token") == refresh_token


def test_revoked_refresh_token_is_refused(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(device_interval=0):
        tokens = oidc_provider.device_login("bob")
    refresh_token = tokens.field("refresh_token")
    revoked = oidc_provider.revoke(refresh_token)
    assert (revoked.status, revoked.body) == (200, {})
    answer = oidc_provider.refresh(refresh_token)
    assert (answer.status, answer.error) == (400, "invalid_grant")
    # Revoking again (or an unknown token) still answers 200 (RFC 7009).
    assert oidc_provider.revoke(refresh_token).status == 200


def test_id_token_lifetime_is_configurable(oidc_provider: OIDCProvider) -> None:
    with oidc_provider.settings(id_token_ttl=2, device_interval=0):
        tokens = oidc_provider.device_login("alice")
    id_token = tokens.field("id_token")
    claims = oidc_provider.verify_id_token(id_token)
    assert claims["exp"] - claims["iat"] == 2
    time.sleep(3)
    with pytest.raises(jwt.ExpiredSignatureError):
        oidc_provider.verify_id_token(id_token)


def test_forged_tokens_signed_by_the_real_key(oidc_provider: OIDCProvider) -> None:
    """The harness can sign any claims with the provider's key (for the verifier's tests)."""
    token = oidc_provider.sign_id_token(oidc_provider.id_token_claims(aud="someone-else"))
    with pytest.raises(jwt.InvalidAudienceError):
        oidc_provider.verify_id_token(token)
    good = oidc_provider.sign_id_token(oidc_provider.id_token_claims(), alg="ES256")
    assert oidc_provider.verify_id_token(good)["email"] == "alice@acme.test"


# --------------------------------------------------------------------------- key rotation


def test_key_rotation_changes_the_kid_and_new_tokens_use_it(
    plain_provider: OIDCProvider,
) -> None:
    before = plain_provider.device_login("alice")
    old_token = before.field("id_token")
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert old_kid == plain_provider.signing_kids()["ES256"]

    new_kids = plain_provider.rotate_keys()
    assert new_kids["ES256"] != old_kid
    published = {k["kid"] for k in plain_provider.jwks()["keys"]}
    assert {old_kid, new_kids["ES256"], new_kids["RS256"]} <= published
    # Grants survive the rotation: the refresh token still works, and signs with the new key.
    refreshed = plain_provider.refresh(before.field("refresh_token"))
    new_token = refreshed.field("id_token")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kids["ES256"]
    assert plain_provider.verify_id_token(new_token)["sub"] == "alice"
    assert plain_provider.verify_id_token(old_token)["sub"] == "alice"  # old key still published
    fresh = plain_provider.device_login("bob").field("id_token")
    assert jwt.get_unverified_header(fresh)["kid"] == new_kids["ES256"]

    # Retiring the previous keys: the old kid is gone from the JWKS.
    newest = plain_provider.rotate_keys(retire_previous=True)
    published = {k["kid"] for k in plain_provider.jwks()["keys"]}
    assert published == set(newest.values())
    with pytest.raises(KeyError):
        plain_provider.verify_id_token(old_token)


def test_stop_by_pid(tmp_path: Path) -> None:
    problems = missing_requirements()
    if problems:
        skip_or_fail("OpenID provider unavailable: " + "; ".join(problems))
    provider = start_oidc_provider(tmp_path, tls=False)
    assert provider.process is not None
    stop_oidc_provider(provider)
    assert provider.process.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(provider.issuer + "/jwks", timeout=5)
