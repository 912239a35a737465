"""Token sets from the token endpoint: exchange, refresh, revoke, and the ID token check.

The agent is what really verifies an ID token (``agent.core.identity``); the client checks
it too, because it is cheap and catches a misconfigured issuer or a mixed-up response before
the user is told they are signed in: signature against the provider's JWKS with an
advertised public-key algorithm, ``iss``, ``aud``, ``exp``, and in the code flow the
``nonce`` it sent. A refreshed ID token carries the original nonce again (oidc-provider
does), so the nonce is checked only where the client has one to compare.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from agent.identity.errors import (
    AccessDeniedError,
    ExpiredError,
    IDTokenError,
    InvalidGrantError,
    ProviderError,
    SignInError,
    provider_text,
)
from agent.identity.provider import ProviderClient

__all__ = [
    "PUBLIC_KEY_ALGORITHMS",
    "TokenSet",
    "check_id_token",
    "discard_tokens",
    "exchange_tokens",
    "refresh_tokens",
    "revoke_token",
    "token_error",
    "unverified_claims",
]

PUBLIC_KEY_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Never ``none`` or HMAC: the "secret" of a public client is no secret."""

ID_TOKEN_LEEWAY: Final = 60.0
"""Seconds of clock skew tolerated on ``exp``/``iat`` (the agent applies its own rules)."""


@dataclass(frozen=True)
class TokenSet:
    """A successful token response (RFC 6749 5.1 plus the OpenID ``id_token``)."""

    id_token: str
    refresh_token: str | None = None
    access_token: str | None = None
    expires_in: int | None = None
    scope: tuple[str, ...] = ()
    received_at: float = 0.0

    def claims(self) -> dict[str, Any]:
        """The ID token's claims, for display: already checked by ``check_id_token``."""
        return unverified_claims(self.id_token)

    def __repr__(self) -> str:  # tokens are credentials: never in a log or a traceback
        return (
            f"TokenSet(id_token=<{len(self.id_token)} chars>, "
            f"refresh_token={'<set>' if self.refresh_token else None}, scope={self.scope!r})"
        )


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT without checking it: only for showing who it names."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise IDTokenError(f"the ID token is not a readable JWT: {e}") from e
    if not isinstance(claims, dict):
        raise IDTokenError("the ID token's payload is not a JSON object")
    return claims


def token_error(status: int, body: Mapping[str, Any], what: str) -> ProviderError:
    """The exception for an OAuth error answer of the token (or device) endpoint."""
    error = body.get("error")
    code = error if isinstance(error, str) and error else f"http_{status}"
    raw_description = body.get("error_description")
    description = provider_text(raw_description) if raw_description is not None else None
    detail = f"{provider_text(code)}" + (f": {description}" if description else "")
    if code == "access_denied":
        return AccessDeniedError(
            f"{what}: the sign-in was declined ({detail})", error=code, description=description
        )
    if code == "expired_token":
        return ExpiredError(
            f"{what}: the code expired before it was approved; start again ({detail})",
            error=code,
            description=description,
        )
    if code == "invalid_grant":
        return InvalidGrantError(
            f"{what}: the provider no longer honours this grant ({detail})",
            error=code,
            description=description,
        )
    return ProviderError(
        f"{what}: the identity provider refused (HTTP {status}, {detail})",
        error=code,
        description=description,
    )


def parse_token_response(body: Mapping[str, Any], *, now: float) -> TokenSet:
    """``body`` of a 200 token answer as a ``TokenSet``; it must carry an ``id_token``."""
    id_token = body.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise IDTokenError(
            "the identity provider issued no ID token (is `openid` among the managed config's "
            "oidc_scopes?)"
        )

    def optional_str(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) and value else None

    expires_in = body.get("expires_in")
    scope = body.get("scope")
    return TokenSet(
        id_token=id_token,
        refresh_token=optional_str("refresh_token"),
        access_token=optional_str("access_token"),
        expires_in=expires_in if isinstance(expires_in, int) else None,
        scope=tuple(scope.split()) if isinstance(scope, str) else (),
        received_at=now,
    )


def exchange_tokens(client: ProviderClient, data: Mapping[str, str], *, what: str) -> TokenSet:
    """POST ``data`` to the token endpoint: the token set, or the matching ``ProviderError``."""
    metadata = client.discover()
    status, body = client.post_form(metadata.token_endpoint, data)
    if status != 200 or "error" in body:
        raise token_error(status, body, what)
    return parse_token_response(body, now=time.time())


def refresh_tokens(client: ProviderClient, client_id: str, refresh_token: str) -> TokenSet:
    """A new token set from a refresh token. The old refresh token is spent (rotation):
    the caller must store the new one before anything else, because presenting the old one
    again revokes the whole grant."""
    tokens = exchange_tokens(
        client,
        {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id},
        what="renewing the sign-in",
    )
    check_id_token(client, tokens.id_token, client_id=client_id)
    return tokens


def revoke_token(
    client: ProviderClient, client_id: str, token: str, *, hint: str = "refresh_token"
) -> bool:
    """Revoke ``token`` (RFC 7009). False when the provider advertises no revocation
    endpoint; raises ``ProviderError`` when it refuses."""
    endpoint = client.discover().revocation_endpoint
    if endpoint is None:
        return False
    status, body = client.post_form(
        endpoint, {"token": token, "token_type_hint": hint, "client_id": client_id}
    )
    if status != 200:
        raise token_error(status, body, "revoking the refresh token")
    return True


def discard_tokens(client: ProviderClient, client_id: str, tokens: TokenSet) -> None:
    """Tokens nobody will use (the sign-in was cancelled as they arrived): revoke the grant
    at the provider, best effort, so no live refresh token is left behind."""
    if tokens.refresh_token is not None:
        with contextlib.suppress(SignInError):
            revoke_token(client, client_id, tokens.refresh_token)


def check_id_token(
    client: ProviderClient,
    token: str,
    *,
    client_id: str,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The ID token's claims once its signature, ``iss``, ``aud``, ``exp`` (and ``nonce``
    when given) check out against the provider; ``IDTokenError`` otherwise."""
    metadata = client.discover()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise IDTokenError(f"the ID token is not a readable JWT: {e}") from e
    advertised = metadata.id_token_signing_alg_values_supported or ("RS256",)
    algorithms = [alg for alg in advertised if alg in PUBLIC_KEY_ALGORITHMS]
    alg = header.get("alg")
    if alg not in algorithms:
        raise IDTokenError(
            f"the ID token is signed with {provider_text(alg)!r}, not one of the provider's "
            f"public-key algorithms {algorithms}"
        )
    kid = header.get("kid")
    try:
        keys = jwt.PyJWKSet.from_dict(client.get_json(metadata.jwks_uri))
    except jwt.PyJWTError as e:
        raise IDTokenError(f"the provider's JWKS at {metadata.jwks_uri} is unusable: {e}") from e
    matching = [k for k in keys.keys if kid is None or k.key_id == kid]
    if len(matching) != 1:
        raise IDTokenError(
            f"the provider's JWKS has {len(matching)} keys for the ID token's kid "
            f"{provider_text(kid)!r}"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=matching[0],
            algorithms=algorithms,
            audience=client_id,
            issuer=metadata.issuer,
            leeway=ID_TOKEN_LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as e:
        raise IDTokenError(f"the ID token failed the client's check: {e}") from e
    if nonce is not None and claims.get("nonce") != nonce:
        raise IDTokenError("the ID token's nonce is not the one this sign-in sent (a replay?)")
    return claims
