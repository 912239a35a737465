"""Who a user is, as the agent accepts it: the checks an ID token's header and claims must
pass, and the identity bound to an OS user once they do.

Pure: the daemon (``agent.daemon.identities``) fetches the issuer's keys, verifies the
signature with PyJWT and hands the decoded header and claims here, with the clock. Every
refusal is a ``TokenRefusedError`` with a stable ``reason`` code (for the audit log, the control
API and tests) and one sentence a user or an admin can act on. The rules follow OpenID
Connect Core 3.1.3.7 for a relying party, tightened for a local agent that must not be
talked into trusting a token by the user it is about (see docs/sign-in.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from agent.core.decision import Identity
from agent.core.text import printable

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "Binding",
    "Expectations",
    "RefusalReason",
    "TokenRefusedError",
    "VerifiedClaims",
    "check_claims",
    "check_header",
    "token_digest",
]

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""The JWS algorithms the agent verifies with: public-key signatures only. ``none`` and the
HMAC family are never acceptable: an HMAC "signature" keyed with the issuer's public key is
a classic forgery, and the client secret of a public client is no secret."""

MAX_TOKEN_BYTES: Final = 16 * 1024
"""An ID token larger than this is refused unread (real ones are 1-3 KB)."""

MAX_GROUPS: Final = 1000
MAX_TEXT: Final = 512


class RefusalReason(StrEnum):
    """Why an ID token was not accepted: the ``reason`` of the audit record and the API."""

    NOT_CONFIGURED = "not_configured"
    MALFORMED = "malformed"
    BAD_ALGORITHM = "bad_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    KEYS_UNAVAILABLE = "keys_unavailable"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    STALE = "stale"
    REPLAYED = "replayed"
    NO_EMAIL = "no_email"
    EMAIL_NOT_VERIFIED = "email_not_verified"
    DOMAIN_NOT_ALLOWED = "domain_not_allowed"
    BAD_GROUPS = "bad_groups"


class TokenRefusedError(Exception):
    """The token is not accepted; ``reason`` is the code, the message says why in words."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        message = printable(message)  # claims and provider text are the sender's bytes
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Expectations:
    """What the managed config says a token must be."""

    issuer: str
    client_id: str
    allowed_domains: tuple[str, ...] = ()
    groups_claim: str = "groups"
    leeway: timedelta = timedelta(seconds=60)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (a laptop's clock drifts)."""
    max_token_age: timedelta = timedelta(minutes=10)
    """A token issued longer ago than this is stale: the client must hand over a token it
    just obtained (sign-in or refresh), not one picked up from a log or another machine."""


@dataclass(frozen=True)
class VerifiedClaims:
    """The claims of an accepted token, checked and typed."""

    subject: str
    email: str
    name: str | None
    groups: tuple[str, ...]
    issuer: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class Binding:
    """An accepted identity bound to the OS user who presented it: their uid, or on
    Windows their SID."""

    uid: int | str
    claims: VerifiedClaims
    accepted_at: float
    expires_at: float  # ``accepted_at`` + identity_max_age: when the agent forgets it

    @property
    def identity(self) -> Identity:
        """The decision engine's view: the email and the groups."""
        return Identity(self.claims.email, frozenset(self.claims.groups))

    def live(self, now: float) -> bool:
        return now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        c = self.claims
        return {
            "uid": self.uid,
            "email": c.email,
            "subject": c.subject,
            "name": c.name,
            "groups": list(c.groups),
            "issuer": c.issuer,
            "accepted_at": self.accepted_at,
            "expires_at": self.expires_at,
            "token_expires_at": c.expires_at,
        }


def token_digest(token: str) -> str:
    """The key of the replay check: providers need not send ``jti`` (oidc-provider does
    not), and the signed part of the token (header and claims) identifies it. Not the
    signature: one signature has several spellings that verify (PyJWT accepts base64url
    padding) and an ECDSA signature (r, s) has a twin (r, n - s), so a hash over the whole
    token would let a captured token be presented again as a "new" one."""
    signed = token.rsplit(".", 1)[0]
    return hashlib.sha256(signed.encode("ascii", "replace")).hexdigest()


def check_header(header: Mapping[str, Any], advertised: frozenset[str]) -> str:
    """The token's ``alg`` if the agent may verify it: asymmetric, and advertised by the
    provider (``id_token_signing_alg_values_supported``)."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenRefusedError(RefusalReason.MALFORMED, "the token's header names no algorithm")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise TokenRefusedError(
            RefusalReason.BAD_ALGORITHM,
            f"the token is signed with {alg!r}: only public-key signatures are accepted "
            f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})",
        )
    if alg not in advertised:
        raise TokenRefusedError(
            RefusalReason.BAD_ALGORITHM,
            f"the token is signed with {alg!r}, which the identity provider does not "
            "advertise for ID tokens",
        )
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_TEXT):
        raise TokenRefusedError(RefusalReason.MALFORMED, "the token's key id (kid) is not a string")
    return alg


def check_claims(claims: Mapping[str, Any], expect: Expectations, now: float) -> VerifiedClaims:
    """Check the claims of a token whose signature is verified: who issued it, for whom,
    when, and whether its email may sign in. Refuses with the first rule it breaks."""
    issuer = claims.get("iss")
    if issuer != expect.issuer:
        raise TokenRefusedError(
            RefusalReason.WRONG_ISSUER,
            f"the token was issued by {_show(issuer)}, not by the organisation's identity "
            f"provider {expect.issuer!r}",
        )
    _check_audience(claims, expect.client_id)
    leeway = expect.leeway.total_seconds()
    exp = _time(claims, "exp", required=True)
    iat = _time(claims, "iat", required=True)
    nbf = _time(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if now >= exp + leeway:
        raise TokenRefusedError(RefusalReason.EXPIRED, f"the token expired {_ago(now - exp)} ago")
    if nbf is not None and now + leeway < nbf:
        raise TokenRefusedError(
            RefusalReason.NOT_YET_VALID, f"the token is not valid for another {_ago(nbf - now)}"
        )
    if now + leeway < iat:
        raise TokenRefusedError(
            RefusalReason.NOT_YET_VALID,
            f"the token says it was issued {_ago(iat - now)} in the future (is a clock wrong?)",
        )
    if now - iat > expect.max_token_age.total_seconds() + leeway:
        raise TokenRefusedError(
            RefusalReason.STALE,
            f"the token was issued {_ago(now - iat)} ago; the agent takes only tokens issued "
            f"in the last {_ago(expect.max_token_age.total_seconds())} (sign in again)",
        )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_TEXT:
        raise TokenRefusedError(RefusalReason.MALFORMED, "the token has no subject (sub)")
    email = _email(claims, expect.allowed_domains)
    name = claims.get("name")
    return VerifiedClaims(
        subject=subject,
        email=email,
        name=name if isinstance(name, str) and len(name) <= MAX_TEXT else None,
        groups=_groups(claims, expect.groups_claim),
        issuer=expect.issuer,
        issued_at=iat,
        expires_at=exp,
    )


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise TokenRefusedError(
            RefusalReason.WRONG_AUDIENCE,
            f"the token is for {_show(aud)}, not for Pullgate's client {client_id!r}",
        )
    azp = claims.get("azp")
    # OpenID Connect Core 3.1.3.7: with several audiences, azp must name this client; if
    # present at all, it must be this client (a token another app obtained is not ours).
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise TokenRefusedError(
            RefusalReason.WRONG_AUDIENCE,
            f"the token was obtained by {_show(azp)}, not by Pullgate's client {client_id!r}",
        )


def _email(claims: Mapping[str, Any], allowed_domains: tuple[str, ...]) -> str:
    email = claims.get("email")
    if not isinstance(email, str) or email.count("@") != 1 or len(email) > MAX_TEXT:
        raise TokenRefusedError(
            RefusalReason.NO_EMAIL,
            "the token carries no email address (ask for the 'email' scope)",
        )
    if not _email_verified(claims):
        raise TokenRefusedError(
            RefusalReason.EMAIL_NOT_VERIFIED,
            f"the identity provider has not verified the email address {email!r}",
        )
    domain = email.rsplit("@", 1)[1].lower()
    if allowed_domains and domain not in allowed_domains:
        raise TokenRefusedError(
            RefusalReason.DOMAIN_NOT_ALLOWED,
            f"{email!r} is not in a domain allowed to sign in ({', '.join(allowed_domains)})",
        )
    return email


ENTRA_HOSTS: Final = frozenset({"login.microsoftonline.com"})
"""Microsoft Entra ID's issuers: the one provider whose ``xms_edov`` counts (below)."""


def _email_verified(claims: Mapping[str, Any]) -> bool:
    """``email_verified: true``; or, from Entra ID, which sends no ``email_verified`` at
    all, its ``xms_edov: true`` (the tenant verified the email's domain). An explicit
    ``email_verified: false`` is never overruled."""
    verified = claims.get("email_verified")
    if verified is not None:
        return verified is True
    issuer = claims.get("iss")
    host = urlsplit(issuer).hostname if isinstance(issuer, str) else None
    return host in ENTRA_HOSTS and claims.get("xms_edov") is True


def _groups(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    value = claims.get(claim)
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_GROUPS
        or not all(isinstance(g, str) and 0 < len(g) <= MAX_TEXT for g in value)
    ):
        raise TokenRefusedError(
            RefusalReason.BAD_GROUPS,
            f"the token's {claim!r} claim is not a list of group names",
        )
    return tuple(sorted(set(value)))


def _time(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    # bool is an int in Python; a JSON true is no time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRefusedError(
            RefusalReason.MALFORMED, f"the token's {name!r} claim is not a NumericDate"
        )
    return float(value)


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
